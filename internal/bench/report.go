package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/exportd/exportd/pipeline"
)

// Targets of the benchmark issue.
const (
	targetSnapshot = 0.8 // of raw COPY
	targetApply    = 0.9 // of pg_recvlogical
	targetLagRate  = 5000
	targetLagP99   = 1.0 // seconds
	targetSpeedup  = 3.0 // largest-tenant export over the production queries
	targetRSS      = 512 << 20
)

// figures builds the table of BENCHMARKS.md from what was measured. A
// phase that did not run adds no row.
func figures(r *Results) []Figure {
	var fs []Figure
	s := r.Snapshot
	if s.Exportd.Seconds > 0 {
		for _, b := range []struct {
			name string
			rate Rate
		}{{"COPY TO STDOUT, 1 connection", s.CopySeq}, {"COPY TO STDOUT, 2 connections", s.CopyPar2}} {
			f := Figure{Group: "Initial snapshot", Name: "throughput (rows/s; COPY text MB/s)", Value: s.Exportd.RowsPerSec(), Unit: "rows/s",
				Baseline: b.name, BaseVal: b.rate.RowsPerSec(), Target: fmt.Sprintf("≥ %.1f× COPY", targetSnapshot)}
			f.Ratio = ratio(f.Value, f.BaseVal)
			f.Verdict = verdict(f.Ratio >= targetSnapshot)
			f.Note = fmt.Sprintf("%s MB/s vs %s MB/s", fmtNum(s.Exportd.MBPerSec()), fmtNum(b.rate.MBPerSec()))
			fs = append(fs, f)
		}
		fs = append(fs, Figure{Group: "Initial snapshot", Name: "fold into base files after the snapshot (Store.Compact)", Value: s.CompactSeconds, Unit: "s"})
		if pr := s.Prerender; pr.Seconds > 0 {
			fs = append(fs, Figure{Group: "Initial snapshot", Name: "prerender of large tables' CSVs after the fold (pipeline.Prerenderer)", Value: pr.Seconds, Unit: "s",
				Note: fmt.Sprintf("%s entries (tenants' tables of at least %s rows), %s rows, %s MB of deflated CSV",
					fmtInt(int64(pr.Entries)), fmtInt(pipeline.DefaultPrerenderMinRows), fmtInt(pr.Rows), fmtNum(float64(pr.Bytes)/1e6))})
		}
	}
	if a := r.Apply; a.Exportd.Seconds > 0 {
		f := Figure{Group: "Apply", Name: fmt.Sprintf("backlog of %s row changes drained", fmtInt(a.Changes)), Value: a.Exportd.RowsPerSec(), Unit: "changes/s",
			Baseline: "pg_recvlogical (pgoutput) to /dev/null", BaseVal: a.RecvLogical.RowsPerSec(), Target: fmt.Sprintf("≥ %.1f× pg_recvlogical", targetApply)}
		f.Ratio = ratio(f.Value, f.BaseVal)
		f.Verdict = verdict(f.Ratio >= targetApply)
		f.Note = fmt.Sprintf("exportd %.1f s, pg_recvlogical %.1f s", a.Exportd.Seconds, a.RecvLogical.Seconds)
		fs = append(fs, f)
	}
	for _, x := range r.Freshness {
		name := fmt.Sprintf("lag at %s changes/s (achieved %s/s, %d samples)", fmtInt(int64(x.Rate)), fmtInt(int64(x.AchievedRate)), x.Samples)
		ge := ""
		if x.Unapplied > 0 {
			ge = "≥ "
		}
		f := Figure{Group: "Freshness", Name: name, Value: x.P99, Unit: "s p99", LowerBound: x.Unapplied > 0,
			Note: fmt.Sprintf("p50 %s%s s, max %s%s s; %s durable staging commits for %s transactions",
				ge, fmtNum(x.P50), ge, fmtNum(x.Max), fmtInt(x.StagingCommits), fmtInt(x.Changes))}
		f.Note += fmt.Sprintf("; against the slot's confirmed_flush_lsn: p50 %s s, p99 %s s, max %s s",
			fmtNum(x.SlotP50), fmtNum(x.SlotP99), fmtNum(x.SlotMax))
		if x.Unapplied > 0 {
			f.Note += fmt.Sprintf("; %d of %d samples still not applied %.0f s after the load ended, so these are lower bounds",
				x.Unapplied, x.Samples, x.CatchUpSeconds)
		} else {
			f.Note += fmt.Sprintf("; staging caught up %.1f s after the load ended", x.CatchUpSeconds)
		}
		if x.Rate >= targetLagRate {
			f.Target = fmt.Sprintf("p99 < %g s at %s/s", targetLagP99, fmtInt(targetLagRate))
			f.Verdict = verdict(x.P99 < targetLagP99 && x.AchievedRate >= 0.95*float64(x.Rate))
			if x.AchievedRate < 0.95*float64(x.Rate) {
				f.Note += "; MISS: pgbench did not sustain the rate"
			}
		}
		fs = append(fs, f)
	}
	for _, x := range r.Exports {
		f := Figure{Group: "Export", Name: fmt.Sprintf("%s tenant (%d, %s rows)", x.Label, x.Tenant, fmtInt(x.Rows)), Value: x.ExportdSeconds, Unit: "s",
			Baseline: "10 production COPY queries + zip", BaseVal: x.ProdSeconds, Ratio: ratio(x.ProdSeconds, x.ExportdSeconds),
			Note: fmt.Sprintf("rows read from production: exportd %s, queries %s", fmtInt(x.ExportdTuplesRead), fmtInt(x.ProdTuplesRead))}
		if x.Label == "largest" {
			f.Target = fmt.Sprintf("≥ %g× faster, 0 rows read", targetSpeedup)
			f.Verdict = verdict(f.Ratio >= targetSpeedup && x.ExportdTuplesRead == 0)
		}
		fs = append(fs, f)
	}
	for _, x := range r.Exports {
		if x.Label != "largest" {
			continue
		}
		fs = append(fs, Figure{Group: "Export", Name: "rows read from production during the largest-tenant export", Value: float64(x.ExportdTuplesRead), Unit: "rows",
			Baseline: "10 production COPY queries", BaseVal: float64(x.ProdTuplesRead), Target: "0", Verdict: verdict(x.ExportdTuplesRead == 0)})
	}
	if x := r.Render; x.Exportd.Seconds > 0 {
		f := Figure{Group: "CSV render", Name: fmt.Sprintf("tenant %d's ten CSVs from staging (%s rows; MB/s of CSV)", x.Tenant, fmtInt(x.Exportd.Rows)), Value: x.Exportd.RowsPerSec(), Unit: "rows/s",
			Baseline: "DuckDB read_parquet → CSV"}
		if x.DuckDB.Ran {
			f.BaseVal = x.DuckDB.Rate.RowsPerSec()
			f.Ratio = ratio(f.Value, f.BaseVal)
			f.Baseline = "DuckDB " + x.DuckDB.Version + " read_parquet → CSV"
			f.Note = fmt.Sprintf("%s MB/s vs %s MB/s; DuckDB's peak RSS %s MiB", fmtNum(x.Exportd.MBPerSec()), fmtNum(x.DuckDB.Rate.MBPerSec()), fmtNum(mib(x.DuckDB.PeakRSS)))
		} else {
			f.Note = fmt.Sprintf("%s MB/s; DuckDB %s", fmtNum(x.Exportd.MBPerSec()), x.DuckDB.Note)
		}
		fs = append(fs, f)
	}
	fs = append(fs, failoverFigures(r.Failover)...)
	const inBenchProcess = "in the bench process (VmHWM reset before the phase), not a separate exportd process"
	rss := func(name string, v int64, base string, bv int64, note string) {
		if v <= 0 {
			return
		}
		f := Figure{Group: "Peak RSS", Name: name, Value: mib(v), Unit: "MiB", Target: "< 512 MiB", Verdict: verdict(v < targetRSS)}
		if base != "" && bv > 0 {
			f.Baseline, f.BaseVal = base, mib(bv)
		}
		f.Note = note
		fs = append(fs, f)
	}
	rss("initial snapshot (exportd run)", s.PeakRSS, "", 0, "")
	foldNote := inBenchProcess
	if s.CompactPeakHeap > 0 {
		foldNote += fmt.Sprintf("; its Go heap peaked at %s MiB", fmtNum(mib(s.CompactPeakHeap)))
	}
	rss("fold into base files (Store.Compact)", s.CompactPeakRSS, "", 0, foldNote)
	rss("prerender after the fold (pipeline.Prerenderer)", s.Prerender.PeakRSS, "", 0, inBenchProcess)
	rss("apply of the backlog (exportd run)", r.Apply.PeakRSS, "pg_recvlogical", r.Apply.RecvPeakRSS, "")
	for _, x := range r.Freshness {
		rss(fmt.Sprintf("streaming at %s changes/s (exportd run)", fmtInt(int64(x.Rate))), x.PeakRSS, "", 0, "")
	}
	for _, x := range r.Exports {
		rss(fmt.Sprintf("export of the %s tenant (exportd export)", x.Label), x.ExportdPeakRSS, "", 0, "")
	}
	for i, v := range r.Failover.PeakRSS {
		rss(fmt.Sprintf("replica r%d of the failover phase (exportd run, S3 staging)", i), v, "", 0, "")
	}
	if x := r.Failover.ExportCold; x.Seconds > 0 {
		rss("export of the largest tenant from S3 staging, empty cache (exportd export)", x.PeakRSS, "", 0, "")
	}
	if st := r.Staging; st.DataBytes > 0 {
		fs = append(fs, Figure{Group: "Size", Name: fmt.Sprintf("staging data files (%d base files; whole directory %s)", st.BaseFiles, fmtBytes(st.DirBytes)),
			Value: float64(st.DataBytes) / 1e6, Unit: "MB", Baseline: "production tables with indexes and TOAST (pg_total_relation_size)",
			BaseVal: float64(r.Data.ProductionBytes) / 1e6, Ratio: ratio(float64(st.DataBytes), float64(r.Data.ProductionBytes)),
			Note: fmt.Sprintf("production heap and TOAST without indexes: %s", fmtBytes(r.Data.ProductionHeapBytes))})
	}
	return fs
}

// failoverFigures are the rows of the failover phase (none if it did not run).
func failoverFigures(f FailoverResult) []Figure {
	if len(f.Kills) == 0 {
		return nil
	}
	var stream, applied []float64
	for _, k := range f.Kills {
		stream, applied = append(stream, k.ToStream), append(applied, k.ToApplied)
	}
	all := func(v []float64) string {
		s := make([]string, len(v))
		for i, x := range v {
			s[i] = fmtNum(x)
		}
		return strings.Join(s, ", ")
	}
	slices.Sort(stream)
	slices.Sort(applied)
	fs := []Figure{
		{Group: "Failover", Name: fmt.Sprintf("SIGKILL of the writer → the standby streams from the slot (median of %d)", len(f.Kills)),
			Value: stream[len(stream)/2], Unit: "s", Note: fmt.Sprintf("each: %s s; cluster.ttl 5s, heartbeat 1s (defaults)", all(stream))},
		{Group: "Failover", Name: fmt.Sprintf("SIGKILL of the writer → the standby's first applied change (median of %d)", len(f.Kills)),
			Value: applied[len(applied)/2], Unit: "s", Note: fmt.Sprintf("each: %s s, under a 1-worker write load", all(applied))},
	}
	for _, x := range []struct {
		name string
		t    ExportTiming
	}{{"empty cache", f.ExportCold}, {"warm cache", f.ExportWarm}} {
		if x.t.Seconds <= 0 {
			continue
		}
		fs = append(fs, Figure{Group: "Failover", Name: fmt.Sprintf("export of the largest tenant (%d, %s rows) from S3 staging, %s", f.Tenant, fmtInt(x.t.Rows), x.name),
			Value: x.t.Seconds, Unit: "s", Baseline: fmt.Sprintf("the same export from local staging (%s rows)", fmtInt(f.ExportLocal.Rows)),
			BaseVal: f.ExportLocal.Seconds, Ratio: ratio(f.ExportLocal.Seconds, x.t.Seconds),
			Note: "exportd export, prerendered CSVs off on both sides; S3 is versitygw on the same machine and disk"})
	}
	fs = append(fs, Figure{Group: "Failover", Name: "initial snapshot into S3 staging, then its fold into base files",
		Value: f.SnapshotSeconds, Unit: "s", Note: fmt.Sprintf("fold %s s; the bucket then held %s", fmtNum(f.FoldSeconds), fmtBytes(f.BucketBytes))})
	return fs
}

func ratio(a, b float64) float64 {
	if b <= 0 || math.IsInf(a, 0) || math.IsNaN(a) {
		return 0
	}
	return a / b
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// WriteOptions says where Write puts its outputs.
type WriteOptions struct {
	Markdown string // BENCHMARKS.md; "" writes none
	PlotsDir string // PNG plots and results-<scale>.json; "" writes none
}

// Write writes the results: the JSON, the plots and the Markdown report.
func Write(r *Results, o WriteOptions) error {
	var plots []plotFile
	if o.PlotsDir != "" {
		if err := os.MkdirAll(o.PlotsDir, 0o755); err != nil {
			return fmt.Errorf("plots dir: %w", err)
		}
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(o.PlotsDir, "results-"+r.Scale.Name+".json"), append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
		if plots, err = writePlots(r, o.PlotsDir); err != nil {
			return err
		}
	}
	if o.Markdown == "" {
		return nil
	}
	rel := func(p string) string {
		if q, err := filepath.Rel(filepath.Dir(o.Markdown), p); err == nil {
			return filepath.ToSlash(q)
		}
		return p
	}
	var b strings.Builder
	markdown(&b, r, plots, rel)
	if err := os.WriteFile(o.Markdown, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// markdown writes the report.
func markdown(b *strings.Builder, r *Results, plots []plotFile, rel func(string) string) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	m := r.Machine
	p("# Benchmarks\n\n")
	p("exportd beside what an operator would otherwise use, each pair measured in the same run on the same generated data ")
	p("by `cmd/exportd-bench` (package `internal/bench`). Regenerate with:\n\n")
	p("```sh\n%s\n```\n\n", r.Command)
	p("(`-scale S` runs in about a minute and is the CI smoke test; `-scale L` is about 50 million rows. ")
	p("The DuckDB baseline is a module of its own, `internal/bench/duckdbcsv`, built at run time with cgo; `-duckdb=false` skips it.)\n\n")
	p("| | |\n| --- | --- |\n")
	p("| date | %s (run took %s) |\n", r.Started.Format("2006-01-02 15:04 MST"), (time.Duration(r.Duration) * time.Second).String())
	p("| scale | %s: %s rows generated for %d tenants (Zipf skew %g); %s rows and %s of COPY text in the 12 replicated tables |\n",
		r.Scale.Name, fmtInt(r.Data.GeneratedRows), r.Scale.Tenants, r.Scale.Skew, fmtInt(r.Data.Rows), fmtBytes(r.Data.CopyBytes))
	p("| machine | %s, %d cores, %s MiB memory, %s |\n", cmp.Or(m.CPU, "unknown CPU"), m.Cores, fmtInt(m.MemoryMiB), m.OS)
	p("| software | %s, PostgreSQL %s (private cluster: fsync off, shared_buffers 256MB) |\n", m.Go, m.PostgreSQL)
	p("| load average at start | %s (the machine is shared: other work may run during a measurement) |\n", m.LoadAvg)
	var loads []string
	for _, l := range r.PhaseLoad {
		la, _, _ := strings.Cut(l.LoadAvg, " ")
		loads = append(loads, l.Phase+" "+la)
	}
	p("| 1-minute load average as each phase started | %s |\n\n", strings.Join(loads, ", "))

	p("## Results\n\n")
	p("Ratios are exportd over the baseline for rates, the baseline over exportd for times (above 1: exportd is faster), staging over production for sizes.\n\n")
	p("| phase | figure | exportd | baseline | ratio | target | verdict |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	for _, f := range r.Figures {
		val := fmtNum(f.Value) + " " + f.Unit
		if f.LowerBound {
			val = "≥ " + val
		}
		base := "—"
		if f.Baseline != "" {
			base = f.Baseline
			if f.BaseVal != 0 || f.Unit == "rows" {
				base = fmt.Sprintf("%s %s: %s", fmtNum(f.BaseVal), strings.TrimSuffix(f.Unit, " p99"), f.Baseline)
			}
		}
		rt := "—"
		if f.Ratio != 0 {
			rt = fmt.Sprintf("%.2f×", f.Ratio)
		}
		name := f.Name
		if f.Note != "" {
			name += " — " + f.Note
		}
		p("| %s | %s | %s | %s | %s | %s | %s |\n", f.Group, escape(name), val, escape(base), rt, cmp.Or(f.Target, "—"), bold(f.Verdict))
	}
	p("\n")
	for _, pf := range plots {
		p("![%s](%s)\n\n", pf.title, rel(pf.path))
	}

	p("## Data set\n\n")
	p("Generated by `internal/gen` (seed 7) in %.0f s, then `VACUUM (FREEZE, ANALYZE)` and a checkpoint. ", r.Data.GenSeconds)
	p("Production tables: %s with indexes and TOAST (%s without indexes). Staging after the initial snapshot and its fold: %s of data files, %s on disk with the metadata store.\n\n",
		fmtBytes(r.Data.ProductionBytes), fmtBytes(r.Data.ProductionHeapBytes), fmtBytes(r.Staging.DataBytes), fmtBytes(r.Staging.DirBytes))
	p("| table | rows |\n| --- | --- |\n")
	for _, t := range slices.Sorted(maps.Keys(r.Data.TableRows)) {
		p("| %s | %s |\n", t, fmtInt(r.Data.TableRows[t]))
	}
	p("\n")
	if a := r.Apply; a.Changes > 0 {
		p("Apply backlog: %s row changes (%s inserts, %s updates, %s deletes) in %s transactions, %s of WAL: %s.\n\n",
			fmtInt(a.Changes), fmtInt(a.Inserts), fmtInt(a.Updates), fmtInt(a.Deletes), fmtInt(a.Txns), fmtBytes(a.WALBytes), a.Backlog)
	}

	p("## How each figure is measured\n\n")
	p("- **Initial snapshot**: `exportd run` (the binary, production defaults: 2 copy workers) on an empty state directory, from process start until `/api/status` (polled every 20 ms) shows the snapshot committed: durable and visible in staging. ")
	p("The baselines are `COPY <table> TO STDOUT` of the same 12 tables, output discarded, on one connection and on two (tables handed out largest first), after a warm-up pass; rows and MB are COPY's text. ")
	p("Then `Store.Compact` folds the load into base files (timed, in the bench process), as the daemon's compactor does in the background, so the exports read what a running daemon has. Then one pass of the daemon's prerenderer (timed, in the bench process) writes the deflated CSV of every tenant's table of at least %s rows, which the daemon does in the background once a base file has settled; exports copy those where no change is waiting in a segment.\n", fmtInt(pipeline.DefaultPrerenderMinRows))
	p("- **Apply**: with exportd stopped, pg_recvlogical creates its own pgoutput slot and a backlog is written (a random workload, updates in 5,000-row transactions, and large transactions that exportd spills to disk). ")
	p("The changes pgoutput sends for it are counted by peeking the baseline slot. pg_recvlogical drains its slot to the backlog's end into /dev/null; then `exportd run` starts and drains its own slot until staging has applied the end. Both times include process start.\n")
	p("- **Freshness**: `exportd run` streams while pgbench (%d clients, `-R` rate, `synchronous_commit=on` as on a production server) inserts single rows stamped with `clock_timestamp()` into tasks and audit_logs, one row change per transaction. ", pgbenchClients)
	p("Every 100 ms the bench records production's `pg_current_wal_insert_lsn()`; staging's applied LSN is polled from `/api/status` every 20 ms; a sample's lag is the time until staging has applied its LSN (so it includes up to 20 ms of polling). As a cross-check that does not go through exportd's HTTP server, the same lag is computed against the position exportd confirmed to its slot (`pg_replication_slots.confirmed_flush_lsn`, polled in SQL every 20 ms). Lag is measured until staging has caught up or for at most %s after the load; samples still unapplied then count with the time waited, as lower bounds (shown as ≥).\n", fmtDuration(r.Scale.CatchUp))
	p("- **Export**: `exportd export` (its own process) of the ten CSVs of a tenant from the stopped daemon's staging, zipped at deflate level 1 and written to a filesystem publish store, with the built-in spec less its attachments section (no file store is read on either side). ")
	p("The baseline runs `COPY (SELECT <columns> FROM <table> WHERE tenant_id = <t>) TO STDOUT WITH (FORMAT csv, HEADER)` for each of the ten files on production and streams them into a zip with the same compressor at the same level. ")
	p("Rows read from production are the change in `pg_stat_user_tables` `seq_tup_read + idx_tup_fetch` over each (after `pg_stat_force_next_flush()` in the querying session and `pg_stat_clear_snapshot()` in the reading one).\n")
	p("- **CSV render**: `pipeline.RenderCSV` of the largest tenant's ten files from a pinned staging version into files (in the bench process), beside DuckDB (its own process, `internal/bench/duckdbcsv`, through github.com/duckdb/duckdb-go/v2) running `COPY (SELECT <columns> FROM read_parquet(<base file>)) TO <file> (FORMAT csv, HEADER)` on the same Parquet base files. exportd also applies spreadsheet formula protection. Both start alike: pending writes flushed (sync), the tenant's base files read once into the page cache, exportd's output removed before DuckDB runs.\n")
	p("- **Failover**: versitygw (its posix backend, on this machine's disk) serves an S3 bucket; two `exportd run` replicas share staging in it (`staging.backend: s3`, production defaults: `cluster.heartbeat` 1s, `cluster.ttl` 5s). The first takes the initial snapshot into the bucket and folds it; the second follows and keeps its key-to-tenant index current. Under a one-worker random write load the writer is SIGKILLed %d times (once at scale S; the killed replica is started again as the next standby); each kill is timed until the standby's `/api/status` shows it the writer with its stream open, and until its `exportd_replication_changes_total` is above 0 with its applied position past the killed writer's. Then `exportd export` of the largest tenant (prerendered CSVs off) from the bucket with an empty cache directory, again with it warm, and from the local staging of the earlier phases, folded first (Store.Compact, as the bucket's was after its snapshot; the two differ by the changes written since).\n", failoverKills(Scale{Name: "M"}))
	p("- **Peak RSS**: VmHWM of each exportd process, read from /proc (sampled every 20 ms for `exportd export`; read before stopping `exportd run`, with the high-water mark reset between the freshness rates); the fold runs in the bench process, whose high-water mark is reset before it.\n\n")

	p("## Notes\n\n")
	dk := r.Render.DuckDB
	switch {
	case dk.Ran:
		p("- DuckDB baseline: built and ran (DuckDB %s).\n", dk.Version)
	case dk.Built:
		p("- DuckDB baseline: built but did not run: %s\n", dk.Note)
	default:
		p("- DuckDB baseline: %s.\n", dk.Note)
	}
	for _, n := range r.Notes {
		p("- %s\n", n)
	}
}

func fmtDuration(d time.Duration) string {
	if d%time.Minute == 0 {
		return fmt.Sprintf("%d min", d/time.Minute)
	}
	return d.String()
}

func bold(v string) string {
	if v == "" {
		return "—"
	}
	return "**" + v + "**"
}

func escape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// fmtNum prints a figure with 3 significant digits, thousands separated.
func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case v == 0:
		return "0"
	case a >= 1000:
		return fmtInt(int64(math.Round(v)))
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// fmtInt prints n with thousands separators.
func fmtInt(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	default:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
}
