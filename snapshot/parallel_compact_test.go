package snapshot

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMergeWindows checks the windows merged at the same time: disjoint
// runs of adjacent segments, no more than the workers, and no more than
// needed to bring the segments down to fanIn.
func TestMergeWindows(t *testing.T) {
	for _, tc := range []struct{ n, workers, want int }{
		{20, 3, 3}, // 20 -> 11 after three merges of 4, still > 4
		{9, 3, 2},  // 9 -> 6 -> 3: a third merge is not needed
		{6, 3, 1},  // 6 -> 3
		{20, 1, 1},
		{5, 2, 1},
		{40, 2, 2},
	} {
		t.Run(fmt.Sprintf("n%d_w%d", tc.n, tc.workers), func(t *testing.T) {
			p := policy{fanIn: 4}
			segs := make([]*segMeta, tc.n)
			for i := range segs {
				segs[i] = &segMeta{Num: uint64(i), Size: int64(1 + (i*7)%5)}
			}
			wins := p.concurrentWindows(segs, window(segs, p.fanIn), tc.workers)
			require.Len(t, wins, tc.want)
			seen := map[uint64]bool{}
			for _, w := range wins {
				require.GreaterOrEqual(t, len(w), 2)
				require.LessOrEqual(t, len(w), p.fanIn)
				i := slices.Index(segs, w[0])
				require.Equal(t, segs[i:i+len(w)], w, "a window is not adjacent segments")
				for _, sg := range w {
					require.False(t, seen[sg.Num], "segment %d in two windows", sg.Num)
					seen[sg.Num] = true
				}
			}
		})
	}
}

// TestCompactWorkers: several workers only while staging has no base
// files (after an initial snapshot); beside base files, one.
func TestCompactWorkers(t *testing.T) {
	loaded := &dataVer{}
	folded := &dataVer{bases: map[string]*baseMeta{"x": {Num: 1}}}
	require.Equal(t, defaultCompactWorkers, policy{}.workersFor(loaded))
	require.Equal(t, 3, policy{workers: 3}.workersFor(loaded))
	require.Equal(t, 1, policy{}.workersFor(folded))
	require.Equal(t, 1, policy{workers: 3}.workersFor(folded))
}

// TestParallelCompaction folds the same load with one worker and with
// three (merges of adjacent windows at once, a fold cut into three parts at
// (table, tenant) boundaries): both give every tenant's rows exactly.
func TestParallelCompaction(t *testing.T) {
	ctx := context.Background()
	const tenants, perTenant = 40, 1500
	schemas := []TableSchema{tenantKeySchema, wideSchema}
	expected := map[string][][]string{}
	for _, workers := range []int{1, 3} {
		t.Run(strconv.Itoa(workers), func(t *testing.T) {
			dir := t.TempDir()
			s := openTestStore(t, dir, Options{MemoryLimit: 1 << 20,
				policy: policy{fanIn: 4, maxSegments: 4, manual: true, workers: workers}})
			l, err := s.BeginLoad(ctx, "slot", 1, schemas)
			require.NoError(t, err)
			g := newWideRowGen(11)
			for _, ts := range schemas {
				lw, err := l.Writer(ts.Name)
				require.NoError(t, err)
				for tenant := 1; tenant <= tenants; tenant++ {
					for i := range perTenant {
						r := g.make(int64(tenant*perTenant+i), int64(tenant))
						require.NoError(t, lw.Append(r))
						if workers == 1 {
							k := ts.Name + "/" + strconv.Itoa(tenant)
							expected[k] = append(expected[k], rowStrings(r))
						}
					}
				}
				require.NoError(t, lw.Close())
			}
			require.NoError(t, l.Commit(ctx))
			runs := s.Stats().Segments
			require.Greater(t, runs, 3*4, "the load should leave enough runs for parallel merges")

			dv, err := s.pinCurrent()
			require.NoError(t, err)
			cuts, err := s.foldCuts(dv, dv.segs, workers)
			s.unref(dv)
			require.NoError(t, err)
			require.Len(t, cuts, workers-1)
			for i, c := range cuts {
				tl := tenantLen(kindInt, c[4:])
				require.Equal(t, len(c), 4+tl, "cut %d is not a (table, tenant) prefix", i)
			}

			require.NoError(t, s.Compact(ctx))
			st := s.Stats()
			require.Zero(t, st.Segments)
			require.Equal(t, 2*tenants, st.BaseFiles)
			// No part wrote a group twice: the files are the manifest's.
			files, err := filepath.Glob(filepath.Join(dir, "data", "*.parquet"))
			require.NoError(t, err)
			require.Equal(t, st.BaseFiles, len(files), "data files beside the manifest's base files")
			v, err := s.Pin(ctx)
			require.NoError(t, err)
			defer v.Close()
			for _, ts := range schemas {
				for tenant := 1; tenant <= tenants; tenant++ {
					k := ts.Name + "/" + strconv.Itoa(tenant)
					require.Equal(t, expected[k], scanAll(t, v, ts.Name, strconv.Itoa(tenant)), "%s", k)
				}
			}
			t.Logf("workers %d: %d runs, cuts %q, %d merges", workers, runs, cuts, st.Merges)
		})
	}
}
