package pipeline

import (
	stdzip "archive/zip"
	"context"
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/klauspost/compress/zip"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/storage"
)

// TestZip64ManyEntries streams a bundle of more entries than the classic
// zip format holds (65,535), so it must be written as zip64, and reads it
// back with the standard library.
func TestZip64ManyEntries(t *testing.T) {
	fs, err := storage.NewFS(t.TempDir())
	require.NoError(t, err)
	const n = 70_000
	res, err := publishStream(context.Background(), fs, "big.zip", func(w io.Writer) error {
		zw := newZip(w, 1)
		for i := range n {
			fw, err := zw.CreateHeader(&zip.FileHeader{Name: fmt.Sprintf("d%d/f%d.txt", i%100, i), Method: zip.Store})
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(fw, "file %d\n", i); err != nil {
				return err
			}
		}
		return zw.Close()
	})
	require.NoError(t, err)
	zr, err := stdzip.OpenReader(fs.Root() + "/big.zip")
	require.NoError(t, err)
	defer zr.Close()
	require.Len(t, zr.File, n)
	rc, err := zr.File[n-1].Open()
	require.NoError(t, err)
	b, err := io.ReadAll(rc)
	rc.Close()
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("file %d\n", n-1), string(b))
	st, err := os.Stat(fs.Root() + "/big.zip")
	require.NoError(t, err)
	require.Equal(t, res.Size, st.Size())
}
