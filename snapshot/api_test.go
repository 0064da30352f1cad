package snapshot

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func loadRows(t testing.TB, s *Store, lsn LSN, tables []TableSchema, rows map[string][]Row) {
	t.Helper()
	ctx := context.Background()
	l, err := s.BeginLoad(ctx, "slot", lsn, tables)
	require.NoError(t, err)
	for name, rs := range rows {
		w, err := l.Writer(name)
		require.NoError(t, err)
		for _, r := range rs {
			require.NoError(t, w.Append(r))
		}
		require.NoError(t, w.Close())
	}
	require.NoError(t, l.Commit(ctx))
}

func TestWaitForAndAdvance(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTestStore(t, dir, Options{})
	loadRows(t, s, 10, []TableSchema{schemaOrders}, nil)

	done := make(chan error, 1)
	go func() { done <- s.WaitFor(ctx, 30) }()
	b, err := s.Begin()
	require.NoError(t, err)
	require.ErrorIs(t, s.Advance(ctx, 25), ErrBusy, "Advance with an open batch")
	require.NoError(t, b.Insert(schemaOrders.Name, row("1", "1", "x")))
	require.NoError(t, b.Commit(ctx, 20))
	select {
	case err := <-done:
		t.Fatalf("WaitFor returned early: %v", err)
	default:
	}
	require.NoError(t, s.Advance(ctx, 30)) // wakes the waiter
	require.NoError(t, <-done)
	require.Equal(t, LSN(30), s.State().LSN)
	require.NoError(t, s.Advance(ctx, 5)) // not greater: no-op
	require.Equal(t, LSN(30), s.State().LSN)
	v, err := s.Pin(ctx)
	require.NoError(t, err)
	require.Equal(t, LSN(30), v.LSN())
	require.NoError(t, v.Close())

	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, s.WaitFor(cctx, 1000), context.DeadlineExceeded)

	// The advanced position is persisted lazily; Close persists it.
	go func() { done <- s.WaitFor(ctx, 1000) }()
	require.NoError(t, s.Close())
	require.ErrorIs(t, <-done, ErrClosed)
	s2 := openTestStore(t, dir, Options{})
	require.Equal(t, LSN(30), s2.State().LSN)

	// Without Close, the background loop persists it within a few seconds.
	require.NoError(t, s2.Advance(ctx, 40))
	deadline := time.Now().Add(10 * time.Second)
	for {
		s2.mu.Lock()
		p := s2.persistedLSN
		s2.mu.Unlock()
		if p == 40 {
			break
		}
		require.True(t, time.Now().Before(deadline), "LSN not persisted")
		s2.kickCompactor()
		time.Sleep(10 * time.Millisecond)
	}
	s2.crash()
	s3 := openTestStore(t, dir, Options{})
	require.Equal(t, LSN(40), s3.State().LSN)
}

func TestBusyAndClosed(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), Options{})
	b, err := s.Begin()
	require.NoError(t, err)
	_, err = s.Begin()
	require.ErrorIs(t, err, ErrBusy)
	_, err = s.BeginLoad(ctx, "x", 1, nil)
	require.ErrorIs(t, err, ErrBusy)
	b.Abort()
	l, err := s.BeginLoad(ctx, "x", 1, []TableSchema{schemaOrders})
	require.NoError(t, err)
	_, err = s.Begin()
	require.ErrorIs(t, err, ErrBusy)
	require.NoError(t, l.Abort())
	v, err := s.Pin(ctx)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	_, err = v.Scan(ctx, schemaOrders.Name, "1")
	require.Error(t, err)
	require.NoError(t, v.Close())
	_, err = s.Pin(ctx)
	require.ErrorIs(t, err, ErrClosed)
	_, err = s.Begin()
	require.ErrorIs(t, err, ErrClosed)
}

func TestLoadReplacesEverything(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), Options{policy: policy{fanIn: 32, manual: true}})
	loadRows(t, s, 10, []TableSchema{schemaOrders, schemaItems}, map[string][]Row{
		schemaOrders.Name: {row("1", "1", "a")},
		schemaItems.Name:  {row("1", "1", "b")},
	})
	require.NoError(t, s.Compact(ctx))
	old, err := s.Pin(ctx)
	require.NoError(t, err)

	// A resnapshot with only one table, at a lower LSN (a new slot).
	loadRows(t, s, 5, []TableSchema{schemaItems}, map[string][]Row{schemaItems.Name: {row("2", "1", "c")}})
	require.Equal(t, State{LSN: 5, SnapshotDone: true, Slot: "slot"}, s.State())
	v, err := s.Pin(ctx)
	require.NoError(t, err)
	require.Len(t, v.Tables(), 1)
	_, ok := v.Table(schemaOrders.Name)
	require.False(t, ok)
	require.Equal(t, [][]string{{"2", "1", "c"}}, scanAll(t, v, schemaItems.Name, "1"))
	require.NoError(t, v.Close())

	// The old version stays readable until closed; then its files go.
	require.Equal(t, [][]string{{"1", "1", "a"}}, scanAll(t, old, schemaOrders.Name, "1"))
	require.Positive(t, s.Stats().ObsoleteFiles)
	require.NoError(t, old.Close())
	require.Zero(t, s.Stats().ObsoleteFiles)
	requireNoOrphans(t, s)

	// Index entries of the old tables are gone.
	m := newModel()
	m.setSchema(schemaItems)
	r := row("2", "1", "c")
	m.tables[schemaItems.Name].rows[m.tables[schemaItems.Name].key(r)] = r
	checkIndex(t, s, m)
}

func TestLoadAbortLeavesNothing(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), Options{MemoryLimit: 64 << 10})
	l, err := s.BeginLoad(ctx, "x", 1, []TableSchema{schemaItems})
	require.NoError(t, err)
	w, err := l.Writer(schemaItems.Name)
	require.NoError(t, err)
	for i := range 5000 {
		require.NoError(t, w.Append(row(strconv.Itoa(i), "1", strings.Repeat("x", 50))))
	}
	require.NoError(t, w.Close())
	require.NoError(t, l.Abort())
	require.Error(t, w.Append(row("1", "1", "x")))
	names, err := s.objs.List("")
	require.NoError(t, err)
	require.Empty(t, names)
	checkIndex(t, s, newModel())
	require.Equal(t, State{}, s.State())
}

func TestSchemaEvolution(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), Options{policy: policy{fanIn: 32, manual: true}})
	ts := TableSchema{
		Name:         "public.t",
		Columns:      []Column{{"a", oidText}, {"id", oidInt8}, {"tenant", oidInt8}, {"b", oidText}},
		KeyColumns:   []int{1},
		TenantColumn: 2,
	}
	loadRows(t, s, 1, []TableSchema{ts}, map[string][]Row{ts.Name: {row("a1", "1", "7", "b1")}})
	check := func(want [][]string, cols ...string) {
		t.Helper()
		for _, compact := range []bool{false, true} {
			if compact {
				require.NoError(t, s.Compact(ctx))
			}
			v, err := s.Pin(ctx)
			require.NoError(t, err)
			sch, ok := v.Table(ts.Name)
			require.True(t, ok)
			var names []string
			for _, c := range sch.Columns {
				names = append(names, c.Name)
			}
			require.Equal(t, cols, names)
			require.Equal(t, want, scanAll(t, v, ts.Name, "7"))
			require.NoError(t, v.Close())
		}
	}
	apply := func(fn func(b *Batch)) {
		b, err := s.Begin()
		require.NoError(t, err)
		fn(b)
		require.NoError(t, b.Commit(ctx, s.State().LSN+1))
	}
	// Drop "a" (before the key: key and tenant indexes shift), add "c".
	ts2 := TableSchema{Name: ts.Name, Columns: []Column{{"id", oidInt8}, {"tenant", oidInt8}, {"b", oidText}, {"c", oidText}}, KeyColumns: []int{0}, TenantColumn: 1}
	apply(func(b *Batch) {
		require.NoError(t, b.SetSchema(ts2))
		require.NoError(t, b.Insert(ts.Name, row("2", "7", "b2", "c2")))
	})
	check([][]string{{"1", "7", "b1", nullText}, {"2", "7", "b2", "c2"}}, "id", "tenant", "b", "c")
	// Re-add "a": old values must not come back.
	ts3 := TableSchema{Name: ts.Name, Columns: append(append([]Column{}, ts2.Columns...), Column{"a", oidText}), KeyColumns: []int{0}, TenantColumn: 1}
	apply(func(b *Batch) {
		require.NoError(t, b.SetSchema(ts3))
		require.NoError(t, b.SetSchema(ts3)) // unchanged: no-op
		require.NoError(t, b.Update(ts.Name, nil, row("2", "7", nil, "c2x", "a2"), []bool{false, false, true, false, false}))
	})
	check([][]string{{"1", "7", "b1", nullText, nullText}, {"2", "7", "b2", "c2x", "a2"}}, "id", "tenant", "b", "c", "a")
	// Changing the key is not supported.
	b, err := s.Begin()
	require.NoError(t, err)
	bad := ts3
	bad.KeyColumns = []int{0, 2}
	require.ErrorIs(t, b.SetSchema(bad), ErrInconsistent)
	reserved := ts3
	reserved.Columns = append(append([]Column{}, ts3.Columns...), Column{baseKeyColumn, oidText})
	require.Error(t, b.SetSchema(reserved))
	b.Abort()
}

func TestUnchangedValuesAndMoves(t *testing.T) {
	ctx := context.Background()
	for _, limit := range []int64{64 << 20, 1 << 10} { // in memory, and spilled runs
		t.Run(strconv.FormatInt(limit, 10), func(t *testing.T) {
			s := openTestStore(t, t.TempDir(), Options{MemoryLimit: limit, policy: policy{fanIn: 32, manual: true}})
			loadRows(t, s, 1, []TableSchema{schemaItems, schemaOrders}, map[string][]Row{
				schemaItems.Name:  {row("1", "1", "big1"), row("2", "1", "big2")},
				schemaOrders.Name: {row("1", "1", "o1")},
			})
			b, err := s.Begin()
			require.NoError(t, err)
			// Committed row moves tenant with its unchanged value.
			require.NoError(t, b.Update(schemaItems.Name, nil, row("1", "2", nil), []bool{false, false, true}))
			// A row inserted in this batch, then moved with an unchanged value, then its key changed.
			require.NoError(t, b.Insert(schemaItems.Name, row("3", "1", "big3")))
			for i := range 50 { // enough changes to spill with the small limit
				require.NoError(t, b.Insert(schemaItems.Name, row(strconv.Itoa(100+i), "9", strings.Repeat("z", 40))))
			}
			require.NoError(t, b.Update(schemaItems.Name, nil, row("3", "3", nil), []bool{false, false, true}))
			require.NoError(t, b.Update(schemaItems.Name, row("3", nil, nil), row("4", "3", nil), []bool{false, false, true}))
			// Tenant in the key: a tenant move is a key change.
			require.NoError(t, b.Update(schemaOrders.Name, row("1", "1", nil), row("5", "1", nil), []bool{false, false, true}))
			// No previous row: ErrInconsistent, and the batch stays usable.
			err = b.Update(schemaItems.Name, nil, row("77", "1", nil), []bool{false, false, true})
			require.ErrorIs(t, err, ErrInconsistent)
			err = b.Update(schemaOrders.Name, nil, row("1", "77", nil), []bool{false, false, true})
			require.ErrorIs(t, err, ErrInconsistent)
			// Deletes: key only (index), full row, and of a row that is not staged.
			require.NoError(t, b.Delete(schemaItems.Name, row("2", nil, nil)))
			require.NoError(t, b.Delete(schemaItems.Name, row("999", nil, nil)))
			require.NoError(t, b.Commit(ctx, 2))
			v, err := s.Pin(ctx)
			require.NoError(t, err)
			defer v.Close()
			require.Empty(t, scanAll(t, v, schemaItems.Name, "1"))
			require.Equal(t, [][]string{{"1", "2", "big1"}}, scanAll(t, v, schemaItems.Name, "2"))
			require.Equal(t, [][]string{{"4", "3", "big3"}}, scanAll(t, v, schemaItems.Name, "3"))
			require.Equal(t, [][]string{{"5", "1", "o1"}}, scanAll(t, v, schemaOrders.Name, "5"))
			require.Empty(t, scanAll(t, v, schemaOrders.Name, "1"))
		})
	}
}

func TestTruncate(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), Options{policy: policy{fanIn: 32, manual: true}})
	loadRows(t, s, 1, []TableSchema{schemaItems}, map[string][]Row{schemaItems.Name: {row("1", "1", "a"), row("2", "2", "b")}})
	require.NoError(t, s.Compact(ctx))
	before, err := s.Pin(ctx)
	require.NoError(t, err)
	b, err := s.Begin()
	require.NoError(t, err)
	require.NoError(t, b.Insert(schemaItems.Name, row("3", "1", "c")))
	require.NoError(t, b.Truncate(schemaItems.Name))
	require.NoError(t, b.Insert(schemaItems.Name, row("1", "2", "d")))
	require.NoError(t, b.Delete(schemaItems.Name, row("2", nil, nil))) // truncated: no-op
	require.NoError(t, b.Commit(ctx, 2))
	for _, compact := range []bool{false, true} {
		if compact {
			require.NoError(t, s.Compact(ctx))
		}
		v, err := s.Pin(ctx)
		require.NoError(t, err)
		require.Empty(t, scanAll(t, v, schemaItems.Name, "1"))
		require.Equal(t, [][]string{{"1", "2", "d"}}, scanAll(t, v, schemaItems.Name, "2"))
		require.NoError(t, v.Close())
	}
	require.Equal(t, [][]string{{"1", "1", "a"}}, scanAll(t, before, schemaItems.Name, "1"))
	require.NoError(t, before.Close())
	require.Equal(t, 1, s.Stats().BaseFiles)
}

func TestMetricsAndStats(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	s := openTestStore(t, t.TempDir(), Options{Registerer: reg, MemoryLimit: 1 << 10, policy: policy{fanIn: 32, manual: true}})
	rows := []Row{}
	for i := range 100 {
		rows = append(rows, row(strconv.Itoa(i), strconv.Itoa(i%3), "x"))
	}
	loadRows(t, s, 1, []TableSchema{schemaItems}, map[string][]Row{schemaItems.Name: rows})
	v, err := s.Pin(ctx)
	require.NoError(t, err)
	require.NoError(t, s.Compact(ctx))
	st := s.Stats()
	require.Equal(t, 1, st.PinnedVersions)
	require.Equal(t, 3, st.BaseFiles)
	require.Equal(t, 0, st.Segments)
	require.Equal(t, int64(1), st.Folds)
	require.Positive(t, st.SpilledBytes)
	require.Positive(t, st.ObsoleteFiles)
	require.NoError(t, v.Close())
	b, err := s.Begin()
	require.NoError(t, err)
	require.NoError(t, b.Insert(schemaItems.Name, row("1000", "1", "y")))
	n, size := b.Pending()
	require.Equal(t, 1, n)
	require.Positive(t, size)
	require.Equal(t, 1, s.Stats().Pending)
	require.NoError(t, b.Commit(ctx, 2))

	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, name := range []string{
		"exportd_staging_files", "exportd_staging_bytes", "exportd_staging_segments", "exportd_staging_base_files",
		"exportd_staging_commits_total", "exportd_staging_commit_seconds", "exportd_staging_compactions_total",
		"exportd_staging_compaction_seconds", "exportd_staging_spilled_bytes_total", "exportd_staging_pinned_versions",
	} {
		require.True(t, got[name], name)
	}
}

// TestBaseFilesReadable checks that base files carry the real column names
// as optional strings, readable by any Parquet reader.
func TestBaseFilesReadable(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), Options{})
	loadRows(t, s, 1, []TableSchema{schemaOrders}, map[string][]Row{schemaOrders.Name: {row("5", "2", nil), row("5", "1", "")}})
	require.NoError(t, s.Compact(ctx))
	s.mu.Lock()
	var name string
	for _, b := range s.cur.bases {
		name = b.name()
	}
	s.mu.Unlock()
	r, err := s.objs.Open(name)
	require.NoError(t, err)
	defer r.Close()
	f, err := parquet.OpenFile(r, r.Size())
	require.NoError(t, err)
	for _, c := range schemaOrders.Columns {
		leaf, ok := f.Schema().Lookup(c.Name)
		require.True(t, ok, c.Name)
		require.True(t, leaf.Node.Optional())
		require.Equal(t, "STRING", leaf.Node.Type().LogicalType().String(), c.Name)
	}
	tenant, _ := f.Lookup(metaTenant)
	require.Equal(t, "5", tenant)
	// Read with a generic reader: rows in key order, NULL distinct from empty.
	rr := parquet.NewReader(r, f.Schema())
	defer rr.Close()
	id, _ := f.Schema().Lookup("id")
	note, _ := f.Schema().Lookup("note")
	buf := make([]parquet.Row, 4)
	n, _ := rr.ReadRows(buf)
	require.Equal(t, 2, n)
	require.Equal(t, "1", buf[0][id.ColumnIndex].String())
	require.False(t, buf[0][note.ColumnIndex].IsNull())
	require.Empty(t, buf[0][note.ColumnIndex].ByteArray())
	require.Equal(t, "2", buf[1][id.ColumnIndex].String())
	require.True(t, buf[1][note.ColumnIndex].IsNull())
}

// TestPinnedFilesKept checks that compaction does not delete files a pinned
// version uses, and that they go when it is closed.
func TestPinnedFilesKept(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), Options{policy: policy{fanIn: 32, manual: true}})
	loadRows(t, s, 1, []TableSchema{schemaOrders}, map[string][]Row{schemaOrders.Name: {row("1", "1", "a")}})
	v, err := s.Pin(ctx)
	require.NoError(t, err)
	rows, err := v.Scan(ctx, schemaOrders.Name, "1")
	require.NoError(t, err)
	require.NoError(t, v.Close()) // the open Rows still holds the version
	require.NoError(t, s.Compact(ctx))
	require.True(t, rows.Next())
	require.Equal(t, []string{"1", "1", "a"}, rowStrings(rows.Row()))
	require.False(t, rows.Next())
	require.NoError(t, rows.Err())
	require.Positive(t, s.Stats().ObsoleteFiles)
	require.NoError(t, rows.Close())
	require.Zero(t, s.Stats().ObsoleteFiles)
	requireNoOrphans(t, s)
}

// TestManyTenants checks that thousands of tenants do not mean thousands of
// open files.
func TestManyTenants(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), Options{MaxOpenFiles: 16, policy: policy{fanIn: 32, manual: true}})
	var rows []Row
	const tenants = 2000
	for i := range tenants * 2 {
		rows = append(rows, row(strconv.Itoa(i), strconv.Itoa(i%tenants), "v"))
	}
	loadRows(t, s, 1, []TableSchema{schemaItems}, map[string][]Row{schemaItems.Name: rows})
	require.NoError(t, s.Compact(ctx))
	require.Equal(t, tenants, s.Stats().BaseFiles)
	v, err := s.Pin(ctx)
	require.NoError(t, err)
	defer v.Close()
	for i := range tenants {
		require.Len(t, scanAll(t, v, schemaItems.Name, strconv.Itoa(i)), 2)
	}
	require.LessOrEqual(t, s.Stats().OpenFiles, 16)
	_ = errors.New
}

// TestCloseDuringCompaction checks that Close stops a running Compact call
// and that reopening finds the data intact.
func TestCloseDuringCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openForTest(ctx, dir, Options{Logger: testLogger(), MemoryLimit: 64 << 10, policy: policy{fanIn: 4, maxSegments: 2, manual: true}})
	require.NoError(t, err)
	var rows []Row
	for i := range 20000 {
		rows = append(rows, row(strconv.Itoa(i), strconv.Itoa(i%50), strings.Repeat("v", 30)))
	}
	loadRows(t, s, 1, []TableSchema{schemaItems}, map[string][]Row{schemaItems.Name: rows})
	done := make(chan error, 1)
	go func() { done <- s.Compact(ctx) }()
	require.NoError(t, s.Close())
	err = <-done
	if err != nil {
		require.True(t, errors.Is(err, context.Canceled) || errors.Is(err, ErrClosed), err)
	}
	// Close waited for the compaction, which either installed its outputs or
	// removed them: nothing is left for the next Open to clean up.
	requireNoOrphans(t, s)
	// The reopened store's background compactor merges while v is pinned
	// (until at most 2 segments are left; no folds): the files it replaces
	// stay on disk until v is closed.
	s2 := openTestStore(t, dir, Options{CompactInterval: 5 * time.Millisecond,
		policy: policy{fanIn: 4, maxSegments: 2, foldMinBytes: 1 << 30, foldRatio: 1, foldMaxAge: time.Hour}})
	v, err := s2.Pin(ctx)
	require.NoError(t, err)
	n := 0
	for tenant := range 50 {
		n += len(scanAll(t, v, schemaItems.Name, strconv.Itoa(tenant)))
	}
	require.Equal(t, 20000, n)
	require.Eventually(t, func() bool { return s2.Stats().Segments <= 2 }, time.Minute, 5*time.Millisecond)
	requireNoOrphans(t, s2)
	require.NoError(t, v.Close())
	require.Zero(t, s2.Stats().ObsoleteFiles)
	requireNoOrphans(t, s2)
}
