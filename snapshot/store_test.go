package snapshot

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestModel applies random batches and loads and compares every tenant of
// every table with an in-memory model after each step, while compaction runs
// concurrently and readers hold old versions.
func TestModel(t *testing.T) {
	steps := 120
	if testing.Short() {
		steps = 40
	} else if raceEnabled {
		steps = 80
	}
	seeds := []uint64{1, 2, 3}
	if n, _ := strconv.Atoi(os.Getenv("EXPORTD_MODEL_SEEDS")); n > 0 { // soak: more seeds
		seeds = seeds[:0]
		for i := range n {
			seeds = append(seeds, uint64(1000+i))
		}
	}
	for _, seed := range seeds {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			// Tiny thresholds: frequent spills, merges with a fan-in of 3, folds.
			s := openTestStore(t, dir, Options{
				MemoryLimit:     32 << 10,
				CompactInterval: 5 * time.Millisecond,
				policy:          policy{fanIn: 3, maxSegments: 2, foldMinBytes: 1 << 30, foldRatio: 1, foldMaxAge: time.Hour},
			})
			stop := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				for {
					select {
					case <-stop:
						done <- nil
						return
					default:
					}
					if rand.IntN(4) == 0 {
						if err := s.Compact(ctx); err != nil {
							done <- err
							return
						}
					}
					time.Sleep(time.Millisecond)
				}
			}()
			r := rand.New(rand.NewPCG(seed, 99))
			m := newModel()
			type pinned struct {
				v *Version
				m *model
			}
			var pins []pinned
			for i := range steps {
				st := makeStep(seed, i, m, 30)
				committed, err := runStep(ctx, t, s, i, st)
				require.NoError(t, err, "step %d", i)
				if committed {
					m = st.after
					require.Equal(t, stepLSN(i), s.State().LSN)
				}
				checkStore(t, s, m)
				if r.IntN(4) == 0 {
					v, err := s.Pin(ctx)
					require.NoError(t, err)
					pins = append(pins, pinned{v, m})
				}
				if len(pins) > 3 || (len(pins) > 0 && r.IntN(4) == 0) {
					p := pins[0]
					pins = pins[1:]
					checkVersion(t, p.v, p.m)
					require.NoError(t, p.v.Close())
				}
			}
			close(stop)
			require.NoError(t, <-done)
			for _, p := range pins {
				checkVersion(t, p.v, p.m)
				require.NoError(t, p.v.Close())
			}
			require.NoError(t, s.Compact(ctx))
			checkStore(t, s, m)
			st := s.Stats()
			t.Logf("stats: %+v", st)
			require.Zero(t, st.Segments)
			require.Zero(t, st.ObsoleteFiles)
			require.NoError(t, s.Close())

			s2 := openTestStore(t, dir, Options{})
			checkStore(t, s2, m)
			requireNoOrphans(t, s2)
		})
	}
}

// requireNoOrphans checks that the data directory holds exactly the files
// the store references: those of the current version, plus those kept for
// older versions still in use (Stats().ObsoleteFiles), which must be none
// once no reader holds an older version. No reader may be closed
// concurrently (the store deletes its files after dropping the reference).
func requireNoOrphans(t testing.TB, s *Store) {
	t.Helper()
	// A background compaction writes its outputs before it installs them,
	// and deletes the replaced files after, holding compactMu throughout:
	// hold it too, so the listing and the manifest are of the same moment.
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	names, err := s.objs.List("")
	require.NoError(t, err)
	want := map[string]bool{}
	s.mu.Lock()
	for _, sg := range s.cur.segs {
		want[sg.name()] = true
	}
	for _, b := range s.cur.bases {
		want[b.name()] = true
	}
	var kept []string
	for _, o := range s.obsolete {
		kept = append(kept, o.names...)
	}
	onlyCur := len(s.live) == 1
	s.mu.Unlock()
	if onlyCur {
		require.Empty(t, kept, "files kept although no older version is in use")
	}
	for _, n := range kept {
		want[n] = true
	}
	got := map[string]bool{}
	for _, n := range names {
		got[n] = true
	}
	require.Equal(t, want, got)
}
