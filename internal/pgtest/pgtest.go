// Package pgtest starts private PostgreSQL clusters (see package pgcluster)
// for tests and ties their lifetime, and that of connections to them, to the
// test. With -short, Start skips the test.
package pgtest

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/exportd/exportd/internal/pgcluster"
)

const (
	startTimeout   = 2 * time.Minute
	stopTimeout    = time.Minute
	connectTimeout = 30 * time.Second
	logTailLines   = 80
)

// Option changes the pgcluster.Options that Start uses.
type Option func(*pgcluster.Options)

// WithSetting sets a postgresql.conf setting (see pgcluster.Options.Settings).
func WithSetting(name, value string) Option {
	return func(o *pgcluster.Options) {
		if o.Settings == nil {
			o.Settings = map[string]string{}
		}
		o.Settings[name] = value
	}
}

// WithKeep keeps the cluster directory after the test, for inspection.
func WithKeep() Option {
	return func(o *pgcluster.Options) { o.Keep = true }
}

// Start starts a cluster and stops it when t and its subtests end. If t
// failed, the end of the server log is written to the test log first. The
// cluster logs to t. In -short mode Start skips t.
func Start(t testing.TB, opts ...Option) *pgcluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL; skipped with -short")
	}
	o := pgcluster.Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	c, err := pgcluster.Start(ctx, o)
	if err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postgres log of %s (last %d lines):\n%s", c.Dir(), logTailLines, c.LogTail(logTailLines))
		}
		// t.Context is already canceled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
	})
	return c
}

// Connect opens a connection and closes it when t ends.
func Connect(t testing.TB, connString string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
		defer cancel()
		if err := conn.Close(ctx); err != nil {
			t.Logf("close PostgreSQL connection: %v", err)
		}
	})
	return conn
}

// testWriter writes each slog record to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
