package cdc_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/oracle"
	"github.com/exportd/exportd/internal/pgcluster"
	"github.com/exportd/exportd/internal/pgtest"
	"github.com/exportd/exportd/internal/refschema"
	"github.com/exportd/exportd/snapshot"
)

// env is a private PostgreSQL loaded with generated reference data.
type env struct {
	pg      *pgcluster.Cluster
	url     string
	admin   *pgx.Conn // carries cdc.SessionSettings, like exportd's own connections
	summary *gen.Summary
}

func newEnv(t *testing.T, ctx context.Context, tenants, rows int) *env {
	t.Helper()
	pg := pgtest.Start(t)
	url := pg.ConnString("postgres")
	cfg, err := cdc.ConnConfig(url)
	require.NoError(t, err)
	admin, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { admin.Close(context.Background()) })
	sum, err := gen.Load(ctx, admin, nil, gen.Config{Seed: 7, Tenants: tenants, Rows: rows, CreateSchema: true})
	require.NoError(t, err)
	t.Logf("generated %d rows for %d tenants in %s", sum.TotalRows, len(sum.Tenants), sum.Duration)
	return &env{pg: pg, url: url, admin: admin, summary: sum}
}

// replicatedTables are the reference tables exportd replicates.
func replicatedTables() []string { return refschema.Tables() }

func (e *env) config() cdc.Config {
	return cdc.Config{
		ConnString:        e.url,
		Tables:            replicatedTables(),
		FlushInterval:     50 * time.Millisecond,
		HeartbeatInterval: 200 * time.Millisecond,
		StatusInterval:    time.Second,
		SlotCheckInterval: time.Second,
		ReconnectMin:      50 * time.Millisecond,
		ReconnectMax:      time.Second,
	}
}

// tenants lists every tenant id that owns a row in production now.
func (e *env) tenants(t *testing.T, ctx context.Context) []string {
	t.Helper()
	var parts []string
	for _, tb := range replicatedTables() {
		parts = append(parts, fmt.Sprintf("SELECT tenant_id FROM %s", tb))
	}
	rows, err := e.admin.Query(ctx, "SELECT id::text FROM (SELECT id FROM tenants UNION "+strings.Join(parts, " UNION ")+") t(id) ORDER BY id")
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return ids
}

// currentLSN is the end of all WAL inserted so far. pg_current_wal_lsn() (the
// write position) can stand before the commit record of a transaction that
// committed with synchronous_commit off, as the test clusters do.
func (e *env) currentLSN(t *testing.T, ctx context.Context) snapshot.LSN {
	t.Helper()
	var s string
	require.NoError(t, e.admin.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s))
	l, err := pglogrepl.ParseLSN(s)
	require.NoError(t, err)
	return snapshot.LSN(l)
}

// slotConfirmed reads the slot's confirmed flush LSN (0 when there is no slot).
func (e *env) slotConfirmed(t *testing.T, ctx context.Context) snapshot.LSN {
	t.Helper()
	var s *string
	err := e.admin.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'exportd'").Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) || s == nil {
		return 0
	}
	require.NoError(t, err)
	l, err := pglogrepl.ParseLSN(*s)
	require.NoError(t, err)
	return snapshot.LSN(l)
}

// running is an in-process replicator with its staging.
type running struct {
	store  *snapshot.Store
	repl   *cdc.Replicator
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func startReplicator(t *testing.T, ctx context.Context, e *env, dir string) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	store, err := snapshot.Open(ctx, dir, snapshot.Options{Logger: logger, Registerer: reg})
	require.NoError(t, err)
	repl, err := cdc.New(e.config(), store, logger, reg)
	require.NoError(t, err)
	rctx, cancel := context.WithCancel(ctx)
	r := &running{store: store, repl: repl, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- repl.Run(rctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("replicator did not stop within 30s")
	}
	require.NoError(t, r.store.Close())
}

// waitFor waits until cond holds, checking every 50ms, or fails after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// catchUp waits until staging holds everything production has committed now.
func catchUp(t *testing.T, ctx context.Context, e *env, store *snapshot.Store) {
	t.Helper()
	target := e.currentLSN(t, ctx)
	wctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	require.NoError(t, store.WaitFor(wctx, target), "staging did not reach %s", pglogrepl.LSN(target))
}

// checkOracle compares every tenant's staged tables with PostgreSQL.
func checkOracle(t *testing.T, ctx context.Context, e *env, store *snapshot.Store) {
	t.Helper()
	v, err := store.Pin(ctx)
	require.NoError(t, err)
	defer v.Close()
	require.Len(t, v.Tables(), len(replicatedTables()))
	tenants := e.tenants(t, ctx)
	n, errs := oracle.CompareAll(ctx, e.admin, v, tenants)
	for i, err := range errs {
		if i == 5 {
			t.Errorf("... and %d more mismatches", len(errs)-5)
			break
		}
		t.Error(err)
	}
	require.Empty(t, errs, "staged CSV differs from PostgreSQL's COPY")
	require.Positive(t, n)
	t.Logf("oracle: %d rows of %d tenants x %d tables byte-identical to COPY at %s", n, len(tenants), len(v.Tables()), pglogrepl.LSN(v.LSN()))
}

func runWorkload(ctx context.Context, t *testing.T, e *env, w gen.Workload) (<-chan gen.WorkloadStats, context.CancelFunc) {
	t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	out := make(chan gen.WorkloadStats, 1)
	go func() {
		st, err := w.Run(wctx, e.url)
		if err != nil && wctx.Err() == nil {
			t.Errorf("workload: %v", err)
		}
		out <- st
	}()
	return out, cancel
}

func (e *env) tenantIDs() []int64 {
	ids := make([]int64, len(e.summary.Tenants))
	for i, ts := range e.summary.Tenants {
		ids[i] = ts.ID
	}
	return ids
}

// TestReplicationOracle: generated data for 50 tenants, then a random
// concurrent workload for 30s (inserts, updates including of TOASTed rows,
// deletes, tenant moves, a truncate, an added and a dropped column). Once
// staging has caught up, every tenant's every table is byte-identical to COPY.
func TestReplicationOracle(t *testing.T) {
	// Usually 2-3 minutes with -race; the deadline leaves room for a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, 50, 60_000)
	r := startReplicator(t, ctx, e, t.TempDir())
	waitFor(t, time.Minute, "initial snapshot", func() bool { return r.store.State().SnapshotDone })

	stats, stop := runWorkload(ctx, t, e, gen.Workload{
		Seed: 11, Tenants: e.tenantIDs(), Workers: 4, Duration: 30 * time.Second,
		TruncateTable: refschema.Tasks, AddColumn: refschema.Candidates, DropColumn: true,
	})
	st := <-stats
	stop()
	t.Logf("workload: %+v", st)
	catchUp(t, ctx, e, r.store)
	checkOracle(t, ctx, e, r.store)
}

// TestSnapshotSeam: writes made while the initial snapshot runs are neither
// lost nor doubled.
func TestSnapshotSeam(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, 20, 150_000)
	stats, stop := runWorkload(ctx, t, e, gen.Workload{Seed: 5, Tenants: e.tenantIDs(), Workers: 3})
	// Let the workload get going, then snapshot under it.
	before := e.currentLSN(t, ctx)
	waitFor(t, 30*time.Second, "workload writes", func() bool { return e.currentLSN(t, ctx) > before+64<<10 })
	r := startReplicator(t, ctx, e, t.TempDir())
	var sawRunning bool
	waitFor(t, 2*time.Minute, "initial snapshot", func() bool {
		sawRunning = sawRunning || r.repl.Progress().Running
		return r.store.State().SnapshotDone
	})
	snapAt := r.store.State().LSN
	// Keep writing past the seam, then stop and compare.
	waitFor(t, 30*time.Second, "writes after the snapshot", func() bool { return e.currentLSN(t, ctx) > snapAt+256<<10 })
	stop()
	st := <-stats
	t.Logf("workload: %+v; snapshot at %s (copy observed running: %t)", st, pglogrepl.LSN(snapAt), sawRunning)
	require.Greater(t, snapAt, before, "the workload wrote before the snapshot point")
	catchUp(t, ctx, e, r.store)
	checkOracle(t, ctx, e, r.store)
}

// TestSlotLost: a slot dropped while exportd is away is detected, reported
// as a metric and answered with a fresh snapshot; staging ends up exact.
func TestSlotLost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, 10, 10_000)
	dir := t.TempDir()
	r := startReplicator(t, ctx, e, dir)
	waitFor(t, time.Minute, "initial snapshot", func() bool { return r.store.State().SnapshotDone })
	catchUp(t, ctx, e, r.store)
	r.stop(t)

	// The server's walsender may outlive the closed connection for a moment.
	waitFor(t, 30*time.Second, "the slot to be released", func() bool {
		var active bool
		require.NoError(t, e.admin.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 'exportd'").Scan(&active))
		return !active
	})
	_, err := e.admin.Exec(ctx, "SELECT pg_drop_replication_slot('exportd')")
	require.NoError(t, err)
	stats, stop := runWorkload(ctx, t, e, gen.Workload{Seed: 3, Tenants: e.tenantIDs(), Workers: 2, Duration: 2 * time.Second})
	<-stats
	stop()

	r = startReplicator(t, ctx, e, dir)
	waitFor(t, time.Minute, "a fresh snapshot", func() bool { return e.slotConfirmed(t, ctx) > 0 && r.repl.Connected() })
	catchUp(t, ctx, e, r.store)
	checkOracle(t, ctx, e, r.store)
	require.Equal(t, 1.0, counterValue(t, r.reg, "exportd_replication_slot_lost_total"))
}

// TestIdleAdvance: with no traffic on the published tables (only on another
// table), heartbeats still move the applied and confirmed positions, so lag
// reads true and the slot does not retain WAL.
func TestIdleAdvance(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, 3, 1_000)
	_, err := e.admin.Exec(ctx, "CREATE TABLE unpublished (id bigserial PRIMARY KEY, v text)")
	require.NoError(t, err)
	r := startReplicator(t, ctx, e, t.TempDir())
	waitFor(t, time.Minute, "initial snapshot", func() bool { return r.store.State().SnapshotDone })
	start := r.store.State().LSN
	_, err = e.admin.Exec(ctx, "INSERT INTO unpublished (v) SELECT repeat('x', 100) FROM generate_series(1, 20000)")
	require.NoError(t, err)
	target := e.currentLSN(t, ctx)
	require.Greater(t, target, start+1<<20, "the unpublished writes made WAL")
	catchUp(t, ctx, e, r.store)
	waitFor(t, 30*time.Second, "the slot to confirm past the unpublished writes", func() bool { return e.slotConfirmed(t, ctx) >= target })
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
		return sum
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// tempDir returns a directory the test removes afterwards, outside t.TempDir
// when a child process must reach it.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "exportd-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Clean(dir)
}

func oracleCompare(ctx context.Context, e *env, v *snapshot.Version, table, tenant string) (int, error) {
	return oracle.Compare(ctx, e.admin, v, table, tenant)
}

// TestSlotInvalidated: a slot the server invalidated (max_slot_wal_keep_size
// exceeded while exportd was away, wal_status = 'lost') is detected and
// answered with a fresh snapshot; staging ends up exact.
func TestSlotInvalidated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, 5, 5_000)
	dir := t.TempDir()
	r := startReplicator(t, ctx, e, dir)
	waitFor(t, time.Minute, "initial snapshot", func() bool { return r.store.State().SnapshotDone })
	catchUp(t, ctx, e, r.store)
	r.stop(t)

	for _, sql := range []string{"ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'", "SELECT pg_reload_conf()"} {
		_, err := e.admin.Exec(ctx, sql)
		require.NoError(t, err)
	}
	waitFor(t, time.Minute, "the slot to be invalidated", func() bool {
		for _, sql := range []string{
			"UPDATE candidates SET updated_at = updated_at + interval '1 second' WHERE tenant_id = (SELECT min(id) FROM tenants)",
			"SELECT pg_switch_wal()", "CHECKPOINT",
		} {
			_, err := e.admin.Exec(ctx, sql)
			require.NoError(t, err)
		}
		var status *string
		require.NoError(t, e.admin.QueryRow(ctx, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'exportd'").Scan(&status))
		return status != nil && *status == "lost"
	})

	r = startReplicator(t, ctx, e, dir)
	waitFor(t, time.Minute, "a fresh slot", func() bool {
		var status *string
		err := e.admin.QueryRow(ctx, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'exportd'").Scan(&status)
		return err == nil && status != nil && *status != "lost" && r.repl.Connected()
	})
	catchUp(t, ctx, e, r.store)
	checkOracle(t, ctx, e, r.store)
	require.Equal(t, 1.0, counterValue(t, r.reg, "exportd_replication_slot_lost_total"))
}
