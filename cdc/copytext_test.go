package cdc

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/snapshot"
)

func collect(t *testing.T, ncols int, chunks ...string) ([][]*string, error) {
	t.Helper()
	var rows [][]*string
	p := newCopyTextParser(ncols, func(r snapshot.Row) error {
		out := make([]*string, len(r))
		for i, v := range r {
			if v != nil {
				s := string(v)
				out[i] = &s
			}
		}
		rows = append(rows, out)
		return nil
	})
	for _, c := range chunks {
		if _, err := p.Write([]byte(c)); err != nil {
			return rows, err
		}
	}
	return rows, p.finish()
}

func sp(s string) *string { return &s }

func TestCopyTextParser(t *testing.T) {
	input := "1\t\\N\t\n2\ta\\tb\\nc\\\\d\\r\\b\\f\\v\t\\101\\x41\\xz\n"
	want := [][]*string{
		{sp("1"), nil, sp("")},
		{sp("2"), sp("a\tb\nc\\d\r\b\f\v"), sp("AAxz")},
	}
	rows, err := collect(t, 3, input)
	require.NoError(t, err)
	require.Equal(t, want, rows)

	// Split at every position: the parser must carry partial lines.
	for i := 0; i <= len(input); i++ {
		rows, err := collect(t, 3, input[:i], input[i:])
		require.NoError(t, err, "split at %d", i)
		require.Equal(t, want, rows, "split at %d", i)
	}
}

func TestCopyTextParserErrors(t *testing.T) {
	_, err := collect(t, 2, "1\t2\t3\n")
	require.ErrorContains(t, err, "has 3 fields, want 2")
	_, err = collect(t, 2, "1\t2")
	require.ErrorContains(t, err, "after the last complete row")
	_, err = collect(t, 1, "abc\\\n")
	require.ErrorContains(t, err, "lone backslash")
}
