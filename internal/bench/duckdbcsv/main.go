// Command duckdbcsv is the DuckDB baseline of exportd-bench's CSV render
// phase. It is a module of its own so that exportd's module does not
// depend on DuckDB (cgo, a large static library, and newer versions of
// libraries exportd uses); internal/bench builds and runs it.
//
// It reads a JSON array of jobs on stdin, each {"table", "base", "columns",
// "headers", "out"}, runs in an in-memory DuckDB, for each,
//
//	COPY (SELECT <column> AS <header>, ... FROM read_parquet(<base>)) TO <out> (FORMAT csv, HEADER)
//
// and prints {"version", "seconds", "rows", "bytes"} as JSON: the time all
// COPYs took (the database is opened before the clock starts), the rows
// and the bytes written.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" driver
)

type job struct {
	Table   string   `json:"table"`
	Base    string   `json:"base"`
	Columns []string `json:"columns"`
	Headers []string `json:"headers"`
	Out     string   `json:"out"`
}

type result struct {
	Version string  `json:"version"`
	Seconds float64 `json:"seconds"`
	Rows    int64   `json:"rows"`
	Bytes   int64   `json:"bytes"`
}

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "duckdbcsv:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var jobs []job
	if err := json.NewDecoder(os.Stdin).Decode(&jobs); err != nil {
		return fmt.Errorf("read jobs: %w", err)
	}
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return fmt.Errorf("open DuckDB: %w", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("open DuckDB: %w", err)
	}
	defer conn.Close()
	var res result
	if err := conn.QueryRowContext(ctx, "SELECT version()").Scan(&res.Version); err != nil {
		return fmt.Errorf("DuckDB version: %w", err)
	}
	start := time.Now()
	for _, j := range jobs {
		if j.Base == "" {
			// The tenant has no rows in the table: a header only.
			if err := os.WriteFile(j.Out, []byte(strings.Join(j.Headers, ",")+"\n"), 0o644); err != nil {
				return err
			}
			continue
		}
		cols := make([]string, len(j.Columns))
		for i, c := range j.Columns {
			cols[i] = quoteIdent(c) + " AS " + quoteIdent(j.Headers[i])
		}
		q := fmt.Sprintf("COPY (SELECT %s FROM read_parquet(%s)) TO %s (FORMAT csv, HEADER)",
			strings.Join(cols, ", "), quoteString(j.Base), quoteString(j.Out))
		r, err := conn.ExecContext(ctx, q)
		if err != nil {
			return fmt.Errorf("%s: %w", j.Table, err)
		}
		n, err := r.RowsAffected()
		if err != nil {
			return fmt.Errorf("%s: %w", j.Table, err)
		}
		res.Rows += n
	}
	res.Seconds = time.Since(start).Seconds()
	for _, j := range jobs {
		fi, err := os.Stat(j.Out)
		if err != nil {
			return fmt.Errorf("%s: %w", j.Table, err)
		}
		res.Bytes += fi.Size()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func quoteIdent(s string) string  { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
func quoteString(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }
