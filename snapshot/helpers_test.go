package snapshot

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// openTestStore opens a store in dir, closed at the end of the test.
func openTestStore(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	s, err := Open(context.Background(), dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
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
