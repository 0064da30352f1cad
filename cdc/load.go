package cdc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/snapshot"
)

// copyChunk is one unit of the initial snapshot: a table, or a range of its
// pages when the table is large enough to be split across connections.
type copyChunk struct {
	table     snapshot.TableSchema
	fromBlock int64 // -1: the whole table
	toBlock   int64 // -1: to the end
	estBytes  int64
}

func (c copyChunk) sql() string {
	s, n, _ := splitTable(c.table.Name)
	cols := make([]string, len(c.table.Columns))
	for i, col := range c.table.Columns {
		cols[i] = pgx.Identifier{col.Name}.Sanitize()
	}
	ident := pgx.Identifier{s, n}.Sanitize()
	if c.fromBlock < 0 {
		return fmt.Sprintf("COPY %s (%s) TO STDOUT", ident, strings.Join(cols, ", "))
	}
	where := fmt.Sprintf("ctid >= '(%d,0)'::tid", c.fromBlock)
	if c.toBlock >= 0 {
		where += fmt.Sprintf(" AND ctid < '(%d,0)'::tid", c.toBlock)
	}
	return fmt.Sprintf("COPY (SELECT %s FROM %s WHERE %s) TO STDOUT", strings.Join(cols, ", "), ident, where)
}

// minChunkBlocks keeps chunks large enough (64 MiB of 8 KiB pages) that
// splitting a table costs less than it gains.
const minChunkBlocks = 8192

// planChunks splits the tables into copy chunks, largest first, so that the
// workers finish at about the same time.
func planChunks(ctx context.Context, conn *pgx.Conn, tables []snapshot.TableSchema, workers int) ([]copyChunk, int64, error) {
	type sized struct {
		t      snapshot.TableSchema
		blocks int64
		bytes  int64
	}
	var all []sized
	var total int64
	for _, t := range tables {
		var blocks, size int64
		err := conn.QueryRow(ctx, `SELECT pg_relation_size($1::regclass) / current_setting('block_size')::bigint, pg_table_size($1::regclass)`, t.Name).Scan(&blocks, &size)
		if err != nil {
			return nil, 0, fmt.Errorf("read size of %s: %w", t.Name, err)
		}
		all = append(all, sized{t, blocks, size})
		total += size
	}
	var chunks []copyChunk
	for _, s := range all {
		per := s.blocks / int64(workers*2)
		if per < minChunkBlocks || workers == 1 {
			chunks = append(chunks, copyChunk{table: s.t, fromBlock: -1, toBlock: -1, estBytes: s.bytes})
			continue
		}
		for from := int64(0); ; from += per {
			c := copyChunk{table: s.t, fromBlock: from, toBlock: from + per, estBytes: s.bytes * per / max(s.blocks, 1)}
			if from+per >= s.blocks {
				c.toBlock = -1 // open-ended: the table may have grown since it was measured
				chunks = append(chunks, c)
				break
			}
			chunks = append(chunks, c)
		}
	}
	// Largest first.
	slices.SortStableFunc(chunks, func(a, b copyChunk) int { return cmp.Compare(b.estBytes, a.estBytes) })
	return chunks, total, nil
}

// loadProgress is the initial snapshot's progress, read by Progress.
type loadProgress struct {
	started    time.Time
	totalBytes int64 // estimate: the tables' size on disk
	rows       atomic.Int64
	bytes      atomic.Int64 // COPY text bytes received
}

// initialSnapshot creates the slot with an exported snapshot, copies every
// table inside that snapshot on several connections, and commits the load to
// staging at the slot's consistent point: streaming then starts exactly where
// the snapshot ends, so no change is missed or applied twice at the seam.
func (r *Replicator) initialSnapshot(ctx context.Context, conn *pgx.Conn, tables []snapshot.TableSchema) (snapshot.LSN, error) {
	rcfg, err := replicationConfig(r.cfg.ConnString)
	if err != nil {
		return 0, err
	}
	rconn, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return 0, fmt.Errorf("connect for replication: %w", err)
	}
	// The exported snapshot lives as long as this connection runs no other command.
	defer rconn.Close(context.Background())

	slot, err := pglogrepl.CreateReplicationSlot(ctx, rconn, r.cfg.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		return 0, fmt.Errorf("create replication slot %s: %w", r.cfg.Slot, err)
	}
	lsn, err := parseLSN(slot.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("create replication slot %s: %w", r.cfg.Slot, err)
	}
	log := r.log.With("slot", r.cfg.Slot, "lsn", slot.ConsistentPoint)
	log.Info("replication slot created; copying tables inside its snapshot", "snapshot", slot.SnapshotName)

	chunks, totalBytes, err := planChunks(ctx, conn, tables, r.cfg.CopyWorkers)
	if err != nil {
		return 0, err
	}
	prog := &loadProgress{started: time.Now(), totalBytes: totalBytes}
	r.progress.Store(prog)
	defer r.progress.Store(nil)

	load, err := r.store.BeginLoad(ctx, r.cfg.Slot, lsn, tables)
	if err != nil {
		return 0, fmt.Errorf("begin load: %w", err)
	}
	load.SizeHint(totalBytes)
	committed := false
	defer func() {
		if !committed {
			if err := load.Abort(); err != nil {
				log.Warn("abort load", "err", err)
			}
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	work := make(chan copyChunk)
	g.Go(func() error {
		defer close(work)
		for _, c := range chunks {
			select {
			case work <- c:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for w := 0; w < min(r.cfg.CopyWorkers, max(len(chunks), 1)); w++ {
		g.Go(func() error { return r.copyWorker(gctx, slot.SnapshotName, load, work, prog) })
	}
	stopReport := r.reportLoadProgress(ctx, log, prog)
	err = g.Wait()
	stopReport()
	if err != nil {
		return 0, fmt.Errorf("copy tables: %w", err)
	}
	if err := load.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit load: %w", err)
	}
	committed = true
	r.metrics.snapshots.Inc()
	log.Info("initial snapshot staged", "rows", prog.rows.Load(), "bytes", prog.bytes.Load(), "seconds", time.Since(prog.started).Seconds())
	return lsn, nil
}

// copyWorker imports the exported snapshot on its own connection and copies
// the chunks it is handed.
func (r *Replicator) copyWorker(ctx context.Context, snapshotName string, load *snapshot.Load, work <-chan copyChunk, prog *loadProgress) (err error) {
	cfg, err := ConnConfig(r.cfg.ConnString)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect for copy: %w", err)
	}
	defer func() { err = errors.Join(err, conn.Close(context.Background())) }()
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
		return fmt.Errorf("begin snapshot transaction: %w", err)
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("SET TRANSACTION SNAPSHOT '%s'", snapshotName)); err != nil {
		return fmt.Errorf("import snapshot %s: %w", snapshotName, err)
	}
	for c := range work {
		if err := r.copyChunk(ctx, conn, load, c, prog); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("end snapshot transaction: %w", err)
	}
	return nil
}

func (r *Replicator) copyChunk(ctx context.Context, conn *pgx.Conn, load *snapshot.Load, c copyChunk, prog *loadProgress) (err error) {
	w, err := load.Writer(c.table.Name)
	if err != nil {
		return fmt.Errorf("open load writer for %s: %w", c.table.Name, err)
	}
	defer func() {
		if cerr := w.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close load writer for %s: %w", c.table.Name, cerr)
		}
	}()
	rowsCounter := r.metrics.snapshotRows.WithLabelValues(c.table.Name)
	var pending int64
	p := newCopyTextParser(len(c.table.Columns), func(row snapshot.Row) error {
		pending++
		if pending == 4096 {
			prog.rows.Add(pending)
			rowsCounter.Add(float64(pending))
			pending = 0
		}
		return w.Append(row)
	})
	counted := &countingWriter{w: p, n: &prog.bytes}
	if _, err := conn.PgConn().CopyTo(ctx, counted, c.sql()); err != nil {
		return fmt.Errorf("copy %s: %w", c.table.Name, err)
	}
	prog.rows.Add(pending)
	rowsCounter.Add(float64(pending))
	return p.finish()
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.n.Add(int64(len(b)))
	return c.w.Write(b)
}

// reportLoadProgress logs the load's progress every few seconds until stopped.
func (r *Replicator) reportLoadProgress(ctx context.Context, log *slog.Logger, prog *loadProgress) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p := progressOf(prog)
				log.Info("initial snapshot progress", "rows", p.Rows, "bytes", p.Bytes, "percent", fmt.Sprintf("%.1f", p.Percent), "eta", p.ETA.Round(time.Second))
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// SnapshotProgress describes an initial snapshot under way.
type SnapshotProgress struct {
	Running bool
	Rows    int64
	Bytes   int64
	Percent float64       // estimated from the tables' size on disk
	ETA     time.Duration // estimated time left
}

func progressOf(p *loadProgress) SnapshotProgress {
	if p == nil {
		return SnapshotProgress{}
	}
	out := SnapshotProgress{Running: true, Rows: p.rows.Load(), Bytes: p.bytes.Load()}
	if p.totalBytes > 0 {
		// COPY text is roughly as large as the heap; cap the estimate below 100%.
		out.Percent = min(99.9, 100*float64(out.Bytes)/float64(p.totalBytes))
	}
	if out.Percent > 0 {
		el := time.Since(p.started)
		out.ETA = time.Duration(float64(el) * (100 - out.Percent) / out.Percent)
	}
	return out
}
