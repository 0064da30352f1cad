package snapshot

import (
	"context"
	"os"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// benchRows pre-generates realistic rows; row i gets id i.
type benchRows struct {
	rows  []Row
	bytes []int // text bytes per row (without the id)
}

func newBenchRows(n int, tenants int64) *benchRows {
	g := newWideRowGen(42)
	br := &benchRows{}
	for i := range n {
		r := g.make(int64(i), int64(i)%tenants+1)
		c := make(Row, len(r))
		size := 0
		for j, v := range r {
			c[j] = append([]byte(nil), v...)
			if j != 0 {
				size += len(v)
			}
		}
		br.rows = append(br.rows, c)
		br.bytes = append(br.bytes, size)
	}
	return br
}

// tenantKeySchema is wideSchema with the tenant in the primary key.
var tenantKeySchema = TableSchema{
	Name:         "public.candidates_tk",
	Columns:      wideSchema.Columns,
	KeyColumns:   []int{1, 0},
	TenantColumn: 1,
}

// BenchmarkLoadAppend measures the initial-load path: Append of b.N rows of
// a realistic 10-column table by concurrent writers, then Close and Commit.
func BenchmarkLoadAppend(b *testing.B) {
	br := newBenchRows(1<<14, 1000)
	for _, bc := range []struct {
		name    string
		schema  TableSchema
		writers int
	}{
		{"index/writers=1", wideSchema, 1},
		{"index/writers=2", wideSchema, 2},
		{"tenantkey/writers=1", tenantKeySchema, 1},
		{"tenantkey/writers=2", tenantKeySchema, 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			s := openTestStore(b, b.TempDir(), Options{SegmentCompression: os.Getenv("EXPORTD_BENCH_SEGCODEC"), policy: policy{fanIn: 32, manual: true}})
			b.ReportAllocs()
			b.ResetTimer()
			l, err := s.BeginLoad(ctx, "slot", 1, []TableSchema{bc.schema})
			require.NoError(b, err)
			var wg sync.WaitGroup
			var textBytes int64
			var mu sync.Mutex
			for w := range bc.writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					lw, err := l.Writer(bc.schema.Name)
					if err != nil {
						b.Error(err)
						return
					}
					row := make(Row, 10)
					var id []byte
					var n int64
					for i := w; i < b.N; i += bc.writers {
						tmpl := br.rows[i&(len(br.rows)-1)]
						copy(row, tmpl)
						id = strconv.AppendInt(id[:0], int64(i), 10)
						row[0] = id
						n += int64(br.bytes[i&(len(br.rows)-1)] + len(id))
						if err := lw.Append(row); err != nil {
							b.Error(err)
							return
						}
					}
					if err := lw.Close(); err != nil {
						b.Error(err)
					}
					mu.Lock()
					textBytes += n
					mu.Unlock()
				}()
			}
			wg.Wait()
			require.NoError(b, l.Commit(ctx))
			b.StopTimer()
			secs := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)/secs, "rows/s")
			b.ReportMetric(float64(textBytes)/secs/1e6, "MB/s")
			st := s.Stats()
			b.ReportMetric(float64(st.SegmentBytes)/float64(b.N), "file_bytes/row")
		})
	}
}

// BenchmarkBatchApply measures streaming apply: b.N changes (45% updates of
// which a fifth have unchanged values, 35% inserts, 20% deletes) on a loaded
// table whose key lacks the tenant, committed durably every 10,000 changes,
// with the background compactor running (default policy).
func BenchmarkBatchApply(b *testing.B) {
	ctx := context.Background()
	const preloaded = 200_000
	s := openTestStore(b, b.TempDir(), Options{})
	br := newBenchRows(1<<14, 1000)
	l, err := s.BeginLoad(ctx, "slot", 1, []TableSchema{wideSchema})
	require.NoError(b, err)
	lw, err := l.Writer(wideSchema.Name)
	require.NoError(b, err)
	row := make(Row, 10)
	for i := range preloaded {
		copy(row, br.rows[i&(len(br.rows)-1)])
		row[0] = []byte(strconv.Itoa(i))
		require.NoError(b, lw.Append(row))
	}
	require.NoError(b, lw.Close())
	require.NoError(b, l.Commit(ctx))
	require.NoError(b, s.Compact(ctx))

	unchanged := make([]bool, 10)
	unchanged[9] = true
	old := make(Row, 10)
	next := int64(preloaded)
	live := make([]int64, 0, preloaded)
	for i := range int64(preloaded) {
		live = append(live, i)
	}
	lsn := LSN(2)
	b.ReportAllocs()
	var batch *Batch
	i := -1
	for b.Loop() {
		i++
		if batch == nil {
			batch, err = s.Begin()
			require.NoError(b, err)
		}
		tmpl := br.rows[i&(len(br.rows)-1)]
		copy(row, tmpl)
		switch x := i % 20; {
		case x < 9 && len(live) > 0: // update
			id := live[(i*7919)%len(live)]
			row[0] = strconv.AppendInt(nil, id, 10)
			row[1] = strconv.AppendInt(nil, id%1000+1, 10)
			var u []bool
			if x < 2 {
				u = unchanged
				row[9] = nil
			}
			err = batch.Update(wideSchema.Name, nil, row, u)
		case x < 16: // insert
			row[0] = strconv.AppendInt(nil, next, 10)
			row[1] = strconv.AppendInt(nil, next%1000+1, 10)
			live = append(live, next)
			next++
			err = batch.Insert(wideSchema.Name, row)
		default: // delete
			k := (i * 104729) % len(live)
			old[0] = strconv.AppendInt(nil, live[k], 10)
			live[k] = live[len(live)-1]
			live = live[:len(live)-1]
			err = batch.Delete(wideSchema.Name, old)
		}
		require.NoError(b, err)
		if i%10_000 == 9_999 {
			lsn++
			require.NoError(b, batch.Commit(ctx, lsn))
			batch = nil
		}
	}
	if batch != nil {
		lsn++
		require.NoError(b, batch.Commit(ctx, lsn))
	}
	b.ReportMetric(float64(i+1)/b.Elapsed().Seconds(), "changes/s")
}

// BenchmarkScan measures reading one tenant's rows: a base file plus a few
// delta segments.
func BenchmarkScan(b *testing.B) {
	ctx := context.Background()
	const rows = 200_000
	s := openTestStore(b, b.TempDir(), Options{policy: policy{fanIn: 32, manual: true}})
	br := newBenchRows(1<<14, 1)
	l, err := s.BeginLoad(ctx, "slot", 1, []TableSchema{wideSchema})
	require.NoError(b, err)
	lw, err := l.Writer(wideSchema.Name)
	require.NoError(b, err)
	row := make(Row, 10)
	for i := range rows {
		copy(row, br.rows[i&(len(br.rows)-1)])
		row[0] = []byte(strconv.Itoa(i))
		row[1] = []byte("7")
		require.NoError(b, lw.Append(row))
	}
	require.NoError(b, lw.Close())
	require.NoError(b, l.Commit(ctx))
	require.NoError(b, s.Compact(ctx))
	for c := range 4 { // a few segments on top of the base
		batch, err := s.Begin()
		require.NoError(b, err)
		for i := range 1000 {
			copy(row, br.rows[i])
			row[0] = []byte(strconv.Itoa((i*7919 + c) % rows))
			row[1] = []byte("7")
			require.NoError(b, batch.Update(wideSchema.Name, nil, row, nil))
		}
		require.NoError(b, batch.Commit(ctx, LSN(10+c)))
	}
	v, err := s.Pin(ctx)
	require.NoError(b, err)
	defer v.Close()
	b.ReportAllocs()
	var n, size, loops int64
	for b.Loop() {
		loops++
		r, err := v.Scan(ctx, wideSchema.Name, "7")
		require.NoError(b, err)
		for r.Next() {
			n++
			for _, val := range r.Row() {
				size += int64(len(val))
			}
		}
		require.NoError(b, r.Err())
		require.NoError(b, r.Close())
	}
	require.Equal(b, int64(rows)*loops, n)
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(size)/b.Elapsed().Seconds()/1e6, "MB/s")
}

// BenchmarkCompactAfterLoad measures turning a load's runs into base files
// (merges and the fold): b.N rows over 1,000 tenants, MemoryLimit 16 MiB so
// the load leaves many runs.
func BenchmarkCompactAfterLoad(b *testing.B) {
	ctx := context.Background()
	s := openTestStore(b, b.TempDir(), Options{MemoryLimit: 16 << 20, policy: policy{fanIn: 32, maxSegments: 16, manual: true}})
	br := newBenchRows(1<<14, 1000)
	l, err := s.BeginLoad(ctx, "slot", 1, []TableSchema{tenantKeySchema})
	require.NoError(b, err)
	lw, err := l.Writer(tenantKeySchema.Name)
	require.NoError(b, err)
	row := make(Row, 10)
	for i := range b.N {
		copy(row, br.rows[i&(len(br.rows)-1)])
		row[0] = []byte(strconv.Itoa(i))
		require.NoError(b, lw.Append(row))
	}
	require.NoError(b, lw.Close())
	require.NoError(b, l.Commit(ctx))
	runs := s.Stats().Segments
	b.ResetTimer()
	require.NoError(b, s.Compact(ctx))
	b.StopTimer()
	st := s.Stats()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(runs), "runs")
	b.ReportMetric(float64(st.BaseBytes)/float64(b.N), "base_bytes/row")
}
