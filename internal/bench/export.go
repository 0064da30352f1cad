package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zip"
	"go.yaml.in/yaml/v3"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
)

// compressionLevel is exportd's default deflate level (export.compression_level).
const compressionLevel = 1

// exportTenant is a tenant chosen for the export phase.
type exportTenant struct {
	label string
	id    int64
	rows  int64
}

// pickTenants chooses the largest tenant, the smallest, and the one whose
// size is nearest the geometric mean of the two.
func pickTenants(rows map[int64]int64) []exportTenant {
	ids := make([]int64, 0, len(rows))
	for id := range rows {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b int64) int {
		return cmp.Or(cmp.Compare(rows[a], rows[b]), cmp.Compare(a, b))
	})
	if len(ids) == 0 {
		return nil
	}
	small, large := ids[0], ids[len(ids)-1]
	mid := math.Sqrt(float64(max(rows[small], 1)) * float64(rows[large]))
	medium := ids[len(ids)/2]
	for _, id := range ids {
		if math.Abs(math.Log(float64(max(rows[id], 1))/mid)) < math.Abs(math.Log(float64(max(rows[medium], 1))/mid)) {
			medium = id
		}
	}
	out := []exportTenant{{"small", small, rows[small]}}
	if medium != small && medium != large {
		out = append(out, exportTenant{"medium", medium, rows[medium]})
	}
	if large != small {
		out = append(out, exportTenant{"largest", large, rows[large]})
	}
	return out
}

// exports times `exportd export` of a small, a medium and the largest
// tenant from staging, each beside the ten production queries that produce
// the same CSVs, zipped the same way, and counts the rows each read from
// production.
func (r *runner) exports(ctx context.Context) error {
	plan, err := pipeline.DefaultSpec().Resolve(r.tables)
	if err != nil {
		return fmt.Errorf("resolve export spec: %w", err)
	}
	specPath := filepath.Join(r.dir, "data-only-spec.yaml")
	if err := writeDataOnlySpec(specPath); err != nil {
		return err
	}
	filesDir := filepath.Join(r.dir, "files")
	outDir := filepath.Join(r.dir, "exports")
	for _, d := range []string{filesDir, outDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	conn, err := connect(ctx, r.e.url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	for _, t := range pickTenants(r.e.data.TenantRows) {
		x := ExportResult{Label: t.label, Tenant: t.id}
		tenant := strconv.FormatInt(t.id, 10)

		before, err := tuplesRead(ctx, r.e.admin)
		if err != nil {
			return err
		}
		m, u, err := r.runExport(ctx, tenant, specPath, filesDir, outDir)
		if err != nil {
			return err
		}
		after, err := tuplesRead(ctx, r.e.admin)
		if err != nil {
			return err
		}
		x.ExportdSeconds, x.ExportdPeakRSS, x.ExportdTuplesRead = u.Wall.Seconds(), u.PeakRSS, after-before
		for _, n := range m.Rows {
			x.Rows += n
		}
		for _, p := range m.Parts {
			if p.Part == pipeline.PartData {
				x.ExportdZipBytes = p.SizeBytes
			}
		}

		before = after
		start := time.Now()
		rows, size, err := productionZip(ctx, conn, plan, r.tables, tenant, filepath.Join(outDir, "production-"+tenant+".zip"))
		if err != nil {
			return err
		}
		x.ProdSeconds, x.ProdRows, x.ProdZipBytes = time.Since(start).Seconds(), rows, size
		// A backend reports its table counts when a transaction ends, at most
		// once a second unless told to.
		if _, err := conn.Exec(ctx, "SELECT pg_stat_force_next_flush()"); err != nil {
			return fmt.Errorf("flush stats: %w", err)
		}
		if after, err = tuplesRead(ctx, r.e.admin); err != nil {
			return err
		}
		x.ProdTuplesRead = after - before
		if x.ProdRows != x.Rows {
			r.note("tenant %d: exportd exported %d rows, the production queries printed %d", t.id, x.Rows, x.ProdRows)
		}
		r.res.Exports = append(r.res.Exports, x)
		r.log.InfoContext(ctx, "export", "tenant", t.id, "label", t.label, "rows", x.Rows,
			"exportd_s", x.ExportdSeconds, "production_s", x.ProdSeconds, "speedup", x.Speedup(),
			"exportd_tuples_read", x.ExportdTuplesRead, "production_tuples_read", x.ProdTuplesRead,
			"peak_rss_MiB", mib(x.ExportdPeakRSS))
	}
	r.removeAll(outDir)
	return nil
}

// runExport runs `exportd export` of tenant as its own process and returns
// its manifest and usage.
func (r *runner) runExport(ctx context.Context, tenant, specPath, filesDir, outDir string) (*pipeline.Manifest, benchutil.CommandUsage, error) {
	var stdout bytes.Buffer
	logPath := filepath.Join(r.dir, "exportd-export-"+tenant+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, benchutil.CommandUsage{}, err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, r.bin, "export",
		"-staging-dir", filepath.Join(r.stateDir, daemon.StagingDir), "-tenant", tenant,
		"-request-id", "bench-"+tenant, "-spec", specPath,
		"-files-dir", filesDir, "-out-dir", outDir, "-compression-level", strconv.Itoa(compressionLevel))
	cmd.Env = append(environWithout("EXPORTD_"), "EXPORTD_PUBLISH_LINK_SECRET="+linkSecret)
	cmd.Stdout, cmd.Stderr = &stdout, logf
	u, err := benchutil.RunCommand(cmd)
	if err != nil {
		return nil, u, fmt.Errorf("exportd export -tenant %s: %w; log %s:\n%s", tenant, err, logPath, tail(logPath, 20))
	}
	var m pipeline.Manifest
	if err := json.Unmarshal(stdout.Bytes(), &m); err != nil {
		return nil, u, fmt.Errorf("exportd export -tenant %s: manifest: %w", tenant, err)
	}
	return &m, u, nil
}

// writeDataOnlySpec writes the built-in export spec without its attachments
// section: the export is then the ten CSVs (plus an empty listing in each
// file bundle), the same work as the production queries, with no file
// store to read.
func writeDataOnlySpec(path string) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(pipeline.DefaultSpecYAML(), &doc); err != nil {
		return fmt.Errorf("data-only spec: %w", err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return errors.New("data-only spec: the built-in spec is not a mapping")
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "attachments" {
			m.Content = slices.Delete(m.Content, i, i+2)
			break
		}
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return fmt.Errorf("data-only spec: %w", err)
	}
	if _, err := pipeline.ParseSpec(out, path); err != nil {
		return fmt.Errorf("data-only spec: %w", err)
	}
	return os.WriteFile(path, out, 0o644)
}

// productionZip is the baseline: for each CSV of the plan, COPY (SELECT
// <columns> FROM <table> WHERE tenant_id = <tenant>) TO STDOUT WITH (FORMAT
// csv, HEADER) on production, streamed into a zip entry deflated at
// exportd's level with the same compressor, the zip written to path. It
// returns the data rows and the zip's size.
func productionZip(ctx context.Context, conn *pgx.Conn, plan *pipeline.Plan, tables []snapshot.TableSchema, tenant, path string) (rows, size int64, err error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		err = errors.Join(err, f.Close())
	}()
	bw := bufio.NewWriterSize(f, 256<<10)
	zw := zip.NewWriter(bw)
	zw.RegisterCompressor(zip.Deflate, func(w io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(w, compressionLevel)
	})
	now := time.Now()
	for _, fp := range plan.Files {
		ts := findTable(tables, fp.Table)
		if ts == nil {
			return 0, 0, fmt.Errorf("table %s is not staged", fp.Table)
		}
		fw, err := zw.CreateHeader(&zip.FileHeader{Name: fp.Name, Method: zip.Deflate, Modified: now})
		if err != nil {
			return 0, 0, err
		}
		cols := make([]string, len(fp.Columns))
		for i, c := range fp.Columns {
			cols[i] = pgx.Identifier{ts.Columns[c].Name}.Sanitize()
		}
		schema, table, _ := strings.Cut(fp.Table, ".")
		sql := fmt.Sprintf("COPY (SELECT %s FROM %s WHERE %s = %s) TO STDOUT WITH (FORMAT csv, HEADER)",
			strings.Join(cols, ", "), pgx.Identifier{schema, table}.Sanitize(),
			pgx.Identifier{ts.Columns[fp.TenantColumn].Name}.Sanitize(), quoteLiteral(tenant))
		tag, err := conn.PgConn().CopyTo(ctx, fw, sql)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", sql, err)
		}
		rows += tag.RowsAffected()
	}
	if err := zw.Close(); err != nil {
		return 0, 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	return rows, fi.Size(), nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// connect opens a connection with exportd's session settings.
func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := cdc.ConnConfig(url)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}
