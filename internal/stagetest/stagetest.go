// Package stagetest gives integration tests a private PostgreSQL and an
// in-process replicator keeping a snapshot store current from it: the
// production side and the staging side of exportd, for tests of what is
// built on staging (rendering, requests, the daemon).
package stagetest

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/internal/pgcluster"
	"github.com/exportd/exportd/internal/pgtest"
	"github.com/exportd/exportd/internal/refschema"
	"github.com/exportd/exportd/snapshot"
)

// Env is a production database.
type Env struct {
	PG  *pgcluster.Cluster
	URL string
	// Admin carries cdc.SessionSettings, like exportd's own connections, so
	// COPY prints values as staging does.
	Admin *pgx.Conn
}

// StartPG starts a private PostgreSQL for t.
func StartPG(t testing.TB) *Env {
	t.Helper()
	pg := pgtest.Start(t)
	url := pg.ConnString("postgres")
	cfg, err := cdc.ConnConfig(url)
	if err != nil {
		t.Fatalf("connection config: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	return &Env{PG: pg, URL: url, Admin: admin}
}

// InsertLSN is the end of all WAL inserted so far: a position at or past
// every transaction committed before the call.
func (e *Env) InsertLSN(t testing.TB, ctx context.Context) snapshot.LSN {
	t.Helper()
	var s string
	if err := e.Admin.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		t.Fatalf("read WAL position: %v", err)
	}
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatalf("parse LSN %q: %v", s, err)
	}
	return snapshot.LSN(l)
}

// Replica is an in-process replicator with its staging store.
type Replica struct {
	Dir    string // the staging directory
	Store  *snapshot.Store
	Repl   *cdc.Replicator
	Reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// Config returns a replication config for the reference tables with short
// intervals, suitable for tests.
func (e *Env) Config() cdc.Config {
	return cdc.Config{
		ConnString:        e.URL,
		Tables:            refschema.Tables(),
		FlushInterval:     50 * time.Millisecond,
		HeartbeatInterval: 200 * time.Millisecond,
		StatusInterval:    time.Second,
		SlotCheckInterval: time.Second,
		ReconnectMin:      50 * time.Millisecond,
		ReconnectMax:      time.Second,
	}
}

// Replicate starts replicating with cfg into a new store in a fresh
// directory; it stops when t ends.
func (e *Env) Replicate(t testing.TB, cfg cdc.Config) *Replica {
	t.Helper()
	dir, err := os.MkdirTemp("", "exportd-staging-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx := context.Background()
	store, err := snapshot.Open(ctx, dir, snapshot.Options{Logger: logger, Registerer: reg})
	if err != nil {
		t.Fatalf("open staging: %v", err)
	}
	repl, err := cdc.New(cfg, store, logger, reg)
	if err != nil {
		t.Fatalf("new replicator: %v", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	r := &Replica{Dir: dir, Store: store, Repl: repl, Reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- repl.Run(rctx) }()
	t.Cleanup(func() { r.Stop(t) })
	return r
}

// Stop stops replication and closes the store. It is idempotent.
func (r *Replica) Stop(t testing.TB) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("replicator: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("replicator did not stop within 30s")
	}
	if err := r.Store.Close(); err != nil {
		t.Errorf("close staging: %v", err)
	}
}

// CatchUp waits until staging holds everything production committed before
// the call, and returns a version pinned at or past it (closed when t ends).
func (r *Replica) CatchUp(t testing.TB, ctx context.Context, e *Env) *snapshot.Version {
	t.Helper()
	target := e.InsertLSN(t, ctx)
	wctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	if err := r.Store.WaitFor(wctx, target); err != nil {
		t.Fatalf("staging did not reach %s: %v", pglogrepl.LSN(target), err)
	}
	v, err := r.Store.Pin(ctx)
	if err != nil {
		t.Fatalf("pin: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
