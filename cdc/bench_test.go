// Benchmarks of exportd beside their baselines, each measured in the same run
// on the same generated data (the figures of the staging issue's closing note):
//
//	go test -run '^$' -bench 'InitialSnapshot|Apply' -benchtime 1x -timeout 30m ./cdc/
//	EXPORTD_BENCH_ROWS=3000000 go test -run '^$' -bench 'InitialSnapshot|Apply' -benchtime 1x -timeout 60m ./cdc/
//
// They start PostgreSQL and only run with -bench (never under go test ./...).
// Each invocation starts a fresh cluster with fresh data per benchmark; to
// repeat a measurement run the command again (BenchmarkApply is one-shot:
// -count repeats only its sub-benchmarks, which then find the backlog
// drained and skip). EXPORTD_BENCH_ROWS sets the number of generated rows
// (default 1,000,000; the Apply backlog scales with it).
// EXPORTD_BENCH_PROFILE=<dir> writes a CPU profile of each exportd phase
// alone (snapshot, compact, apply) and a heap profile near apply's peak to
// <dir>, for go tool pprof -top <dir>/apply.pprof; -cpuprofile also works
// but includes the data generator, which runs in this process.
// EXPORTD_BENCH_LOADCODEC=snappy|zstd|none compresses the initial snapshot's
// spilled runs (snapshot.Options.LoadCompression; default none).
//
// BenchmarkInitialSnapshot:
//
//	copy_seq   COPY <table> TO STDOUT of the 12 tables on one connection, output discarded
//	copy_par2  the same on 2 connections, tables handed out largest first
//	exportd    from Replicator.Run until the load is committed (durable, visible) in
//	           staging; compact_s is the extra time until Store.Compact has folded
//	           everything into base files
//
// BenchmarkApply: exportd takes its initial snapshot and catches up, then
// stops; pg_recvlogical creates its own pgoutput slot; a backlog of about
// 1.1 row changes per generated row (a concurrent workload, bulk updates and
// deletes, one big insert transaction; see makeBacklog) is written; then
//
//	pg_recvlogical  drains its slot to the backlog's end (--endpos) into /dev/null
//	exportd         restarts and drains its slot until Store.WaitFor(end)
//
// changes/s divides the row changes pgoutput sends for the backlog (counted
// beforehand by peeking the baseline slot) by each drain's wall time.
//
// Metrics: x_copy_seq, x_copy_par2 and x_recvlogical are exportd's rate over
// the baseline's measured earlier in the same process; cpu_s/op is this
// process's CPU (exportd's, or the COPY client's), walsender_cpu_s/op the
// server's decoding; peak_heap_MB (sampled every 20ms) and peak_rss_MB are
// this process's during the phase (or pg_recvlogical's).
package cdc_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/pgcluster"
	"github.com/exportd/exportd/internal/pgtest"
	"github.com/exportd/exportd/internal/refschema"
	"github.com/exportd/exportd/snapshot"
)

const (
	benchTenants      = 100
	benchBaselineSlot = "bench"
	sampleEvery       = 20 * time.Millisecond
)

// benchRows is the number of rows to generate: $EXPORTD_BENCH_ROWS or 1,000,000.
func benchRows(b *testing.B) int {
	s := os.Getenv("EXPORTD_BENCH_ROWS")
	if s == "" {
		return 1_000_000
	}
	n, err := strconv.Atoi(strings.ReplaceAll(s, "_", ""))
	if err != nil || n <= 0 {
		b.Fatalf("EXPORTD_BENCH_ROWS=%q: want a positive number of rows", s)
	}
	return n
}

// benchTable is one replicated table as COPY prints it.
type benchTable = benchutil.CopyTable

// benchEnv is a private PostgreSQL loaded with generated data.
type benchEnv struct {
	pg     *pgcluster.Cluster
	url    string
	admin  *pgx.Conn
	sum    *gen.Summary
	log    *slog.Logger // exportd's logs, to the benchmark log
	quiet  *slog.Logger // warnings and errors only, for the data generators
	notes  []string     // setup facts, logged by the first sub-benchmark (a parent's log is not shown)
	tables []benchTable // in refschema order
	rows   int64        // of the replicated tables
	bytes  int64
}

func newBenchEnv(b *testing.B, ctx context.Context) *benchEnv {
	b.Helper()
	log := slog.New(slog.NewTextHandler(benchWriter{b}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	quiet := slog.New(slog.NewTextHandler(benchWriter{b}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pg := pgtest.Start(b)
	url := pg.ConnString("postgres")
	cfg, err := cdc.ConnConfig(url)
	benchNoError(b, err)
	admin, err := pgx.ConnectConfig(ctx, cfg)
	benchNoError(b, err)
	b.Cleanup(func() { admin.Close(context.Background()) })
	rows := benchRows(b)
	sum, err := gen.Load(ctx, admin, nil, gen.Config{Seed: 7, Tenants: benchTenants, Rows: rows, CreateSchema: true, Logger: quiet})
	benchNoError(b, err)
	e := &benchEnv{pg: pg, url: url, admin: admin, sum: sum, log: log, quiet: quiet}
	// Set hint bits and the visibility map now, so no measured pass pays for them.
	_, err = admin.Exec(ctx, "VACUUM (FREEZE, ANALYZE)")
	benchNoError(b, err)
	_, err = admin.Exec(ctx, "CHECKPOINT")
	benchNoError(b, err)
	// A warm-up pass: fills the caches and measures what COPY prints.
	for _, t := range refschema.Tables() {
		e.tables = append(e.tables, benchTable{Name: t})
	}
	res, err := copyTables(ctx, url, e.tables, 1)
	benchNoError(b, err)
	for i := range e.tables {
		e.tables[i] = res.Tables[i]
		e.rows += res.Tables[i].Rows
		e.bytes += res.Tables[i].Bytes
	}
	var desc []string
	for _, t := range e.tables {
		desc = append(desc, fmt.Sprintf("%s %d rows %.1f MB", strings.TrimPrefix(t.Name, "public."), t.Rows, float64(t.Bytes)/1e6))
	}
	e.note("exportd sources (cdc, snapshot; other engineers edit them concurrently): sha256 %s; GOMAXPROCS %d", sourceDigest(), benchutil.GOMAXPROCS())
	e.note("generated %d rows for %d tenants in %s; replicated tables: %d rows, %.1f MB of COPY text (%s); warm-up COPY %s; load %s",
		sum.TotalRows, len(sum.Tenants), sum.Duration.Round(time.Millisecond), e.rows, float64(e.bytes)/1e6,
		strings.Join(desc, ", "), res.Wall.Round(time.Millisecond), benchutil.LoadAvg())
	return e
}

func (e *benchEnv) note(format string, args ...any) {
	e.notes = append(e.notes, fmt.Sprintf(format, args...))
}

// logNotes logs the setup notes not logged yet.
func (e *benchEnv) logNotes(b *testing.B) {
	for _, n := range e.notes {
		b.Log(n)
	}
	e.notes = nil
}

func (e *benchEnv) tenantIDs() []int64 {
	ids := make([]int64, len(e.sum.Tenants))
	for i, t := range e.sum.Tenants {
		ids[i] = t.ID
	}
	return ids
}

// config is exportd's configuration as deployed: defaults but for the
// connection and tables.
func (e *benchEnv) config() cdc.Config {
	return cdc.Config{ConnString: e.url, Tables: refschema.Tables()}
}

func (e *benchEnv) insertLSN(b *testing.B, ctx context.Context) pglogrepl.LSN {
	b.Helper()
	var s string
	benchNoError(b, e.admin.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s))
	l, err := pglogrepl.ParseLSN(s)
	benchNoError(b, err)
	return l
}

// flushWAL makes the server flush its WAL up to the insert position: with
// synchronous_commit off (as the test clusters run) the last commits may
// wait for the WAL writer, and neither a stream nor a peek reaches them. A
// transaction that writes WAL and commits synchronously flushes all before
// it (one that only takes an xid would commit asynchronously).
func (e *benchEnv) flushWAL(b *testing.B, ctx context.Context, upto pglogrepl.LSN) {
	b.Helper()
	err := pgx.BeginFunc(ctx, e.admin, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT pg_logical_emit_message(true, 'exportd_bench_flush', '')")
		return err
	})
	benchNoError(b, err)
	var flushed bool
	benchNoError(b, e.admin.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn", upto.String()).Scan(&flushed))
	if !flushed {
		b.Fatalf("WAL is not flushed up to %s after a synchronous commit", upto)
	}
}

// dropSlot drops a replication slot once its last user has let go of it.
func (e *benchEnv) dropSlot(b *testing.B, ctx context.Context, slot string) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := e.admin.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("drop replication slot %s: %v", slot, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exportdRun is one in-process exportd (store and replicator).
type exportdRun struct {
	store  *snapshot.Store
	repl   *cdc.Replicator
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func startExportd(b *testing.B, ctx context.Context, e *benchEnv, dir string) *exportdRun {
	b.Helper()
	reg := prometheus.NewRegistry()
	store, err := snapshot.Open(ctx, dir, snapshot.Options{Logger: e.log, Registerer: reg, LoadCompression: os.Getenv("EXPORTD_BENCH_LOADCODEC")})
	benchNoError(b, err)
	repl, err := cdc.New(e.config(), store, e.log, reg)
	benchNoError(b, err)
	rctx, cancel := context.WithCancel(ctx)
	r := &exportdRun{store: store, repl: repl, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- repl.Run(rctx) }()
	return r
}

// stopRun stops replicating; the store stays open.
func (r *exportdRun) stopRun(b *testing.B) {
	b.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		benchNoError(b, err)
	case <-time.After(time.Minute):
		b.Fatal("replicator did not stop within a minute")
	}
}

func (r *exportdRun) close(b *testing.B) {
	b.Helper()
	r.stopRun(b)
	benchNoError(b, r.store.Close())
}

// waitSnapshot polls until the initial snapshot is committed, failing if the
// replicator stops first.
func (r *exportdRun) waitSnapshot(b *testing.B, ctx context.Context) {
	b.Helper()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for !r.store.State().SnapshotDone {
		select {
		case err := <-r.done:
			b.Fatalf("replicator stopped before the initial snapshot: %v", err)
		case <-ctx.Done():
			b.Fatalf("initial snapshot: %v", ctx.Err())
		case <-t.C:
		}
	}
}

func (r *exportdRun) counter(name string) float64 {
	mfs, err := r.reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
		return sum
	}
	return 0
}

// walSender follows the walsender process that streams slot, once a
// client has started streaming from it, to report the server side's CPU.
type walSender struct {
	stop chan struct{}
	done chan struct{}
	cpu  time.Duration
	pid  int
}

func watchWalSender(ctx context.Context, url, slot string) *walSender {
	w := &walSender{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for w.pid == 0 {
			var pid *int32
			_ = conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid)
			if pid != nil {
				w.pid = int(*pid)
				break
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
		pw := benchutil.WatchProcess(w.pid, 50*time.Millisecond)
		<-w.stop
		w.cpu, _ = pw.Stop()
	}()
	return w
}

// Stop returns the walsender's CPU time (0 if it was never found).
func (w *walSender) Stop() time.Duration {
	close(w.stop)
	<-w.done
	return w.cpu
}

// profile writes a CPU profile of one phase to $EXPORTD_BENCH_PROFILE/<name>.pprof.
func profile(b *testing.B, name string) (stop func()) {
	dir := os.Getenv("EXPORTD_BENCH_PROFILE")
	if dir == "" {
		return func() {}
	}
	benchNoError(b, os.MkdirAll(dir, 0o755))
	path := filepath.Join(dir, name+".pprof")
	for i := 2; ; i++ { // one file per run: -count and b.N repeat phases
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			break
		}
		path = filepath.Join(dir, fmt.Sprintf("%s-%d.pprof", name, i))
	}
	f, err := os.Create(path)
	benchNoError(b, err)
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Logf("no %s profile (is -cpuprofile on?): %v", name, err)
		f.Close()
		os.Remove(path)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		benchNoError(b, f.Close())
		b.Logf("CPU profile of %s: %s", name, path)
	}
}

// heapAtPeak writes a heap profile to $EXPORTD_BENCH_PROFILE/<name>-heap.pprof
// each time the Go heap grows a quarter past the last one written, so the
// file shows what held memory near the phase's peak.
func heapAtPeak(b *testing.B, name string) (stop func()) {
	dir := os.Getenv("EXPORTD_BENCH_PROFILE")
	if dir == "" {
		return func() {}
	}
	path := filepath.Join(dir, name+"-heap.pprof")
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var last uint64 = 32 << 20
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > last+last/4 {
				last = v
				if f, err := os.Create(path); err == nil {
					_ = pprof.Lookup("heap").WriteTo(f, 0)
					f.Close()
				}
			}
		}
	}()
	return func() {
		close(quit)
		<-done
		b.Logf("heap profile near the peak of %s: %s", name, path)
	}
}

// BenchmarkInitialSnapshot: exportd's initial snapshot beside raw COPY of
// the same tables (see the file comment).
func BenchmarkInitialSnapshot(b *testing.B) {
	ctx, cancel := context.WithTimeout(b.Context(), 25*time.Minute)
	defer cancel()
	e := newBenchEnv(b, ctx)
	var copySeq, copyPar2 float64 // rows/s of the baselines, 0 if not run

	baseline := func(workers int, rate *float64) func(*testing.B) {
		return func(b *testing.B) {
			e.logNotes(b)
			var rows, bytes int64
			var wall, cpu time.Duration
			b.ResetTimer()
			for range b.N {
				res, err := copyTables(ctx, e.url, e.tables, workers)
				benchNoError(b, err)
				if res.Rows != e.rows || res.Bytes != e.bytes {
					b.Fatalf("COPY printed %d rows, %d bytes; the warm-up pass %d rows, %d bytes", res.Rows, res.Bytes, e.rows, e.bytes)
				}
				rows, bytes, wall, cpu = rows+res.Rows, bytes+res.Bytes, wall+res.Wall, cpu+res.CPU
			}
			*rate = float64(rows) / wall.Seconds()
			b.ReportMetric(*rate, "rows/s")
			b.ReportMetric(float64(bytes)/1e6/wall.Seconds(), "MB/s")
			b.ReportMetric(cpu.Seconds()/float64(b.N), "client_cpu_s/op")
			b.Logf("COPY on %d connection(s): %d rows, %.1f MB in %s (client CPU %s; load %s)",
				workers, rows/int64(b.N), float64(bytes/int64(b.N))/1e6, (wall / time.Duration(b.N)).Round(time.Millisecond),
				(cpu / time.Duration(b.N)).Round(time.Millisecond), benchutil.LoadAvg())
		}
	}
	b.Run("copy_seq", baseline(1, &copySeq))
	b.Run("copy_par2", baseline(2, &copyPar2))

	b.Run("exportd", func(b *testing.B) {
		e.logNotes(b)
		var snapWall, compactWall, cpu time.Duration
		var peakHeap, peakRSS, compactPeakHeap, compactPeakRSS int64
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			dir, err := os.MkdirTemp("", "exportd-bench-")
			benchNoError(b, err)
			b.StartTimer()

			phase := benchutil.StartPhase(sampleEvery)
			stopProf := profile(b, "snapshot")
			r := startExportd(b, ctx, e, dir)
			r.waitSnapshot(b, ctx)
			stopProf()
			u := phase.Stop()
			b.StopTimer()
			r.stopRun(b)
			snapWall += u.Wall
			cpu += u.CPU
			peakHeap, peakRSS = max(peakHeap, u.PeakHeap), max(peakRSS, u.PeakRSS)
			if got := int64(r.counter("exportd_snapshot_rows_total")); got != e.rows {
				b.Errorf("exportd copied %d rows; COPY prints %d", got, e.rows)
			}
			loaded := r.store.Stats()

			phase = benchutil.StartPhase(sampleEvery)
			stopProf = profile(b, "compact")
			benchNoError(b, r.store.Compact(ctx))
			stopProf()
			cu := phase.Stop()
			compactWall += cu.Wall
			compactPeakHeap, compactPeakRSS = max(compactPeakHeap, cu.PeakHeap), max(compactPeakRSS, cu.PeakRSS)
			st := r.store.Stats()
			b.Logf("exportd snapshot: %s (CPU %s, peak heap %.0f MB, peak RSS %.0f MB), %d load segments %.1f MB; compact: %s (CPU %s, peak heap %.0f MB, peak RSS %.0f MB) to %d base files %.1f MB, %d segments left; load %s",
				u.Wall.Round(time.Millisecond), u.CPU.Round(time.Millisecond), mb(u.PeakHeap), mb(u.PeakRSS),
				loaded.Segments, float64(loaded.SegmentBytes)/1e6,
				cu.Wall.Round(time.Millisecond), cu.CPU.Round(time.Millisecond), mb(cu.PeakHeap), mb(cu.PeakRSS),
				st.BaseFiles, float64(st.BaseBytes)/1e6, st.Segments, benchutil.LoadAvg())
			if st.Segments != 0 {
				b.Errorf("Compact left %d segments", st.Segments)
			}
			r.close(b)
			e.dropSlot(b, ctx, "exportd")
			benchNoError(b, os.RemoveAll(dir))
			b.StartTimer()
		}
		b.StopTimer()
		rate := float64(e.rows) * float64(b.N) / snapWall.Seconds()
		b.ReportMetric(rate, "rows/s")
		b.ReportMetric(float64(e.bytes)*float64(b.N)/1e6/snapWall.Seconds(), "MB/s")
		b.ReportMetric(snapWall.Seconds()/float64(b.N), "snapshot_s/op")
		b.ReportMetric(compactWall.Seconds()/float64(b.N), "compact_s/op")
		b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu_s/op")
		b.ReportMetric(mb(peakHeap), "peak_heap_MB")
		b.ReportMetric(mb(peakRSS), "peak_rss_MB")
		b.ReportMetric(mb(compactPeakHeap), "compact_peak_heap_MB")
		b.ReportMetric(mb(compactPeakRSS), "compact_peak_rss_MB")
		if copySeq > 0 {
			b.ReportMetric(rate/copySeq, "x_copy_seq")
		}
		if copyPar2 > 0 {
			b.ReportMetric(rate/copyPar2, "x_copy_par2")
		}
	})
}

// BenchmarkApply: exportd draining a backlog beside pg_recvlogical draining
// the same backlog from its own pgoutput slot (see the file comment).
func BenchmarkApply(b *testing.B) {
	ctx, cancel := context.WithTimeout(b.Context(), 25*time.Minute)
	defer cancel()
	e := newBenchEnv(b, ctx)
	dir, err := os.MkdirTemp("", "exportd-bench-")
	benchNoError(b, err)
	b.Cleanup(func() { os.RemoveAll(dir) })

	// exportd's slot: its initial snapshot, caught up, then stopped.
	r := startExportd(b, ctx, e, dir)
	r.waitSnapshot(b, ctx)
	benchNoError(b, r.store.Compact(ctx))
	caught := e.insertLSN(b, ctx)
	e.flushWAL(b, ctx, caught)
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	benchNoError(b, r.store.WaitFor(wctx, snapshot.LSN(caught)))
	wcancel()
	r.close(b)

	// The baseline's slot, at the same point.
	rl := benchutil.RecvLogical{
		BinDir: e.pg.BinDir(), ConnURL: e.url, Slot: benchBaselineSlot,
		Options: []string{"proto_version=1", "publication_names=exportd"},
	}
	benchNoError(b, rl.CreateSlot(ctx, "pgoutput"))
	start := e.insertLSN(b, ctx)

	bl := makeBacklog(b, ctx, e)
	target := e.insertLSN(b, ctx)
	e.flushWAL(b, ctx, target)
	changes := countChanges(b, ctx, e, benchBaselineSlot, target)
	e.note("backlog: %s of WAL (%s..%s), %d row changes (%d inserts, %d updates, %d deletes) in %d transactions; written in %s (%s); load %s",
		fmtBytes(int64(target-start)), start, target, changes.total(), changes.inserts, changes.updates, changes.deletes, changes.txns,
		bl.wall.Round(time.Millisecond), bl.desc, benchutil.LoadAvg())
	e.note("backlog changes by table: %s", fmtCounts(changes.byTable))
	if changes.total() == 0 {
		b.Fatal("the backlog holds no change")
	}
	var baselineRate float64
	var drained, baselineDrained bool

	b.Run("pg_recvlogical", func(b *testing.B) {
		e.logNotes(b)
		if b.N != 1 {
			b.Fatalf("one-shot benchmark: run with -benchtime 1x (b.N = %d)", b.N)
		}
		if baselineDrained {
			b.Skip("one-shot: the backlog is drained; run the command again to repeat (not -count)")
		}
		baselineDrained = true
		ws := watchWalSender(ctx, e.url, benchBaselineSlot)
		u, err := rl.Drain(ctx, target.String())
		wsCPU := ws.Stop()
		benchNoError(b, err)
		b.StopTimer()
		baselineRate = float64(changes.total()) / u.Wall.Seconds()
		b.ReportMetric(baselineRate, "changes/s")
		b.ReportMetric(float64(target-start)/1e6/u.Wall.Seconds(), "wal_MB/s")
		b.ReportMetric(u.CPU.Seconds(), "cpu_s/op")
		b.ReportMetric(wsCPU.Seconds(), "walsender_cpu_s/op")
		b.ReportMetric(mb(u.PeakRSS), "peak_rss_MB")
		b.Logf("pg_recvlogical: %s (CPU %s, walsender %d CPU %s, peak RSS %.1f MB); load %s",
			u.Wall.Round(time.Millisecond), u.CPU.Round(time.Millisecond), ws.pid, wsCPU.Round(time.Millisecond), mb(u.PeakRSS), benchutil.LoadAvg())
	})

	b.Run("exportd", func(b *testing.B) {
		e.logNotes(b)
		if b.N != 1 {
			b.Fatalf("one-shot benchmark: run with -benchtime 1x (b.N = %d)", b.N)
		}
		if drained {
			b.Skip("one-shot: the backlog is drained; run the command again to repeat (not -count)")
		}
		drained = true
		phase := benchutil.StartPhase(sampleEvery)
		stopProf := profile(b, "apply")
		stopHeap := heapAtPeak(b, "apply")
		ws := watchWalSender(ctx, e.url, "exportd")
		r := startExportd(b, ctx, e, dir)
		wctx, wcancel := context.WithTimeout(ctx, 15*time.Minute)
		defer wcancel()
		benchNoError(b, r.store.WaitFor(wctx, snapshot.LSN(target)))
		wsCPU := ws.Stop()
		stopProf()
		stopHeap()
		u := phase.Stop()
		b.StopTimer()
		applied := int64(r.counter("exportd_replication_changes_total"))
		st := r.store.Stats()
		byTable := r.changesByTable()
		r.close(b)
		if applied != changes.total() {
			b.Errorf("exportd applied %d changes; pgoutput sent %d: %s", applied, changes.total(), diffCounts(changes.byTable, byTable))
		}
		rate := float64(changes.total()) / u.Wall.Seconds()
		b.ReportMetric(rate, "changes/s")
		b.ReportMetric(float64(target-start)/1e6/u.Wall.Seconds(), "wal_MB/s")
		b.ReportMetric(u.CPU.Seconds(), "cpu_s/op")
		b.ReportMetric(wsCPU.Seconds(), "walsender_cpu_s/op")
		b.ReportMetric(mb(u.PeakHeap), "peak_heap_MB")
		b.ReportMetric(mb(u.PeakRSS), "peak_rss_MB")
		if baselineRate > 0 {
			b.ReportMetric(rate/baselineRate, "x_recvlogical")
		}
		b.Logf("exportd apply: %s (CPU %s, walsender %d CPU %s, peak heap %.0f MB, peak RSS %.0f MB); %d changes applied, %d commits, %.1f MB spilled, %d merges, %d folds, now %d segments %d base files; load %s",
			u.Wall.Round(time.Millisecond), u.CPU.Round(time.Millisecond), ws.pid, wsCPU.Round(time.Millisecond), mb(u.PeakHeap), mb(u.PeakRSS),
			applied, st.Commits, float64(st.SpilledBytes)/1e6, st.Merges, st.Folds, st.Segments, st.BaseFiles, benchutil.LoadAvg())
	})
}

// backlog describes what makeBacklog wrote.
type backlog struct {
	wall time.Duration
	desc string
}

// makeBacklog writes somewhat more row changes than the data set has rows,
// on all tables: a concurrent workload for 20s (small mixed transactions,
// some with unchanged TOAST values, some rolled back), then bulk updates
// (big transactions, and many of 5,000 rows), bulk deletes (of a table whose
// key holds the tenant and of one whose key does not) and one big insert.
func makeBacklog(b *testing.B, ctx context.Context, e *benchEnv) backlog {
	b.Helper()
	start := time.Now()
	var desc []string
	st, err := gen.Workload{
		Seed: 21, Tenants: e.tenantIDs(), Workers: 4, Duration: 20 * time.Second, Logger: e.quiet,
	}.Run(ctx, e.url)
	benchNoError(b, err)
	desc = append(desc, fmt.Sprintf("workload %d commits: %d inserts, %d updates, %d TOAST updates, %d deletes, %d tenant moves",
		st.Commits, st.Inserts, st.Updates, st.ToastUpdates, st.Deletes, st.TenantMoves+st.TenantKeyMoves))

	exec := func(what, sql string, args ...any) int64 {
		tag, err := e.admin.Exec(ctx, sql, args...)
		if err != nil {
			b.Fatalf("%s: %v", what, err)
		}
		return tag.RowsAffected()
	}
	n := exec("update candidates", `UPDATE public.candidates SET rating = coalesce(rating, 0) % 5 + 1, updated_at = updated_at + interval '1 second'`)
	desc = append(desc, fmt.Sprintf("1 update of %d candidates", n))

	var lo, hi int64
	benchNoError(b, e.admin.QueryRow(ctx, "SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM public.tasks").Scan(&lo, &hi))
	var txns int
	n = 0
	for from := lo; from <= hi; from += 5000 {
		n += exec("update tasks", `UPDATE public.tasks SET completed = NOT completed, priority = priority % 4 + 1, updated_at = updated_at + interval '1 second' WHERE id >= $1 AND id < $2`, from, from+5000)
		txns++
	}
	desc = append(desc, fmt.Sprintf("%d updates of %d tasks", txns, n))
	n = exec("update job_pipelines", `UPDATE public.job_pipelines SET position = position + 1, updated_at = updated_at + interval '1 second'`)
	desc = append(desc, fmt.Sprintf("1 update of %d job_pipelines", n))
	n = exec("update contacts", `UPDATE public.contacts SET is_primary = NOT is_primary, updated_at = updated_at + interval '1 second'`)
	desc = append(desc, fmt.Sprintf("1 update of %d contacts", n))
	n = exec("delete audit_logs", `DELETE FROM public.audit_logs WHERE id % 3 = 0`)
	desc = append(desc, fmt.Sprintf("1 delete of %d audit_logs", n))
	n = exec("delete contacts", `DELETE FROM public.contacts WHERE id % 4 = 0`)
	desc = append(desc, fmt.Sprintf("1 delete of %d contacts", n))
	big := max(int(e.rows*35/100), 1)
	benchNoError(b, gen.BigTransaction(ctx, e.admin, 1, big))
	desc = append(desc, fmt.Sprintf("1 insert of %d audit_logs", big))
	return backlog{wall: time.Since(start), desc: strings.Join(desc, "; ")}
}

// changeCount counts the row changes pgoutput sends, by operation and table.
type changeCount struct {
	inserts, updates, deletes, truncates, txns int64
	byTable                                    map[string]int64 // "table op"
}

func (c changeCount) total() int64 { return c.inserts + c.updates + c.deletes + c.truncates }

// countChanges decodes slot up to upto without consuming it and counts the
// row changes pgoutput sends for exportd's publication.
func countChanges(b *testing.B, ctx context.Context, e *benchEnv, slot string, upto pglogrepl.LSN) changeCount {
	b.Helper()
	start := time.Now()
	// Insert, Update and Delete messages carry the relation id in bytes 1..4.
	rows, err := e.admin.Query(ctx, `SELECT k, coalesce(c.relname, ''), n FROM (
			SELECT get_byte(data, 0) AS k,
				CASE WHEN get_byte(data, 0) IN (73, 85, 68) THEN
					((get_byte(data, 1)::bigint << 24) | (get_byte(data, 2) << 16) | (get_byte(data, 3) << 8) | get_byte(data, 4))::oid
				END AS rel,
				count(*) AS n
			FROM pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, NULL, 'proto_version', '1', 'publication_names', 'exportd')
			GROUP BY 1, 2) m
		LEFT JOIN pg_class c ON c.oid = m.rel`, slot, upto.String())
	benchNoError(b, err)
	c := changeCount{byTable: map[string]int64{}}
	for rows.Next() {
		var kind int32
		var table string
		var n int64
		benchNoError(b, rows.Scan(&kind, &table, &n))
		op := ""
		switch kind {
		case 'I':
			c.inserts += n
			op = "insert"
		case 'U':
			c.updates += n
			op = "update"
		case 'D':
			c.deletes += n
			op = "delete"
		case 'T':
			c.truncates += n
		case 'C':
			c.txns += n
		}
		if op != "" {
			c.byTable["public."+table+" "+op] += n
		}
	}
	benchNoError(b, rows.Err())
	e.note("counted the backlog's changes by peeking slot %s in %s", slot, time.Since(start).Round(time.Millisecond))
	return c
}

// changesByTable reads exportd_replication_changes_total by "table op".
func (r *exportdRun) changesByTable() map[string]int64 {
	out := map[string]int64{}
	mfs, err := r.reg.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != "exportd_replication_changes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var table, op string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "table":
					table = l.GetValue()
				case "op":
					op = l.GetValue()
				}
			}
			out[table+" "+op] += int64(m.GetCounter().GetValue())
		}
	}
	return out
}

// diffCounts describes where two counts by "table op" differ.
func diffCounts(want, got map[string]int64) string {
	var out []string
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if want[k] != got[k] {
			out = append(out, fmt.Sprintf("%s: pgoutput %d, exportd %d", k, want[k], got[k]))
		}
	}
	return strings.Join(out, "; ")
}

// sourceDigest identifies the non-test sources of cdc and snapshot measured.
func sourceDigest() string {
	h := sha256.New()
	for _, pattern := range []string{"*.go", "../snapshot/*.go"} {
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				return "unknown"
			}
			fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(data))
			h.Write(data)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

func fmtCounts(m map[string]int64) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, fmt.Sprintf("%s %d", strings.TrimPrefix(k, "public."), m[k]))
	}
	return strings.Join(out, ", ")
}

func mb(n int64) float64 { return float64(n) / (1 << 20) }

func fmtBytes(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

func benchNoError(b testing.TB, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// benchWriter writes each slog record to the benchmark's log.
type benchWriter struct{ b testing.TB }

func (w benchWriter) Write(p []byte) (int, error) {
	w.b.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// copyTables is benchutil.CopyTables on connections with exportd's session
// settings.
func copyTables(ctx context.Context, url string, tables []benchTable, workers int) (benchutil.CopyResult, error) {
	cfg, err := cdc.ConnConfig(url)
	if err != nil {
		return benchutil.CopyResult{}, err
	}
	return benchutil.CopyTables(ctx, cfg, tables, workers)
}
