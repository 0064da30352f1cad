package cdc

import (
	"math/rand/v2"
	"strings"
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

// copyTextEscape encodes one value as COPY's text format does (nil: \N).
func copyTextEscape(v *string) string {
	if v == nil {
		return `\N`
	}
	var b strings.Builder
	for i := 0; i < len(*v); i++ {
		switch c := (*v)[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// TestCopyTextParserRoundTrip parses random rows, escaped as COPY escapes
// them and fed in random pieces, back to their values.
func TestCopyTextParserRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab\\\t\n\rN,\"x\x00é")
	for iter := 0; iter < 300; iter++ {
		ncols := 1 + rng.IntN(6)
		var want [][]*string
		for r := rng.IntN(20); r >= 0; r-- {
			row := make([]*string, ncols)
			for c := range row {
				if rng.IntN(6) == 0 {
					continue // NULL
				}
				v := make([]byte, rng.IntN(12))
				for i := range v {
					v[i] = alphabet[rng.IntN(len(alphabet))]
				}
				s := string(v)
				row[c] = &s
			}
			want = append(want, row)
		}
		var in strings.Builder
		for _, row := range want {
			for c, v := range row {
				if c > 0 {
					in.WriteByte('\t')
				}
				in.WriteString(copyTextEscape(v))
			}
			in.WriteByte('\n')
		}
		s := in.String()
		var chunks []string
		for len(s) > 0 {
			n := min(len(s), 1+rng.IntN(40))
			chunks = append(chunks, s[:n])
			s = s[n:]
		}
		rows, err := collect(t, ncols, chunks...)
		require.NoError(t, err, "iteration %d", iter)
		require.Equal(t, want, rows, "iteration %d", iter)
	}
}
