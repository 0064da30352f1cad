package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/exportd/exportd/internal/pgcsv"
	"github.com/exportd/exportd/snapshot"
)

// utf8BOM is written at the start of every CSV when the spec asks for it.
var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// Scanner reads one tenant's staged rows of a table in primary-key order. A
// *snapshot.Version is one.
type Scanner interface {
	Scan(ctx context.Context, table, tenant string) (*snapshot.Rows, error)
}

// csvOptions are the per-export CSV settings.
type csvOptions struct {
	BOM bool
}

// RenderCSV writes the tenant's rows of one CSV file of the plan to w, as
// PostgreSQL's COPY ... WITH (FORMAT csv, HEADER) prints them (formula
// protection applied to the plan's protected columns), and returns the number
// of data rows. Every row is checked to belong to tenant: a row of another
// tenant is an error, never output.
func RenderCSV(ctx context.Context, w io.Writer, sc Scanner, f FilePlan, tenant string, bom bool) (int64, error) {
	if bom {
		if _, err := w.Write(utf8BOM); err != nil {
			return 0, fmt.Errorf("render %s: %w", f.Name, err)
		}
	}
	cw := pgcsv.NewWriter(w)
	cw.Protect = f.Protect
	if err := cw.WriteHeader(f.Header); err != nil {
		return 0, fmt.Errorf("render %s: write header: %w", f.Name, err)
	}
	rows, err := sc.Scan(ctx, f.Table, tenant)
	if err != nil {
		return 0, fmt.Errorf("render %s: %w", f.Name, err)
	}
	defer rows.Close()
	var n int64
	prog := progressFrom(ctx)
	out := make([][]byte, len(f.Columns))
	tid := []byte(tenant)
	for rows.Next() {
		row := rows.Row()
		if f.TenantColumn >= len(row) || !bytes.Equal(row[f.TenantColumn], tid) {
			return n, fmt.Errorf("render %s: staged row of table %s is not of tenant %s: refusing to export it", f.Name, f.Table, tenant)
		}
		for i, c := range f.Columns {
			if c < len(row) {
				out[i] = row[c]
			} else {
				out[i] = nil // a column the version's schema lacks: NULL, as in a row written before ADD COLUMN
			}
		}
		if err := cw.Write(out); err != nil {
			return n, fmt.Errorf("render %s: %w", f.Name, err)
		}
		n++
		if n&0x3fff == 0 {
			prog.rows.Add(0x4000)
			if err := ctx.Err(); err != nil {
				return n, fmt.Errorf("render %s: %w", f.Name, err)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("render %s: scan %s: %w", f.Name, f.Table, err)
	}
	if err := cw.Flush(); err != nil {
		return n, fmt.Errorf("render %s: %w", f.Name, err)
	}
	prog.rows.Add(n & 0x3fff)
	return n, nil
}
