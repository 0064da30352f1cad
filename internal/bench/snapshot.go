package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
)

// pollInterval is how often the bench reads a daemon's status while timing it.
const pollInterval = 20 * time.Millisecond

// snapshot measures the initial snapshot: COPY of every table on one and on
// two connections, then `exportd run` on an empty state directory until the
// snapshot is committed. It then folds staging into base files
// (Store.Compact, in this process) so the later phases read it as a
// long-running daemon would have it.
func (r *runner) snapshot(ctx context.Context) error {
	e := r.e
	for _, p := range []struct {
		workers int
		out     *Rate
	}{{1, &r.res.Snapshot.CopySeq}, {2, &r.res.Snapshot.CopyPar2}} {
		res, err := copyTables(ctx, e.url, e.tables, p.workers)
		if err != nil {
			return err
		}
		if res.Rows != e.data.Rows || res.Bytes != e.data.CopyBytes {
			return fmt.Errorf("COPY on %d connections printed %d rows, %d bytes; the warm-up pass %d rows, %d bytes",
				p.workers, res.Rows, res.Bytes, e.data.Rows, e.data.CopyBytes)
		}
		*p.out = Rate{Seconds: res.Wall.Seconds(), Rows: res.Rows, Bytes: res.Bytes, CPUSeconds: res.CPU.Seconds()}
		r.log.InfoContext(ctx, "COPY baseline", "connections", p.workers, "seconds", res.Wall.Seconds(),
			"rows_per_s", int64(p.out.RowsPerSec()), "MB_per_s", p.out.MBPerSec())
	}

	r.stateDir = filepath.Join(r.dir, "state")
	args, err := r.runProfileArgs("snapshot")
	if err != nil {
		return err
	}
	d, err := startDaemon(ctx, r.bin, r.stateDir, e.url, filepath.Join(r.dir, "exportd-snapshot.log"), args...)
	if err != nil {
		return err
	}
	defer d.kill()
	if _, err := d.waitUntil(ctx, "initial snapshot", pollInterval, 2*time.Hour, func(st daemonStatus) bool {
		return st.Replication.SnapshotDone
	}); err != nil {
		return err
	}
	wall := time.Since(d.start)
	s := &r.res.Snapshot
	s.Exportd = Rate{Seconds: wall.Seconds(), Rows: e.data.Rows, Bytes: e.data.CopyBytes, CPUSeconds: d.cpu().Seconds()}
	s.PeakRSS = d.peakRSS()
	rows, err := d.metric(ctx, "exportd_snapshot_rows_total")
	if err != nil {
		return err
	}
	s.SnapshotRows = int64(rows)
	if s.SnapshotRows != e.data.Rows {
		r.note("exportd_snapshot_rows_total is %d; COPY printed %d rows", s.SnapshotRows, e.data.Rows)
	}
	r.log.InfoContext(ctx, "exportd snapshot", "seconds", wall.Seconds(), "rows_per_s", int64(s.Exportd.RowsPerSec()),
		"peak_rss_MiB", mib(s.PeakRSS))
	if err := d.stop(); err != nil {
		return err
	}

	// Fold the load's segments into base files, timed, in this process.
	heapProfile := ""
	if r.profileDir != "" {
		heapProfile = filepath.Join(r.profileDir, "fold-heap.pprof")
		stop, err := startCPUProfile(filepath.Join(r.profileDir, "fold-cpu.pprof"))
		if err != nil {
			return err
		}
		defer stop()
	}
	phase := benchutil.StartPhaseProfiled(pollInterval, heapProfile)
	store, err := snapshot.Open(ctx, filepath.Join(r.stateDir, daemon.StagingDir), snapshot.Options{Logger: quiet(r.log)})
	if err != nil {
		return fmt.Errorf("open staging: %w", err)
	}
	if err := store.Compact(ctx); err != nil {
		store.Close()
		return err
	}
	u := phase.Stop()
	if u.ProfileErr != nil {
		r.log.WarnContext(ctx, "fold heap profile", "err", u.ProfileErr)
	}
	s.CompactSeconds, s.CompactPeakRSS, s.CompactPeakHeap = u.Wall.Seconds(), u.PeakRSS, u.PeakHeap
	st := store.Stats()
	r.log.InfoContext(ctx, "staging compacted", "seconds", s.CompactSeconds, "base_files", st.BaseFiles,
		"staging_MB", float64(st.Bytes)/1e6, "production_MB", float64(e.data.ProductionBytes)/1e6,
		"peak_rss_MiB", mib(s.CompactPeakRSS), "peak_heap_MiB", mib(s.CompactPeakHeap))

	// The daemon's prerenderer, which would run once the fold is done.
	if err := r.prerender(ctx, store); err != nil {
		store.Close()
		return err
	}
	v, err := store.Pin(ctx)
	if err != nil {
		store.Close()
		return err
	}
	r.tables = v.Tables()
	v.Close()
	if err := store.Close(); err != nil {
		return fmt.Errorf("close staging: %w", err)
	}
	r.res.Staging = StagingResult{DataBytes: st.Bytes, DirBytes: dirBytes(filepath.Join(r.stateDir, daemon.StagingDir)),
		BaseFiles: st.BaseFiles, Segments: st.Segments}
	return nil
}

// prerender runs one pass of the daemon's prerenderer (its defaults, at
// once instead of after the settle time) over the folded staging, timed.
func (r *runner) prerender(ctx context.Context, store *snapshot.Store) error {
	s := &r.res.Snapshot
	phase := benchutil.StartPhase(pollInterval)
	pre, err := pipeline.NewPrerenderer(pipeline.DefaultSpec(), pipeline.PrerenderConfig{
		Dir: filepath.Join(r.stateDir, pipeline.PrerenderDir), Settle: -1, CompressionLevel: compressionLevel,
	}, quiet(r.log), nil)
	if err != nil {
		return err
	}
	st, err := pre.Once(ctx, store)
	if err != nil {
		return err
	}
	u := phase.Stop()
	s.Prerender = PrerenderResult{Seconds: u.Wall.Seconds(), PeakRSS: u.PeakRSS, Entries: st.Entries, Rows: st.Rows, Bytes: st.Bytes}
	r.log.InfoContext(ctx, "prerendered", "seconds", s.Prerender.Seconds, "entries", st.Entries, "rows", st.Rows,
		"MB", float64(st.Bytes)/1e6, "peak_rss_MiB", mib(u.PeakRSS))
	return nil
}

// runProfileArgs are the flags of exportd run that profile its CPU into
// <profile dir>/<phase>-cpu.pprof (none without -profile).
func (r *runner) runProfileArgs(phase string) ([]string, error) {
	if r.profileDir == "" {
		return nil, nil
	}
	if err := os.MkdirAll(r.profileDir, 0o755); err != nil {
		return nil, fmt.Errorf("profile dir: %w", err)
	}
	return []string{"-cpuprofile", filepath.Join(r.profileDir, phase+"-cpu.pprof")}, nil
}

// startCPUProfile profiles this process's CPU into path until stop.
func startCPUProfile(path string) (stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close() // a truncated profile says so when read
	}, nil
}

func (r *runner) note(format string, args ...any) {
	n := fmt.Sprintf(format, args...)
	r.res.Notes = append(r.res.Notes, n)
	r.log.Warn(n)
}

// quiet is log at warnings and above.
func quiet(log *slog.Logger) *slog.Logger {
	return slog.New(discardBelow{log.Handler(), slog.LevelWarn})
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// removeAll removes dir, logging a failure.
func (r *runner) removeAll(dir string) {
	if err := os.RemoveAll(dir); err != nil {
		r.log.Warn("remove", "dir", dir, "err", err)
	}
}
