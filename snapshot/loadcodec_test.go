package snapshot

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"
	"github.com/stretchr/testify/require"
)

// TestLoadCompressionAuto checks how an initial snapshot spills its runs:
// uncompressed while the staging volume has room, snappy when the load's
// size hint says the volume is short of space, and as configured otherwise.
func TestLoadCompressionAuto(t *testing.T) {
	free, err := freeBytes(t.TempDir())
	require.NoError(t, err)
	require.Positive(t, free)
	for _, tc := range []struct {
		name  string
		opt   string
		hint  int64
		codec format.CompressionCodec
	}{
		{"room", "", 1 << 20, format.Uncompressed},
		{"short of space", "", free, format.Snappy},
		{"no hint", "auto", 0, format.Uncompressed},
		{"configured", "zstd", free, format.Zstd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			s := openTestStore(t, dir, Options{LoadCompression: tc.opt, policy: policy{manual: true}})
			l, err := s.BeginLoad(ctx, "slot", 10, []TableSchema{schemaOrders})
			require.NoError(t, err)
			l.SizeHint(tc.hint)
			w, err := l.Writer(schemaOrders.Name)
			require.NoError(t, err)
			for i := range 1000 {
				require.NoError(t, w.Append(row("1", strconv.Itoa(i), "note")))
			}
			require.NoError(t, w.Close())
			require.NoError(t, l.Commit(ctx))

			segs := s.cur.segs
			require.NotEmpty(t, segs)
			for _, sg := range segs {
				f, err := os.Open(filepath.Join(dir, "data", sg.name()))
				require.NoError(t, err)
				st, err := f.Stat()
				require.NoError(t, err)
				pf, err := parquet.OpenFile(f, st.Size())
				require.NoError(t, err)
				for _, rg := range pf.Metadata().RowGroups {
					for _, c := range rg.Columns {
						require.Equal(t, tc.codec, c.MetaData.Codec, "column %v of %s", c.MetaData.PathInSchema, sg.name())
					}
				}
				require.NoError(t, f.Close())
			}
		})
	}
	_, err = Open(context.Background(), t.TempDir(), Options{LoadCompression: "lz5"})
	require.ErrorContains(t, err, `unknown compression "lz5"`)
	_, err = Open(context.Background(), t.TempDir(), Options{Compression: "auto"})
	require.ErrorContains(t, err, `unknown compression "auto"`)
}
