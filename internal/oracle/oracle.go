// Package oracle checks staging against PostgreSQL itself: for a tenant and a
// table, the staged rows rendered as CSV must be byte-identical to what
// COPY (SELECT * FROM t WHERE tenant = $t ORDER BY pk) TO STDOUT WITH (FORMAT
// csv, HEADER) prints with exportd's pinned session settings. Tests of every
// package use it; it is never used by the daemon.
package oracle

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/exportd/exportd/internal/pgcsv"
	"github.com/exportd/exportd/snapshot"
)

// ProductionCSV returns what PostgreSQL prints for the tenant's rows of table,
// in primary-key order. conn must carry cdc.SessionSettings.
func ProductionCSV(ctx context.Context, conn *pgx.Conn, ts snapshot.TableSchema, tenant string) ([]byte, error) {
	keys := make([]string, len(ts.KeyColumns))
	for i, k := range ts.KeyColumns {
		keys[i] = pgx.Identifier{ts.Columns[k].Name}.Sanitize()
	}
	parts := strings.SplitN(ts.Name, ".", 2)
	sql := fmt.Sprintf("COPY (SELECT * FROM %s WHERE %s = %s ORDER BY %s) TO STDOUT WITH (FORMAT csv, HEADER)",
		pgx.Identifier(parts).Sanitize(), pgx.Identifier{ts.Columns[ts.TenantColumn].Name}.Sanitize(),
		quoteLiteral(tenant), strings.Join(keys, ", "))
	var buf bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &buf, sql); err != nil {
		return nil, fmt.Errorf("copy %s for tenant %s: %w", ts.Name, tenant, err)
	}
	return buf.Bytes(), nil
}

// StagedCSV renders the tenant's staged rows of table as COPY CSV with header.
func StagedCSV(ctx context.Context, v *snapshot.Version, table, tenant string) ([]byte, error) {
	ts, ok := v.Table(table)
	if !ok {
		return nil, fmt.Errorf("table %s is not staged", table)
	}
	var buf bytes.Buffer
	w := pgcsv.NewWriter(&buf)
	names := make([]string, len(ts.Columns))
	for i, c := range ts.Columns {
		names[i] = c.Name
	}
	if err := w.WriteHeader(names); err != nil {
		return nil, err
	}
	rows, err := v.Scan(ctx, table, tenant)
	if err != nil {
		return nil, fmt.Errorf("scan %s for tenant %s: %w", table, tenant, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := w.Write(rows.Row()); err != nil {
			return nil, err
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scan %s for tenant %s: %w", table, tenant, err)
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Mismatch describes the first difference between staged and production CSV.
type Mismatch struct {
	Table, Tenant              string
	Line                       int
	Staged, Production         string
	StagedRows, ProductionRows int
}

func (m *Mismatch) Error() string {
	return fmt.Sprintf("%s tenant %s: staged %d rows, production %d; first difference at line %d:\n staged:     %q\n production: %q",
		m.Table, m.Tenant, m.StagedRows, m.ProductionRows, m.Line, m.Staged, m.Production)
}

// Compare checks one tenant's table; it returns a *Mismatch on a difference.
func Compare(ctx context.Context, conn *pgx.Conn, v *snapshot.Version, table, tenant string) (rows int, err error) {
	ts, ok := v.Table(table)
	if !ok {
		return 0, fmt.Errorf("table %s is not staged", table)
	}
	prod, err := ProductionCSV(ctx, conn, ts, tenant)
	if err != nil {
		return 0, err
	}
	staged, err := StagedCSV(ctx, v, table, tenant)
	if err != nil {
		return 0, err
	}
	if bytes.Equal(prod, staged) {
		return bytes.Count(prod, []byte("\n")) - 1, nil
	}
	return 0, diff(table, tenant, staged, prod)
}

// CompareAll checks every tenant of every staged table, returning the number
// of rows compared and every mismatch joined.
func CompareAll(ctx context.Context, conn *pgx.Conn, v *snapshot.Version, tenants []string) (int, []error) {
	var total int
	var errs []error
	for _, ts := range v.Tables() {
		for _, tenant := range tenants {
			n, err := Compare(ctx, conn, v, ts.Name, tenant)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			total += n
		}
	}
	return total, errs
}

func diff(table, tenant string, staged, prod []byte) error {
	// Compare record by record; a quoted value may span lines, which only
	// shifts the reported line number.
	sl := bytes.Split(staged, []byte("\n"))
	pl := bytes.Split(prod, []byte("\n"))
	m := &Mismatch{Table: table, Tenant: tenant, StagedRows: len(sl) - 2, ProductionRows: len(pl) - 2}
	for i := 0; i < max(len(sl), len(pl)); i++ {
		var s, p string
		if i < len(sl) {
			s = string(sl[i])
		}
		if i < len(pl) {
			p = string(pl[i])
		}
		if s != p {
			m.Line, m.Staged, m.Production = i+1, truncate(s), truncate(p)
			return m
		}
	}
	return m
}

func truncate(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
