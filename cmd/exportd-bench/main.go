// Command exportd-bench measures exportd beside its baselines (raw COPY,
// pg_recvlogical, production queries, DuckDB) on generated data of a chosen
// scale, and writes BENCHMARKS.md, PNG plots and the raw results as JSON:
//
//	go run ./cmd/exportd-bench -scale M -out BENCHMARKS.md -plots bench/
//
// It needs the PostgreSQL server package (initdb, postgres, pgbench,
// pg_recvlogical) and the go command: it builds ./cmd/exportd (unless
// -exportd names a binary) and the DuckDB baseline, a module of its own in
// internal/bench/duckdbcsv, with cgo (unless -duckdb=false). See package internal/bench for what is
// measured and how.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/exportd/exportd/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "exportd-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("exportd-bench", flag.ContinueOnError)
	scale := fs.String("scale", "S", "data set scale: S (~200k rows, seconds), M (~10M rows), L (~50M rows, one tenant of ~20M)")
	out := fs.String("out", "", `Markdown report to write (default "<scale>.md"; "-": none). BENCHMARKS.md holds the reports of M and L pasted beside hand-written analysis: do not write over it`)
	plots := fs.String("plots", "bench", "directory for the PNG plots and results-<scale>.json (empty: none)")
	workDir := fs.String("workdir", "", "directory for the cluster, staging and outputs of the run (default: the temporary directory)")
	exportd := fs.String("exportd", "", "exportd binary to measure (default: build ./cmd/exportd)")
	duckDB := fs.Bool("duckdb", true, "run the DuckDB baseline of the CSV render phase (builds internal/bench/duckdbcsv with cgo)")
	phases := fs.String("phases", "", "comma-separated phases to run (default all: snapshot,export,render,apply,freshness)")
	profile := fs.String("profile", "", "directory for pprof profiles of the fold into base files (fold-cpu.pprof, fold-heap.pprof near the heap's peak) and of exportd run in the snapshot and apply phases (snapshot-cpu.pprof, apply-cpu.pprof)")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	sc, err := bench.ScaleByName(*scale)
	if err != nil {
		return err
	}
	switch *out {
	case "":
		*out = sc.Name + ".md"
	case "-":
		*out = ""
	}
	cfg := bench.Config{Scale: sc, WorkDir: *workDir, Exportd: *exportd, DuckDB: *duckDB, ProfileDir: *profile, Logger: log}
	if *phases != "" {
		cfg.Phases = strings.Split(*phases, ",")
	}
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		// Keep what was measured, beside (not over) a complete run's files.
		if res != nil && *plots != "" {
			if b, jerr := json.MarshalIndent(res, "", "  "); jerr == nil && os.MkdirAll(*plots, 0o755) == nil {
				path := filepath.Join(*plots, "results-"+sc.Name+".partial.json")
				if werr := os.WriteFile(path, b, 0o644); werr == nil {
					log.Warn("partial results written", "path", path)
				}
			}
		}
		return err
	}
	if err := bench.Write(res, bench.WriteOptions{Markdown: *out, PlotsDir: *plots}); err != nil {
		return errors.Join(errors.New("write results"), err)
	}
	for _, f := range res.Figures {
		fmt.Printf("%-16s %-70.70s %12.4g %-10s %-6s %s\n", f.Group, f.Name, f.Value, f.Unit, ratioText(f.Ratio), f.Verdict)
	}
	log.Info("done", "markdown", *out, "plots", *plots, "seconds", res.Duration)
	return nil
}

func ratioText(r float64) string {
	if r == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2fx", r)
}
