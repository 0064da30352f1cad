package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
)

// renderJob is one CSV of the render phase, for the DuckDB baseline: the
// base file holding the tenant's rows of Table, the columns to write (by
// Parquet column name) under their CSV headers, and the output file.
type renderJob struct {
	Table   string   `json:"table"`
	Base    string   `json:"base"`
	Columns []string `json:"columns"`
	Headers []string `json:"headers"`
	Out     string   `json:"out"`
}

// render measures the CSV render throughput of the largest tenant's ten
// files from staging (pipeline.RenderCSV into files, in this process), and
// DuckDB reading the same Parquet base files and writing the same columns
// as CSV files (the duckdbcsv program, built here with cgo when it can be).
func (r *runner) render(ctx context.Context) error {
	tenants := pickTenants(r.e.data.TenantRows)
	if len(tenants) == 0 {
		return errors.New("no tenant")
	}
	id := tenants[len(tenants)-1].id
	tenant := strconv.FormatInt(id, 10)
	r.res.Render.Tenant = id
	stagingDir := filepath.Join(r.stateDir, daemon.StagingDir)
	outDir := filepath.Join(r.dir, "render")
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	defer r.removeAll(outDir)

	store, err := snapshot.Open(ctx, stagingDir, snapshot.Options{Logger: quiet(r.log)})
	if err != nil {
		return fmt.Errorf("open staging: %w", err)
	}
	defer store.Close()
	v, err := store.Pin(ctx)
	if err != nil {
		return err
	}
	defer v.Close()
	plan, err := pipeline.DefaultSpec().Resolve(v.Tables())
	if err != nil {
		return fmt.Errorf("resolve export spec: %w", err)
	}
	bases, err := baseFiles(stagingDir, tenant)
	if err != nil {
		return err
	}
	if err := settle(bases); err != nil {
		return err
	}
	start := time.Now()
	var rate Rate
	fileRows := map[string]int64{}
	for _, f := range plan.Files {
		n, size, err := renderFile(ctx, v, f, tenant, plan.BOM, filepath.Join(outDir, "exportd-"+f.Name))
		if err != nil {
			return err
		}
		rate.Rows += n
		rate.Bytes += size
		fileRows[f.Name] = n
	}
	rate.Seconds = time.Since(start).Seconds()
	r.res.Render.Exportd = rate
	r.log.InfoContext(ctx, "exportd CSV render", "tenant", id, "rows", rate.Rows, "MB", float64(rate.Bytes)/1e6,
		"rows_per_s", int64(rate.RowsPerSec()), "MB_per_s", rate.MBPerSec())
	if err := v.Close(); err != nil {
		return err
	}
	if err := store.Close(); err != nil {
		return err
	}

	dk := &r.res.Render.DuckDB
	if !r.duckDB {
		dk.Note = "not run (-duckdb=false)"
		return nil
	}
	bin, err := buildDuckDBCSV(ctx, filepath.Join(r.dir, "bin"))
	if err != nil {
		dk.Note = "did not build: " + firstLine(err.Error())
		r.note("DuckDB baseline did not build: %v", err)
		return nil
	}
	dk.Built = true
	var jobs []renderJob
	for _, f := range plan.Files {
		ts := findTable(r.tables, f.Table)
		if ts == nil {
			return fmt.Errorf("table %s is not staged", f.Table)
		}
		j := renderJob{Table: f.Table, Base: bases[f.Table], Headers: f.Header, Out: filepath.Join(outDir, "duckdb-"+f.Name)}
		if j.Base == "" && fileRows[f.Name] > 0 {
			return fmt.Errorf("no base file of tenant %s's rows of %s in %s", tenant, f.Table, stagingDir)
		}
		for _, c := range f.Columns {
			j.Columns = append(j.Columns, ts.Columns[c].Name)
		}
		jobs = append(jobs, j)
	}
	// exportd's output is not needed any more; DuckDB starts as exportd did.
	for _, f := range plan.Files {
		if err := os.Remove(filepath.Join(outDir, "exportd-"+f.Name)); err != nil {
			return err
		}
	}
	if err := settle(bases); err != nil {
		return err
	}
	res, err := runDuckDBCSV(ctx, bin, jobs)
	if err != nil {
		dk.Note = "built, but failed: " + firstLine(err.Error())
		r.note("DuckDB baseline failed: %v", err)
		return nil
	}
	dk.Ran, dk.Version, dk.Rate, dk.PeakRSS = true, res.Version, res.rate, res.peakRSS
	r.log.InfoContext(ctx, "DuckDB CSV render", "version", res.Version, "rows", res.rate.Rows, "MB", float64(res.rate.Bytes)/1e6,
		"rows_per_s", int64(res.rate.RowsPerSec()), "MB_per_s", res.rate.MBPerSec())
	return nil
}

// settle gives each side of the render comparison the same start: the
// previous side's output written back to disk, and the tenant's base files
// read into the page cache. Without it the export phase's production
// queries (at scale L, 24 GB of tables) had evicted the base files, and
// exportd, rendering first, read them from disk for DuckDB.
func settle(bases map[string]string) error {
	syscall.Sync()
	for _, p := range bases {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("warm %s: %w", p, err)
		}
		_, err = io.Copy(io.Discard, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("warm %s: %w", p, err)
		}
	}
	return nil
}

// duckDBResult is what the duckdbcsv program reports, and its usage.
type duckDBResult struct {
	Version string  `json:"version"`
	Seconds float64 `json:"seconds"`
	Rows    int64   `json:"rows"`
	Bytes   int64   `json:"bytes"`
	rate    Rate
	peakRSS int64
}

// buildDuckDBCSV builds the DuckDB baseline, the module in
// internal/bench/duckdbcsv (cgo), into dir.
func buildDuckDBCSV(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside exportd's module: run from its source tree")
	}
	src := filepath.Join(filepath.Dir(gomod), "internal", "bench", "duckdbcsv")
	bin := filepath.Join(dir, "duckdbcsv")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", src, err, out)
	}
	return bin, nil
}

// runDuckDBCSV runs the DuckDB baseline on jobs as its own process.
func runDuckDBCSV(ctx context.Context, bin string, jobs []renderJob) (duckDBResult, error) {
	in, err := json.Marshal(jobs)
	if err != nil {
		return duckDBResult{}, err
	}
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, bin)
	cmd.Stdin, cmd.Stdout = bytes.NewReader(in), &stdout
	u, err := benchutil.RunCommand(cmd)
	if err != nil {
		return duckDBResult{}, err
	}
	var res duckDBResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return duckDBResult{}, fmt.Errorf("duckdbcsv output: %w", err)
	}
	res.rate = Rate{Seconds: res.Seconds, Rows: res.Rows, Bytes: res.Bytes, CPUSeconds: u.CPU.Seconds()}
	res.peakRSS = u.PeakRSS
	return res, nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// renderFile renders one CSV of the plan into path and returns its rows and
// size.
func renderFile(ctx context.Context, v *snapshot.Version, f pipeline.FilePlan, tenant string, bom bool, path string) (rows, size int64, err error) {
	out, err := os.Create(path)
	if err != nil {
		return 0, 0, err
	}
	defer func() { err = errors.Join(err, out.Close()) }()
	bw := bufio.NewWriterSize(out, 256<<10)
	if rows, err = pipeline.RenderCSV(ctx, bw, v, f, tenant, bom); err != nil {
		return 0, 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, 0, err
	}
	fi, err := out.Stat()
	if err != nil {
		return 0, 0, err
	}
	return rows, fi.Size(), nil
}

// baseFiles maps each table to the path of tenant's base file in a staging
// directory (under data/) (read from the files' key/value metadata; see snapshot/base.go).
// A table with two base files for the tenant (only while a fold is pending
// removal) takes the one of the higher number.
func baseFiles(dir, tenant string) (map[string]string, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "data", "base-*.parquet"))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, p := range paths {
		table, t, err := baseMeta(p)
		if err != nil {
			return nil, err
		}
		if t == tenant && p > out[table] {
			out[table] = p
		}
	}
	return out, nil
}

func baseMeta(path string) (table, tenant string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", "", err
	}
	pf, err := parquet.OpenFile(f, fi.Size(), parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", path, err)
	}
	table, _ = pf.Lookup("exportd.table")
	tenant, _ = pf.Lookup("exportd.tenant")
	return table, tenant, nil
}

// findTable returns the schema of the table called name, or nil.
func findTable(tables []snapshot.TableSchema, name string) *snapshot.TableSchema {
	for i := range tables {
		if tables[i].Name == name {
			return &tables[i]
		}
	}
	return nil
}
