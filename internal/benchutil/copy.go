package benchutil

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// CopyTable is one table as COPY TO STDOUT prints it.
type CopyTable struct {
	Name  string // schema.table
	Rows  int64
	Bytes int64 // COPY text bytes
}

// CopyResult is what one pass of CopyTables measured.
type CopyResult struct {
	Wall, CPU   time.Duration
	Rows, Bytes int64
	Tables      []CopyTable // per table, in the order given
}

// CopyTables runs COPY <table> TO STDOUT for every table on workers
// connections made with cfg (give it exportd's session settings, so the
// text is what exportd receives) and discards the output. Tables are handed
// out largest first (by Bytes).
func CopyTables(ctx context.Context, cfg *pgx.ConnConfig, tables []CopyTable, workers int) (CopyResult, error) {
	order := make([]int, len(tables))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(tables[b].Bytes, tables[a].Bytes) })
	out := CopyResult{Tables: make([]CopyTable, len(tables))}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, workers)
	cpu0, start := SelfCPU(), time.Now()
	for w := range workers {
		wg.Go(func() {
			errs[w] = func() (err error) {
				conn, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					return fmt.Errorf("connect: %w", err)
				}
				defer func() { err = errors.Join(err, conn.Close(context.Background())) }()
				for {
					n := int(next.Add(1) - 1)
					if n >= len(order) {
						return nil
					}
					i := order[n]
					s, t, _ := strings.Cut(tables[i].Name, ".")
					var cw byteCounter
					tag, err := conn.PgConn().CopyTo(ctx, &cw, "COPY "+pgx.Identifier{s, t}.Sanitize()+" TO STDOUT")
					if err != nil {
						return fmt.Errorf("copy %s: %w", tables[i].Name, err)
					}
					out.Tables[i] = CopyTable{Name: tables[i].Name, Rows: tag.RowsAffected(), Bytes: cw.n}
				}
			}()
		})
	}
	wg.Wait()
	out.Wall, out.CPU = time.Since(start), SelfCPU()-cpu0
	for _, t := range out.Tables {
		out.Rows += t.Rows
		out.Bytes += t.Bytes
	}
	return out, errors.Join(errs...)
}

type byteCounter struct{ n int64 }

func (c *byteCounter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
