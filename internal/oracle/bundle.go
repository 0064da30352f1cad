package oracle

import (
	"archive/zip"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
)

// CheckDataBundle compares every CSV of an export's data bundle with
// PostgreSQL's COPY of the same columns of the tenant's rows now, with
// formula protection and the BOM applied to the production side as
// documented; table looks up the staged schema of a table (e.g.
// snapshot.Version.Table). It returns the rows compared, or an error naming
// the first CSV and line that differ, or an entry the plan does not know.
func CheckDataBundle(ctx context.Context, conn *pgx.Conn, plan *pipeline.Plan, table func(string) (snapshot.TableSchema, bool), zr *zip.Reader, tenant string) (int, error) {
	total := 0
	names := map[string]bool{"README.txt": true}
	for _, f := range plan.Files {
		names[f.Name] = true
		ts, ok := table(f.Table)
		if !ok {
			return total, fmt.Errorf("table %s is not staged", f.Table)
		}
		q := Query{Table: f.Table, Header: f.Header, TenantColumn: ts.Columns[ts.TenantColumn].Name, Tenant: tenant}
		for _, c := range f.Columns {
			q.Columns = append(q.Columns, ts.Columns[c].Name)
		}
		for _, k := range ts.KeyColumns {
			q.Key = append(q.Key, ts.Columns[k].Name)
		}
		want, err := ExportCSV(ctx, conn, q)
		if err != nil {
			return total, err
		}
		if plan.FormulaProtection {
			if want, err = Protect(want, f.Protect); err != nil {
				return total, err
			}
		}
		if plan.BOM {
			want = append([]byte("\xEF\xBB\xBF"), want...)
		}
		got, err := zipEntry(zr, f.Name)
		if err != nil {
			return total, err
		}
		if !bytes.Equal(want, got) {
			return total, fmt.Errorf("%s of tenant %s differs from production: %s", f.Name, tenant, FirstDiff(got, want))
		}
		total += bytes.Count(want, []byte("\n")) - 1
	}
	for _, f := range zr.File {
		if !names[f.Name] {
			return total, fmt.Errorf("unexpected entry %q in the data bundle", f.Name)
		}
	}
	return total, nil
}

func zipEntry(zr *zip.Reader, name string) ([]byte, error) {
	for _, f := range zr.File {
		if f.Name != name {
			continue
		}
		rc, err := f.Open()
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("no %s in the bundle", name)
}

// FirstDiff describes the first line where got and want differ.
func FirstDiff(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := range max(len(g), len(w)) {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			return fmt.Sprintf("line %d:\n export:     %.300q\n production: %.300q", i+1, a, b)
		}
	}
	return "(no line differs)"
}
