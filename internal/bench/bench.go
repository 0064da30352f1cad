// Package bench measures exportd beside what an operator would otherwise
// use, in the same run on the same generated data, and writes the figures as
// a Markdown table (BENCHMARKS.md), PNG plots and a JSON file of the raw
// results. cmd/exportd-bench is its command:
//
//	go run ./cmd/exportd-bench -scale M -out M.md -plots bench/
//
// A run starts a private PostgreSQL (internal/pgcluster), generates the
// reference schema at the chosen scale (internal/gen), builds the exportd
// binary and measures, each figure beside its baseline:
//
//   - initial snapshot: `exportd run` on an empty state directory until the
//     snapshot is committed, beside COPY <table> TO STDOUT of the same
//     tables on one and on two connections;
//   - apply: `exportd run` draining a backlog written while it was stopped,
//     beside pg_recvlogical draining the same backlog from its own pgoutput
//     slot;
//   - freshness: pgbench inserting at fixed rates while `exportd run`
//     streams; the lag of each 100 ms sample of production's WAL insert
//     position is the time until staging has applied it;
//   - export: `exportd export` of a small, a medium and the largest tenant,
//     beside the ten COPY (SELECT ... WHERE tenant_id = ...) queries on
//     production zipped with the same compressor, with the rows each read
//     from production (pg_stat_user_tables);
//   - CSV render throughput from staging beside DuckDB reading the same
//     Parquet base files and writing CSV (the program in ./duckdbcsv, a
//     module of its own built with cgo at run time, so that exportd's
//     module does not depend on DuckDB);
//   - failover: two `exportd run` replicas sharing staging in an S3 bucket
//     (versitygw); the time from SIGKILL of the writer until the standby
//     streams and until it has applied its first change, under a write
//     load; and `exportd export` of the largest tenant from the bucket
//     beside the same export from local staging;
//   - the peak RSS of each exportd process (one per phase) and the staging
//     size beside the production tables' size.
//
// Each phase of exportd runs as its own process of the exportd binary, so
// its peak RSS (VmHWM, sampled from /proc) is the phase's alone.
package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/snapshot"
)

// Scale is the size of a run.
type Scale struct {
	Name    string  `json:"name"`
	Rows    int     `json:"rows"`    // generated rows, all tables
	Tenants int     `json:"tenants"` // tenant ids 1..Tenants; tenant 1 is the largest
	Skew    float64 `json:"skew"`    // Zipf exponent of tenant sizes (gen.Config.Skew)
	// BacklogWorkload is how long the random workload of the apply backlog
	// runs; BacklogFraction sizes its bulk part as a fraction of Rows.
	BacklogWorkload time.Duration `json:"backlog_workload"`
	BacklogFraction float64       `json:"backlog_fraction"`
	// Freshness is how long each fixed-rate load runs; CatchUp bounds the
	// wait for staging to apply the load after it ends (samples still
	// unapplied then are reported as lower bounds).
	Freshness time.Duration `json:"freshness"`
	CatchUp   time.Duration `json:"catch_up"`
}

// Scales are the predefined scales: S is the CI smoke test (seconds), M
// about 10 million rows and L about 50 million with one tenant of about 20
// million, each meant to finish within 30 minutes on a 2-core machine.
var Scales = []Scale{
	{Name: "S", Rows: 200_000, Tenants: 20, Skew: 1, BacklogWorkload: 3 * time.Second, BacklogFraction: 0.3,
		Freshness: 5 * time.Second, CatchUp: time.Minute},
	{Name: "M", Rows: 10_000_000, Tenants: 100, Skew: 1.1, BacklogWorkload: 10 * time.Second, BacklogFraction: 0.3,
		Freshness: 30 * time.Second, CatchUp: 3 * time.Minute},
	{Name: "L", Rows: 50_000_000, Tenants: 100, Skew: 1.45, BacklogWorkload: 10 * time.Second, BacklogFraction: 0.1,
		Freshness: 60 * time.Second, CatchUp: 5 * time.Minute},
}

// ScaleByName returns the predefined scale called name (case-insensitive).
func ScaleByName(name string) (Scale, error) {
	for _, s := range Scales {
		if strings.EqualFold(s.Name, name) {
			return s, nil
		}
	}
	return Scale{}, fmt.Errorf("unknown scale %q (want S, M or L)", name)
}

// Rates are the sustained write rates of the freshness phase, in row
// changes per second.
var Rates = []int{1000, 5000}

// Config configures a Run.
type Config struct {
	Scale Scale
	// WorkDir holds the cluster, staging and outputs of the run (a new
	// directory inside it, removed at the end); default os.TempDir().
	WorkDir string
	// Exportd is the exportd binary to run; "" builds ./cmd/exportd of this
	// module with the go command.
	Exportd string
	// DuckDB runs the DuckDB baseline of the render phase (built from
	// internal/bench/duckdbcsv with cgo; it needs the module's source tree).
	DuckDB bool
	// Rates overrides Rates.
	Rates []int
	// Phases, if set, runs only these phases (of snapshot, export, render,
	// apply, freshness, failover; snapshot always runs: the others need its
	// staging).
	Phases []string
	// ProfileDir, if set, receives pprof profiles of the fold into base
	// files, which runs in this process: fold-cpu.pprof, and
	// fold-heap.pprof written near the heap's peak.
	ProfileDir string
	// Logger receives progress (default slog.Default()).
	Logger *slog.Logger
}

// Run generates the data set of cfg.Scale and measures every phase. The
// results hold what was measured even when err is not nil (then partial).
func Run(ctx context.Context, cfg Config) (*Results, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Scale.Rows <= 0 || cfg.Scale.Tenants <= 0 {
		return nil, errors.New("bench: the scale needs rows and tenants")
	}
	rates := cfg.Rates
	if len(rates) == 0 {
		rates = Rates
	}
	base := cfg.WorkDir
	if base == "" {
		base = os.TempDir()
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, fmt.Errorf("bench: work dir: %w", err)
	}
	dir, err := os.MkdirTemp(base, "exportd-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: work dir: %w", err)
	}
	defer os.RemoveAll(dir)
	// The PostgreSQL server may run as another OS user: let it in.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: work dir: %w", err)
	}

	start := time.Now()
	res := &Results{Scale: cfg.Scale, Started: start.UTC(), Machine: machineInfo()}
	res.Command = regenerateCommand(cfg.Scale.Name)

	bin := cfg.Exportd
	if bin == "" {
		log.InfoContext(ctx, "building exportd")
		if bin, err = BuildExportd(ctx, filepath.Join(dir, "bin")); err != nil {
			return res, err
		}
	}
	e, err := startEnv(ctx, dir, cfg.Scale, log)
	if err != nil {
		return res, err
	}
	defer e.close()
	res.Machine.PostgreSQL = e.serverVersion
	res.Data = e.data
	log.InfoContext(ctx, "data generated", "rows", e.data.GeneratedRows, "tenants", cfg.Scale.Tenants,
		"copy_MB", float64(e.data.CopyBytes)/1e6, "seconds", e.data.GenSeconds)

	r := &runner{e: e, bin: bin, dir: dir, log: log, res: res, scale: cfg.Scale, duckDB: cfg.DuckDB, profileDir: cfg.ProfileDir}
	phases := []struct {
		name string
		run  func(context.Context) error
	}{
		{"snapshot", r.snapshot},
		{"export", r.exports},
		{"render", r.render},
		{"apply", r.apply},
		{"freshness", func(ctx context.Context) error { return r.freshness(ctx, rates) }},
		{"failover", r.failover},
	}
	for _, p := range phases {
		if p.name != "snapshot" && len(cfg.Phases) > 0 && !slices.Contains(cfg.Phases, p.name) {
			continue
		}
		pstart := time.Now()
		res.PhaseLoad = append(res.PhaseLoad, PhaseLoad{Phase: p.name, LoadAvg: benchutil.LoadAvg()})
		log.InfoContext(ctx, "phase started", "phase", p.name, "load", benchutil.LoadAvg())
		if err := p.run(ctx); err != nil {
			res.Duration = time.Since(start).Seconds()
			res.Figures = figures(res)
			return res, fmt.Errorf("bench: %s: %w", p.name, err)
		}
		log.InfoContext(ctx, "phase done", "phase", p.name, "seconds", time.Since(pstart).Seconds())
	}
	res.Duration = time.Since(start).Seconds()
	res.Figures = figures(res)
	return res, nil
}

// runner carries the state shared by the phases of one Run.
type runner struct {
	e      *env
	bin    string
	dir    string
	log    *slog.Logger
	res    *Results
	scale  Scale
	duckDB bool
	// profileDir receives the fold's profiles ("" none).
	profileDir string

	// stateDir is the daemon's state directory, built by the snapshot phase
	// and used by the later ones.
	stateDir string
	// tables are the staged table schemas.
	tables []snapshot.TableSchema
}

// regenerateCommand is the command that reproduces a run of scale.
func regenerateCommand(scale string) string {
	return fmt.Sprintf("go run ./cmd/exportd-bench -scale %s -out %s.md -plots bench/", scale, scale)
}
