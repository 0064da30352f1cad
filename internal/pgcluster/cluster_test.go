package pgcluster_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/exportd/exportd/internal/pgcluster"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// start starts a cluster for t and stops it when t ends, printing the
// server log if t failed. It is pgtest.Start without the import, so that
// these tests exercise Stop themselves.
func start(t *testing.T, opts pgcluster.Options) *pgcluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postgres log (last lines):\n%s", c.LogTail(50))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, c.Stop(ctx))
	})
	return c
}

func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), connString)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func show(t *testing.T, conn *pgx.Conn, setting string) string {
	t.Helper()
	var v string
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT current_setting($1)", setting).Scan(&v))
	return v
}

func TestStartStop(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts PostgreSQL; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			t.Logf("postgres log (last lines):\n%s", c.LogTail(50))
			_ = c.Stop(context.Background())
		}
	})
	require.DirExists(t, c.DataDir())
	require.NotZero(t, c.Port())
	require.FileExists(t, c.BinDir()+"/postgres")
	require.Equal(t, "postgres://postgres@127.0.0.1:"+itoa(c.Port())+"/postgres?sslmode=disable", c.ConnString("postgres"))

	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	require.NoError(t, err)
	var walLevel string
	require.NoError(t, conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel))
	require.Equal(t, "logical", walLevel)
	var slot string
	require.NoError(t, conn.QueryRow(ctx,
		"SELECT slot_name FROM pg_create_logical_replication_slot('t', 'pgoutput')").Scan(&slot))
	require.Equal(t, "t", slot)
	require.NoError(t, conn.Close(ctx))

	require.NoError(t, c.Stop(ctx))
	stopped = true
	require.NoDirExists(t, c.Dir())
	require.NoError(t, c.Stop(ctx), "a second Stop returns the first one's result")
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c := start(t, pgcluster.Options{})
	conn := connect(t, c.ConnString("postgres"))
	for setting, want := range map[string]string{
		"wal_level":               "logical",
		"max_replication_slots":   "20",
		"max_wal_senders":         "20",
		"listen_addresses":        "127.0.0.1",
		"port":                    itoa(c.Port()),
		"unix_socket_directories": c.Dir() + "/sock",
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"shared_buffers":          "256MB",
		"max_connections":         "200",
		"wal_sender_timeout":      "1min",
		"logging_collector":       "off",
		"max_slot_wal_keep_size":  "-1",
		"server_encoding":         "UTF8",
		"lc_collate":              "C",
		"data_directory":          c.DataDir(),
	} {
		require.Equal(t, want, show(t, conn, setting), setting)
	}
	var less bool
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT 'B' < 'a' AND 'a' < 'é'").Scan(&less))
	require.True(t, less, "text compares in byte order")
}

func TestOptions(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	if os.Geteuid() == 0 {
		// t.TempDir is 0700 and root's; the postgres user must enter it.
		require.NoError(t, os.Chmod(base, 0o755))
		require.NoError(t, os.Chmod(base+"/..", 0o755))
	}
	c := start(t, pgcluster.Options{
		Dir:      base,
		Settings: map[string]string{"work_mem": "8MB", "Application_Name": "it's"},
	})
	require.Equal(t, base, dirOf(c.Dir()))
	conn := connect(t, c.ConnString("postgres"))
	require.Equal(t, "8MB", show(t, conn, "work_mem"))

	require.NoError(t, c.CreateDatabase(t.Context(), "Tenant Data"))
	conn2 := connect(t, c.ConnString("Tenant Data"))
	var db string
	require.NoError(t, conn2.QueryRow(t.Context(), "SELECT current_database()").Scan(&db))
	require.Equal(t, "Tenant Data", db)
}

func TestKeep(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts PostgreSQL; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, pgcluster.Options{Keep: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, os.RemoveAll(c.Dir())) })
	require.NoError(t, c.StopImmediate(ctx))
	require.DirExists(t, c.DataDir())
	require.Contains(t, c.LogTail(5), "shutdown")
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opts pgcluster.Options
		want string
	}{
		{"port out of range", pgcluster.Options{Port: 70000}, "invalid port"},
		{"port setting", pgcluster.Options{Settings: map[string]string{"port": "5432"}}, "use Options.Port"},
		{"bad setting name", pgcluster.Options{Settings: map[string]string{"a b": "1"}}, "invalid setting name"},
		{"line break in value", pgcluster.Options{Settings: map[string]string{"work_mem": "1MB\nfsync = on"}}, "line break"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pgcluster.Start(t.Context(), tc.opts)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestStartFailureReportsLog(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("starts PostgreSQL; skipped with -short")
	}
	base := t.TempDir()
	if os.Geteuid() == 0 {
		require.NoError(t, os.Chmod(base, 0o755))
		require.NoError(t, os.Chmod(base+"/..", 0o755))
	}
	_, err := pgcluster.Start(t.Context(), pgcluster.Options{
		Dir:      base,
		Settings: map[string]string{"shared_buffers": "not a size"},
	})
	require.ErrorContains(t, err, "postgres exited before accepting connections")
	require.ErrorContains(t, err, "shared_buffers", "the error holds the end of the server log")
	entries, rerr := os.ReadDir(base)
	require.NoError(t, rerr)
	require.Empty(t, entries, "a failed Start removes its directory")
}

func TestTakenPort(t *testing.T) {
	t.Parallel()
	first := start(t, pgcluster.Options{})
	_, err := pgcluster.Start(t.Context(), pgcluster.Options{Port: first.Port()})
	require.ErrorContains(t, err, "port already in use")
}

func itoa(n int) string { return strconv.Itoa(n) }

func dirOf(p string) string { return filepath.Dir(p) }
