package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/pgcluster"
	"github.com/exportd/exportd/internal/refschema"
)

// env is the production side: a private PostgreSQL loaded with the
// reference schema.
type env struct {
	pg  *pgcluster.Cluster
	url string
	// admin carries cdc's session settings, so COPY prints what exportd stages.
	admin         *pgx.Conn
	log           *slog.Logger
	sum           *gen.Summary
	tables        []tableCopy // in refschema order
	data          Data
	serverVersion string
}

// tableCopy is one replicated table as COPY prints it.
type tableCopy = benchutil.CopyTable

func startEnv(ctx context.Context, dir string, scale Scale, log *slog.Logger) (_ *env, err error) {
	pg, err := pgcluster.Start(ctx, pgcluster.Options{
		Dir:    dir,
		Logger: log,
		// Fewer checkpoints in the middle of a measurement, but WAL bounded
		// well below the disk: at 16GB, scale L's generation and VACUUM
		// FREEZE kept 16 GB of WAL beside 24 GB of tables.
		Settings: map[string]string{"max_wal_size": "4GB", "checkpoint_timeout": "1h"},
	})
	if err != nil {
		return nil, err
	}
	e := &env{pg: pg, url: pg.ConnString("postgres"), log: log}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	cfg, err := cdc.ConnConfig(e.url)
	if err != nil {
		return nil, fmt.Errorf("connection config: %w", err)
	}
	if e.admin, err = pgx.ConnectConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := e.admin.QueryRow(ctx, "SELECT current_setting('server_version')").Scan(&e.serverVersion); err != nil {
		return nil, fmt.Errorf("server version: %w", err)
	}
	quiet := log.With("component", "gen")
	if !log.Enabled(ctx, slog.LevelDebug) {
		quiet = slog.New(discardBelow{log.Handler(), slog.LevelWarn})
	}
	log.InfoContext(ctx, "generating data", "rows", scale.Rows, "tenants", scale.Tenants, "skew", scale.Skew)
	e.sum, err = gen.Load(ctx, e.admin, nil, gen.Config{
		Seed: 7, Tenants: scale.Tenants, Rows: scale.Rows, Skew: scale.Skew, CreateSchema: true, Logger: quiet,
	})
	if err != nil {
		return nil, fmt.Errorf("generate data: %w", err)
	}
	// Hint bits and the visibility map now, so that no measured pass pays for them.
	if _, err := e.admin.Exec(ctx, "VACUUM (FREEZE, ANALYZE)"); err != nil {
		return nil, fmt.Errorf("vacuum: %w", err)
	}
	if _, err := e.admin.Exec(ctx, "CHECKPOINT"); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	e.data = Data{GeneratedRows: e.sum.TotalRows, GenSeconds: e.sum.Duration.Seconds(), TableRows: e.sum.TableRows,
		TenantRows: map[int64]int64{}}
	for _, t := range e.sum.Tenants {
		var n int64
		for _, c := range t.Rows {
			n += c
		}
		e.data.TenantRows[t.ID] = n
	}
	// A warm-up pass: fills the caches and measures what COPY prints.
	for _, t := range refschema.Tables() {
		e.tables = append(e.tables, tableCopy{Name: t})
	}
	res, err := copyTables(ctx, e.url, e.tables, 1)
	if err != nil {
		return nil, fmt.Errorf("warm-up copy: %w", err)
	}
	for i := range e.tables {
		e.tables[i] = res.Tables[i]
		e.data.Rows += res.Tables[i].Rows
		e.data.CopyBytes += res.Tables[i].Bytes
	}
	err = e.admin.QueryRow(ctx, `SELECT sum(pg_total_relation_size(t::regclass))::bigint, sum(pg_table_size(t::regclass))::bigint
		FROM unnest($1::text[]) t`, refschema.Tables()).Scan(&e.data.ProductionBytes, &e.data.ProductionHeapBytes)
	if err != nil {
		return nil, fmt.Errorf("table sizes: %w", err)
	}
	return e, nil
}

func (e *env) close() {
	if e.admin != nil {
		e.admin.Close(context.Background())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.pg.Stop(ctx); err != nil {
		e.log.Warn("stop PostgreSQL", "err", err)
	}
}

// tenantIDs are the generated tenants.
func (e *env) tenantIDs() []int64 {
	ids := make([]int64, len(e.sum.Tenants))
	for i, t := range e.sum.Tenants {
		ids[i] = t.ID
	}
	return ids
}

// insertLSN is production's WAL insert position: at or past every commit
// before the call.
func (e *env) insertLSN(ctx context.Context) (pglogrepl.LSN, error) {
	return queryLSN(ctx, e.admin, "SELECT pg_current_wal_insert_lsn()::text")
}

func queryLSN(ctx context.Context, conn *pgx.Conn, sql string) (pglogrepl.LSN, error) {
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		return 0, fmt.Errorf("read WAL position: %w", err)
	}
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	return l, nil
}

// flushWAL makes the server flush its WAL up to upto and writes one more
// commit past it: with synchronous_commit off (as private clusters run) the
// last commits may wait for the WAL writer, and a stream reaches only
// flushed WAL. The logical message is a commit that every decoder sees, so
// a consumer's position can pass upto.
func (e *env) flushWAL(ctx context.Context, upto pglogrepl.LSN) error {
	err := pgx.BeginFunc(ctx, e.admin, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "SELECT pg_logical_emit_message(true, 'exportd_bench_flush', '')")
		return err
	})
	if err != nil {
		return fmt.Errorf("flush WAL: %w", err)
	}
	var flushed bool
	if err := e.admin.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn", upto.String()).Scan(&flushed); err != nil {
		return fmt.Errorf("flush WAL: %w", err)
	}
	if !flushed {
		return fmt.Errorf("WAL is not flushed up to %s after a synchronous commit", upto)
	}
	return nil
}

// dropSlot drops a replication slot once its last user has let go of it.
func (e *env) dropSlot(ctx context.Context, slot string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := e.admin.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drop replication slot %s: %w", slot, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tuplesRead sums the tuples read from the user tables (sequential reads and
// index fetches) as pg_stat_user_tables counts them, after dropping this
// session's stats snapshot so the counts are current.
func tuplesRead(ctx context.Context, conn *pgx.Conn) (int64, error) {
	if _, err := conn.Exec(ctx, "SELECT pg_stat_clear_snapshot()"); err != nil {
		return 0, fmt.Errorf("tuples read: %w", err)
	}
	var n int64
	err := conn.QueryRow(ctx, "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0)::bigint FROM pg_stat_user_tables").Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("tuples read: %w", err)
	}
	return n, nil
}

// dirBytes is the total size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// machineInfo describes this machine.
func machineInfo() Machine {
	m := Machine{Cores: runtime.NumCPU(), OS: runtime.GOOS + "/" + runtime.GOARCH, Go: runtime.Version(), LoadAvg: benchutil.LoadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemoryMiB = kb >> 10
			}
		}
	}
	return m
}

// discardBelow is a slog handler that drops records below a level.
type discardBelow struct {
	slog.Handler
	min slog.Level
}

func (d discardBelow) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= d.min && d.Handler.Enabled(ctx, l)
}

func (d discardBelow) WithAttrs(as []slog.Attr) slog.Handler {
	return discardBelow{d.Handler.WithAttrs(as), d.min}
}

func (d discardBelow) WithGroup(name string) slog.Handler {
	return discardBelow{d.Handler.WithGroup(name), d.min}
}

// copyTables is benchutil.CopyTables on connections with exportd's session
// settings.
func copyTables(ctx context.Context, url string, tables []tableCopy, workers int) (benchutil.CopyResult, error) {
	cfg, err := cdc.ConnConfig(url)
	if err != nil {
		return benchutil.CopyResult{}, err
	}
	return benchutil.CopyTables(ctx, cfg, tables, workers)
}
