package pipeline

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zip"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/stagetest"
	"github.com/exportd/exportd/snapshot"
	"github.com/exportd/exportd/storage"
)

// benchRows is the number of rows to generate: $EXPORTD_BENCH_ROWS or 1,000,000.
func benchRows(b *testing.B) int {
	if s := os.Getenv("EXPORTD_BENCH_ROWS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatalf("EXPORTD_BENCH_ROWS: %v", err)
		}
		return n
	}
	return 1_000_000
}

// tuplesRead sums the tuples read from the user tables of production
// (sequential and index fetches), as pg_stat_user_tables counts them.
func tuplesRead(b *testing.B, ctx context.Context, conn *pgx.Conn) int64 {
	b.Helper()
	var n int64
	if _, err := conn.Exec(ctx, "SELECT pg_stat_clear_snapshot()"); err != nil {
		b.Fatal(err)
	}
	err := conn.QueryRow(ctx, "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0)::bigint FROM pg_stat_user_tables").Scan(&n)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkExportLargestTenant: the time to render and publish the data-files
// bundle of the largest generated tenant from staging, beside running the ten
// COPY (SELECT ... WHERE tenant = ...) TO STDOUT WITH (FORMAT csv) queries on
// production and zipping their output the same way, in the same run.
//
//	go test -run '^$' -bench ExportLargestTenant -benchtime 1x ./pipeline/
func BenchmarkExportLargestTenant(b *testing.B) {
	ctx := b.Context()
	env := stagetest.StartPG(b)
	rows := benchRows(b)
	sum, err := gen.Load(ctx, env.Admin, nil, gen.Config{Seed: 7, Tenants: 20, Rows: rows, CreateSchema: true})
	if err != nil {
		b.Fatal(err)
	}
	rep := env.Replicate(b, env.Config())
	v := rep.CatchUp(b, ctx, env)
	plan, err := DefaultSpec().Resolve(v.Tables())
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "exportd-bench-out-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	out, err := storage.NewFS(dir)
	if err != nil {
		b.Fatal(err)
	}
	ex := NewExporter(DefaultSpec(), nil, nil, ExportConfig{}, nil, nil)
	ex.out = benchPublisher{out}
	tenant := "1"
	var tenantRows int64
	for _, n := range sum.Tenants[0].Rows {
		tenantRows += n
	}
	b.Logf("%d rows generated for %d tenants; tenant %s has %d rows", sum.TotalRows, len(sum.Tenants), tenant, tenantRows)

	// The baseline's queries run on their own connection, whose statistics
	// are flushed after each run, so that they are not counted in the next
	// exportd run.
	cfg, err := cdc.ConnConfig(env.URL)
	if err != nil {
		b.Fatal(err)
	}
	prodConn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer prodConn.Close(context.Background())
	settle := func() int64 {
		if _, err := prodConn.Exec(ctx, "SELECT pg_stat_force_next_flush()"); err != nil {
			b.Fatal(err)
		}
		last := tuplesRead(b, ctx, env.Admin)
		for range 50 { // until two reads 100ms apart agree
			time.Sleep(100 * time.Millisecond)
			n := tuplesRead(b, ctx, env.Admin)
			if n == last {
				break
			}
			last = n
		}
		return last
	}
	// A warm-up run of each, so both read from the page cache.
	if _, _, err := ex.dataBundle(ctx, v, plan, tenant, "warm", time.Now()); err != nil {
		b.Fatal(err)
	}
	if _, err := productionZip(ctx, prodConn, v, plan, out, tenant, "warm/prod.zip", ex.cfg.CompressionLevel); err != nil {
		b.Fatal(err)
	}
	settle()

	var exp, prod time.Duration
	var expRead, prodRead, expBytes, prodBytes, exported int64
	for i := 0; b.Loop(); i++ {
		before := settle()
		start := time.Now()
		res, counts, err := ex.dataBundle(ctx, v, plan, tenant, fmt.Sprint("run", i), time.Now())
		if err != nil {
			b.Fatal(err)
		}
		exp += time.Since(start)
		expBytes = res.SizeBytes
		exported = 0
		for _, n := range counts {
			exported += n
		}
		mid := tuplesRead(b, ctx, env.Admin)
		expRead += mid - before

		start = time.Now()
		n, err := productionZip(ctx, prodConn, v, plan, out, tenant, fmt.Sprintf("run%d/prod.zip", i), ex.cfg.CompressionLevel)
		if err != nil {
			b.Fatal(err)
		}
		prod += time.Since(start)
		prodBytes = n
		prodRead += settle() - mid
	}
	n := time.Duration(b.N)
	b.ReportMetric(float64(exported)/(exp/n).Seconds(), "rows/s")
	b.ReportMetric((prod/n).Seconds()/(exp/n).Seconds(), "speedup")
	b.Logf("tenant %s, %d rows: exportd render+publish %s (%.0f rows/s, %.1f MB zip, %d production tuples read); "+
		"production COPY+zip %s (%.1f MB zip, %d production tuples read); speedup %.2fx; load %s",
		tenant, exported, (exp / n).Round(time.Millisecond), float64(exported)/(exp/n).Seconds(), float64(expBytes)/1e6, expRead/int64(b.N),
		(prod / n).Round(time.Millisecond), float64(prodBytes)/1e6, prodRead/int64(b.N), (prod/n).Seconds()/(exp/n).Seconds(), benchutil.LoadAvg())
}

type benchPublisher struct{ *storage.FS }

func (benchPublisher) Link(context.Context, string, storage.LinkOptions) (storage.Link, error) {
	return storage.Link{}, nil
}

// productionZip is the baseline: the ten COPY queries of the plan's files on
// production, each streamed into a zip entry deflated like exportd's, the zip
// streamed into out.
func productionZip(ctx context.Context, conn *pgx.Conn, v *snapshot.Version, plan *Plan, out Putter, tenant, key string, level int) (int64, error) {
	res, err := publishStream(ctx, out, key, func(w io.Writer) error {
		zw := newZip(w, level)
		for _, f := range plan.Files {
			fw, err := zw.CreateHeader(&zip.FileHeader{Name: f.Name, Method: zip.Deflate, Modified: time.Now()})
			if err != nil {
				return err
			}
			ts, _ := v.Table(f.Table)
			cols := make([]string, len(f.Columns))
			for i, c := range f.Columns {
				cols[i] = pgx.Identifier{ts.Columns[c].Name}.Sanitize()
			}
			sql := fmt.Sprintf("COPY (SELECT %s FROM %s WHERE %s = '%s') TO STDOUT WITH (FORMAT csv)",
				strings.Join(cols, ", "), pgx.Identifier(strings.SplitN(f.Table, ".", 2)).Sanitize(),
				pgx.Identifier{ts.Columns[f.TenantColumn].Name}.Sanitize(), tenant)
			if _, err := conn.PgConn().CopyTo(ctx, fw, sql); err != nil {
				return fmt.Errorf("%s: %w", sql, err)
			}
		}
		return zw.Close()
	})
	return res.Size, err
}
