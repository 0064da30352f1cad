package oracle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/exportd/exportd/internal/pgcsv"
)

// Query describes what a CSV of an export must equal: the columns (in output
// order, each with its header name) of one tenant's rows of a table, in
// primary-key order.
type Query struct {
	Table        string   // schema-qualified
	Columns      []string // source column names
	Header       []string // output names (defaults to Columns)
	TenantColumn string
	Key          []string // primary-key columns
	Tenant       string
}

// ExportCSV returns what PostgreSQL prints for q with COPY (SELECT ...
// WHERE tenant = $t ORDER BY pk) TO STDOUT WITH (FORMAT csv, HEADER), the
// header renamed as q.Header says. conn must carry cdc.SessionSettings.
func ExportCSV(ctx context.Context, conn *pgx.Conn, q Query) ([]byte, error) {
	header := q.Header
	if header == nil {
		header = q.Columns
	}
	if len(header) != len(q.Columns) {
		return nil, errors.New("oracle: header and columns differ in length")
	}
	sel := make([]string, len(q.Columns))
	for i, c := range q.Columns {
		sel[i] = pgx.Identifier{c}.Sanitize() + " AS " + pgx.Identifier{header[i]}.Sanitize()
	}
	keys := make([]string, len(q.Key))
	for i, k := range q.Key {
		keys[i] = pgx.Identifier{k}.Sanitize()
	}
	sql := fmt.Sprintf("COPY (SELECT %s FROM %s WHERE %s = %s ORDER BY %s) TO STDOUT WITH (FORMAT csv, HEADER)",
		strings.Join(sel, ", "), pgx.Identifier(strings.SplitN(q.Table, ".", 2)).Sanitize(),
		pgx.Identifier{q.TenantColumn}.Sanitize(), quoteLiteral(q.Tenant), strings.Join(keys, ", "))
	var buf bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &buf, sql); err != nil {
		return nil, fmt.Errorf("copy %s for tenant %s: %w", q.Table, q.Tenant, err)
	}
	return buf.Bytes(), nil
}

// Protect applies exportd's documented spreadsheet formula protection to a
// COPY CSV (with header): in every column i with protect[i], a value
// beginning with =, +, -, @, tab, CR or LF gets a leading apostrophe. It
// parses the CSV the way COPY writes it (an unquoted empty field is NULL, a
// quoted one the empty string) and writes it back with the same rules.
func Protect(csv []byte, protect []bool) ([]byte, error) {
	var out bytes.Buffer
	w := pgcsv.NewWriter(&out)
	first := true
	for len(csv) > 0 {
		rec, rest, err := parseRecord(csv)
		if err != nil {
			return nil, err
		}
		csv = rest
		if first {
			names := make([]string, len(rec))
			for i, v := range rec {
				names[i] = string(v)
			}
			if err := w.WriteHeader(names); err != nil {
				return nil, err
			}
			first = false
			w.Protect = protect
			continue
		}
		if err := w.Write(rec); err != nil {
			return nil, err
		}
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// parseRecord parses one COPY CSV record ending in LF.
func parseRecord(b []byte) (rec [][]byte, rest []byte, err error) {
	for {
		if len(b) > 0 && b[0] == '"' {
			var v []byte
			i := 1
			for {
				j := bytes.IndexByte(b[i:], '"')
				if j < 0 {
					return nil, nil, errors.New("oracle: unterminated quoted field")
				}
				v = append(v, b[i:i+j]...)
				i += j + 1
				if i < len(b) && b[i] == '"' {
					v = append(v, '"')
					i++
					continue
				}
				break
			}
			if v == nil {
				v = []byte{}
			}
			rec = append(rec, v)
			b = b[i:]
		} else {
			j := bytes.IndexAny(b, ",\n")
			if j < 0 {
				return nil, nil, errors.New("oracle: record without line end")
			}
			if j == 0 {
				rec = append(rec, nil)
			} else {
				rec = append(rec, b[:j:j])
			}
			b = b[j:]
		}
		if len(b) == 0 {
			return nil, nil, errors.New("oracle: record without line end")
		}
		switch b[0] {
		case ',':
			b = b[1:]
		case '\n':
			return rec, b[1:], nil
		default:
			return nil, nil, fmt.Errorf("oracle: unexpected %q after a field", b[0])
		}
	}
}
