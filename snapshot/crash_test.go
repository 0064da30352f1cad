package snapshot

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/require"
)

// checkIndex compares the key-to-tenant index with the model and checks
// that no undo log or stray index entries are left.
func checkIndex(t testing.TB, s *Store, m *model) {
	t.Helper()
	s.mu.Lock()
	dv := s.cur
	s.mu.Unlock()
	want := map[string]string{}
	for _, tm := range dv.tables {
		g := tm.cur()
		if g.tenantInKey {
			continue
		}
		mt := m.tables[tm.Name]
		require.NotNil(t, mt, tm.Name)
		for k, r := range mt.rows {
			tenant, err := appendTenant(nil, g.tenantKind, r[mt.schema.TenantColumn])
			require.NoError(t, err)
			want[string(append(indexPrefix(tm.ID, tm.IdxGen), k...))] = string(tenant)
		}
	}
	got := map[string]string{}
	require.NoError(t, scanPrefix(s.db, []byte(prefixIndex), func(k, v []byte) error {
		got[string(k)] = string(v)
		return nil
	}))
	require.Equal(t, len(want), len(got), "index entries")
	require.Equal(t, want, got)
	n := 0
	require.NoError(t, scanPrefix(s.db, []byte(prefixPending), func(k, v []byte) error { n++; return nil }))
	require.Zero(t, n, "pending index updates left")
	_, _, err := s.db.Get([]byte(keyIndexRedo))
	require.ErrorIs(t, err, pebble.ErrNotFound)
}

// replayModel rebuilds the model of the workload up to the step whose LSN is lsn.
func replayModel(t testing.TB, seed uint64, lsn LSN, maxOps int) (*model, int) {
	m := newModel()
	if lsn == 0 {
		return m, 0
	}
	for i := 0; ; i++ {
		require.LessOrEqual(t, stepLSN(i), lsn, "no step committed at %d", lsn)
		st := makeStep(seed, i, m, maxOps)
		if !st.abort {
			m = st.after
			if stepLSN(i) == lsn {
				return m, i + 1
			}
		}
	}
}

var crashPoints = []string{
	"batch.files", "batch.manifest", "batch.committed", "batch.index",
	"compact.files", "compact.committed",
	"load.files", "load.committed",
	"mid-batch", "mid-load",
}

// TestCrash abandons the store at each crash point (hooks make Commit and
// compaction stop in the middle, as a killed process would) and checks that
// Open recovers exactly the last committed version.
func TestCrash(t *testing.T) {
	rounds := 4
	if testing.Short() {
		rounds = 2
	}
	if n, _ := strconv.Atoi(os.Getenv("EXPORTD_CRASH_ROUNDS")); n > 0 { // soak
		rounds = n
	}
	for pi, point := range crashPoints {
		t.Run(point, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			seed := uint64(100 + pi)
			var armed atomic.Value
			armed.Store("")
			var cur atomic.Pointer[Store]
			opts := Options{
				Logger:      testLogger(),
				MemoryLimit: 16 << 10,
				// The background compactor stays idle; the test calls Compact.
				policy: policy{fanIn: 3, maxSegments: 2, foldMinBytes: 1, foldRatio: 1, foldMaxAge: time.Hour, manual: true},
				hook: func(p string) error {
					if armed.Load() == p && armed.CompareAndSwap(p, "") {
						cur.Load().dead.Store(true)
						return errSimulatedCrash
					}
					return nil
				},
			}
			open := func() *Store {
				s, err := openForTest(ctx, dir, opts)
				require.NoError(t, err)
				cur.Store(s)
				return s
			}
			s := open()
			m := newModel()
			r := rand.New(rand.NewPCG(seed, 7))
			i := 0
			crashes := 0
			for crashes < rounds {
				st := makeStep(seed, i, m, 40)
				crash := r.IntN(3) == 0
				want := m
				switch {
				case crash && (point == "mid-batch" && !st.load || point == "mid-load" && st.load):
					st.abort = true // run the step but leave it open
					if st.load {
						l, err := s.BeginLoad(ctx, "x", stepLSN(i), schemasOf(st.after))
						require.NoError(t, err)
						for table, rows := range st.rows {
							w, err := l.Writer(table)
							require.NoError(t, err)
							for _, row := range rows {
								require.NoError(t, w.Append(row))
							}
							require.NoError(t, w.Close())
						}
					} else {
						b, err := s.Begin()
						require.NoError(t, err)
						for _, o := range st.ops {
							err := applyOp(b, o)
							if o.wantErr == nil {
								require.NoError(t, err)
							}
						}
					}
				case crash && strings.HasPrefix(point, "compact."):
					committed, err := runStep(ctx, t, s, i, st)
					require.NoError(t, err)
					if committed {
						m = st.after
					}
					want = m
					armed.Store(point)
					err = s.Compact(ctx)
					if armed.Load() == point {
						armed.Store("") // nothing to compact: no crash this time
						crash = false
					} else {
						require.ErrorIs(t, err, errSimulatedCrash, "stats %+v", s.Stats())
					}
				case crash && (strings.HasPrefix(point, "batch.") && !st.load && !st.abort ||
					strings.HasPrefix(point, "load.") && st.load && !st.abort):
					armed.Store(point)
					committed, err := runStep(ctx, t, s, i, st)
					if armed.Load() == point {
						// The point was not reached (a batch that did not spill its index).
						armed.Store("")
						crash = false
						require.NoError(t, err)
						if committed {
							m = st.after
						}
						break
					}
					require.ErrorIs(t, err, errSimulatedCrash)
					if strings.HasSuffix(point, ".committed") || point == "batch.index" {
						want = st.after // durable before the crash
					}
				default:
					crash = false
					committed, err := runStep(ctx, t, s, i, st)
					require.NoError(t, err)
					if committed {
						m = st.after
					}
					want = m
				}
				i++
				if !crash {
					continue
				}
				crashes++
				s.crash()
				s = open()
				m = want
				checkStore(t, s, m)
				checkIndex(t, s, m)
				requireNoOrphans(t, s)
			}
			require.NoError(t, s.Close())
		})
	}
}

// TestCrashKill runs the workload in a child process, kills it at random
// moments and checks after each kill that the store holds exactly the last
// committed step.
func TestCrashKill(t *testing.T) {
	if os.Getenv("EXPORTD_CRASH_DIR") != "" {
		t.Skip("child")
	}
	kills := 6
	if testing.Short() {
		kills = 2
	}
	if n, _ := strconv.Atoi(os.Getenv("EXPORTD_CRASH_ROUNDS")); n > 0 { // soak
		kills = n
	}
	dir := t.TempDir()
	const seed = 4242
	r := rand.New(rand.NewPCG(seed, 1))
	ctx := context.Background()
	last := -1
	for k := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKillChild$", "-test.v")
		cmd.Env = append(os.Environ(), "EXPORTD_CRASH_DIR="+dir, "EXPORTD_CRASH_SEED="+strconv.Itoa(seed))
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		cmd.Stderr = os.Stderr
		require.NoError(t, cmd.Start())
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Let the child commit a few steps, then kill it at a random moment.
		deadline := time.After(30 * time.Second)
		printed := 0
	wait:
		for printed < 3 {
			select {
			case l, ok := <-lines:
				if !ok {
					break wait
				}
				if strings.HasPrefix(l, "committed ") {
					printed++
					n, _ := strconv.Atoi(strings.TrimPrefix(l, "committed "))
					last = max(last, n)
				}
			case <-deadline:
				t.Fatal("child made no progress")
			}
		}
		time.Sleep(time.Duration(r.IntN(400)) * time.Millisecond)
		require.NoError(t, cmd.Process.Kill())
		_ = cmd.Wait() // killed: the exit status is an error
		for l := range lines {
			if strings.HasPrefix(l, "committed ") {
				n, _ := strconv.Atoi(strings.TrimPrefix(l, "committed "))
				last = max(last, n)
			}
		}
		s, err := openForTest(ctx, dir, Options{Logger: testLogger()})
		require.NoError(t, err)
		lsn := s.State().LSN
		require.GreaterOrEqual(t, lsn, stepLSN(last), "kill %d: a committed step is lost", k)
		m, next := replayModel(t, seed, lsn, 40)
		t.Logf("kill %d: recovered step %d (last printed %d)", k, next-1, last)
		checkStore(t, s, m)
		checkIndex(t, s, m)
		requireNoOrphans(t, s)
		require.NoError(t, s.Close())
	}
}

// TestCrashKillChild is the child of TestCrashKill: it resumes the workload
// from the store's state and runs until killed.
func TestCrashKillChild(t *testing.T) {
	dir := os.Getenv("EXPORTD_CRASH_DIR")
	if dir == "" {
		t.Skip("only run by TestCrashKill")
	}
	seed, err := strconv.ParseUint(os.Getenv("EXPORTD_CRASH_SEED"), 10, 64)
	require.NoError(t, err)
	ctx := context.Background()
	s, err := openForTest(ctx, dir, Options{
		Logger:          testLogger(),
		MemoryLimit:     24 << 10,
		CompactInterval: time.Millisecond,
		policy:          policy{fanIn: 3, maxSegments: 2, foldMinBytes: 64 << 10, foldRatio: 4, foldMaxAge: time.Hour},
	})
	require.NoError(t, err)
	m, i := replayModel(t, seed, s.State().LSN, 40)
	for ; ; i++ {
		st := makeStep(seed, i, m, 40)
		committed, err := runStep(ctx, t, s, i, st)
		require.NoError(t, err)
		if committed {
			m = st.after
			fmt.Printf("committed %d\n", i)
		}
	}
}

// TestIndexPending checks the pending index directly: a batch that spilled
// index updates and is aborted leaves the index as it was.
func TestIndexPending(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), Options{MemoryLimit: 4 << 10})
	l, err := s.BeginLoad(ctx, "s", 10, []TableSchema{schemaItems})
	require.NoError(t, err)
	w, err := l.Writer(schemaItems.Name)
	require.NoError(t, err)
	for i := range 100 {
		require.NoError(t, w.Append(row(strconv.Itoa(i), "1", "x")))
	}
	require.NoError(t, w.Close())
	require.NoError(t, l.Commit(ctx))
	m := newModel()
	m.setSchema(schemaItems)
	mt := m.tables[schemaItems.Name]
	for i := range 100 {
		r := row(strconv.Itoa(i), "1", "x")
		mt.rows[mt.key(r)] = r
	}
	checkIndex(t, s, m)

	b, err := s.Begin()
	require.NoError(t, err)
	for i := range 300 {
		require.NoError(t, b.Update(schemaItems.Name, nil, row(strconv.Itoa(i%100), "2", "y"), nil))
		require.NoError(t, b.Insert(schemaItems.Name, row(strconv.Itoa(1000+i), "3", "z")))
	}
	require.NoError(t, b.Truncate(schemaItems.Name))
	require.NoError(t, b.Insert(schemaItems.Name, row("5", "4", "w")))
	n := 0
	require.NoError(t, scanPrefix(s.db, []byte(prefixPending), func(k, v []byte) error { n++; return nil }))
	require.Positive(t, n, "the batch should have spilled index updates")
	b.Abort()
	checkIndex(t, s, m)
	checkStore(t, s, m)
}
