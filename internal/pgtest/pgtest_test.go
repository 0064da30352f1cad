package pgtest_test

import (
	"fmt"

	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/exportd/exportd/internal/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartConnect(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL; skipped with -short")
	}
	var dir string
	t.Run("cluster", func(t *testing.T) {
		c := pgtest.Start(t, pgtest.WithSetting("work_mem", "16MB"))
		dir = c.Dir()
		require.DirExists(t, dir)

		conn := pgtest.Connect(t, c.ConnString("postgres"))
		var workMem, walLevel string
		require.NoError(t, conn.QueryRow(t.Context(), "SHOW work_mem").Scan(&workMem))
		require.NoError(t, conn.QueryRow(t.Context(), "SHOW wal_level").Scan(&walLevel))
		require.Equal(t, "16MB", workMem)
		require.Equal(t, "logical", walLevel)
	})
	require.NotEmpty(t, dir)
	require.NoDirExists(t, dir, "the cluster is stopped and removed when its test ends")
}

// failedTB is a test that has failed; it collects its cleanups and log.
type failedTB struct {
	testing.TB
	cleanups []func()
	logs     []string
}

func (f *failedTB) Failed() bool      { return true }
func (f *failedTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *failedTB) Log(args ...any)   {}
func (f *failedTB) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

func TestStartLogsServerLogOnFailure(t *testing.T) {
	tb := &failedTB{TB: t}
	c := pgtest.Start(tb)
	for i := len(tb.cleanups) - 1; i >= 0; i-- {
		tb.cleanups[i]()
	}
	require.NoDirExists(t, c.Dir())
	require.Len(t, tb.logs, 1)
	require.Contains(t, tb.logs[0], "database system is ready to accept connections")
}
