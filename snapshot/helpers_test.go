package snapshot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if err := sharedFromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// openTestStore opens a store in dir, closed at the end of the test. In a
// run against shared staging (TestSharedStaging) it is the writer of a
// bucket prefix of its own, and at the end of the test a follower opened on
// the same prefix must see what it holds.
func openTestStore(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	s, err := openForTest(context.Background(), dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	if testBucket != nil {
		// One follower from the start (it applies each entry's index
		// effects), one opened at the end (it rebuilds its index).
		f := openTestFollower(t, dir)
		t.Cleanup(func() { checkFollower(t, s, f, dir) })
	}
	return s
}

// scanAll returns a tenant's rows as strings ("\x00NULL" for NULL).
func scanAll(t testing.TB, v *Version, table, tenant string) [][]string {
	t.Helper()
	rows, err := v.Scan(context.Background(), table, tenant)
	require.NoError(t, err)
	var out [][]string
	for rows.Next() {
		out = append(out, rowStrings(rows.Row()))
	}
	require.NoError(t, rows.Err())
	require.NoError(t, rows.Close())
	return out
}

const nullText = "\x00NULL"

func rowStrings(r Row) []string {
	out := make([]string, len(r))
	for i, v := range r {
		if v == nil {
			out[i] = nullText
		} else {
			out[i] = string(v)
		}
	}
	return out
}

func row(vals ...any) Row {
	r := make(Row, len(vals))
	for i, v := range vals {
		switch x := v.(type) {
		case nil:
		case string:
			r[i] = []byte(x)
		case []byte:
			r[i] = x
		default:
			panic("bad value")
		}
	}
	return r
}
