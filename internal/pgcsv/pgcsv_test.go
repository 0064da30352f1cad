package pgcsv

import (
	"bytes"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWriter(t *testing.T) {
	tests := []struct {
		name    string
		row     [][]byte
		protect []bool
		want    string
	}{
		{"null and empty", [][]byte{nil, {}}, nil, ",\"\"\n"},
		{"plain", [][]byte{[]byte("a b"), []byte(" lead")}, nil, "a b, lead\n"},
		{"comma quote newline cr", [][]byte{[]byte("a,b"), []byte(`say "hi"`), []byte("l1\nl2"), []byte("x\ry")}, nil, "\"a,b\",\"say \"\"hi\"\"\",\"l1\nl2\",\"x\ry\"\n"},
		{"backslash dot in multi-column row", [][]byte{[]byte(`\.`), []byte("x")}, nil, "\\.,x\n"},
		{"backslash dot alone", [][]byte{[]byte(`\.`)}, nil, "\"\\.\"\n"},
		{"formula protected", [][]byte{[]byte("=1+1"), []byte("-3"), []byte("@x,y")}, []bool{true, false, true}, "'=1+1,-3,\"'@x,y\"\n"},
		{"protection ignores empty and null", [][]byte{{}, nil}, []bool{true, true}, "\"\",\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(&buf)
			w.Protect = tt.protect
			require.NoError(t, w.Write(tt.row))
			require.NoError(t, w.Flush())
			require.Equal(t, tt.want, buf.String())
		})
	}
}

func TestHeader(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	require.NoError(t, w.WriteHeader([]string{"id", "odd,name", "=x"}))
	require.NoError(t, w.Flush())
	require.Equal(t, "id,\"odd,name\",=x\n", buf.String())
}

func BenchmarkWrite(b *testing.B) {
	row := [][]byte{[]byte("12345"), []byte("Jane"), []byte("O'Brien, Jr."), nil, []byte("a longer note without any special characters in it at all, well, one"),
		[]byte("2024-01-02 03:04:05+00"), []byte(`{"a": "b"}`), []byte("=cmd")}
	w := NewWriter(io.Discard)
	w.Protect = []bool{false, true, true, false, true, false, false, true}
	b.SetBytes(int64(len(row[0]) + len(row[1]) + len(row[2]) + len(row[4]) + len(row[5]) + len(row[6]) + len(row[7])))
	for b.Loop() {
		w.Write(row)
	}
}
