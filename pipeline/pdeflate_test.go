package pipeline

import (
	stdzip "archive/zip"
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	kflate "github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zip"
	"github.com/stretchr/testify/require"
)

// csvLike returns n bytes of CSV-like text (compressible, not repetitive).
func csvLike(r *rand.Rand, n int) []byte {
	var b bytes.Buffer
	for b.Len() < n {
		fmt.Fprintf(&b, "%d,%d,\"Name %d\",person%d@example.com,%s,%.2f\n",
			r.IntN(1e9), r.IntN(100), r.IntN(5000), r.IntN(1e6), []string{"new", "hired", "offer"}[r.IntN(3)], r.Float64()*100)
	}
	return b.Bytes()[:n]
}

// writePieces writes data to w in pieces of random sizes.
func writePieces(t *testing.T, r *rand.Rand, w io.Writer, data []byte) {
	t.Helper()
	for len(data) > 0 {
		k := min(len(data), 1+r.IntN(300_000))
		n, err := w.Write(data[:k])
		require.NoError(t, err)
		require.Equal(t, k, n)
		data = data[k:]
	}
}

// TestParallelDeflateRoundTrip inflates what parallelDeflate wrote, with the
// standard library, for sizes around the block size, in the foreground and
// at the prerenderer's lowered priority.
func TestParallelDeflateRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, background := range []bool{false, true} {
		pools := newDeflatePools(1)
		pools.background = background
		for _, n := range []int{0, 1, 1000, deflateBlockSize - 1, deflateBlockSize, deflateBlockSize + 1, 11*deflateBlockSize/2 + 17} {
			t.Run(fmt.Sprint(background, n), func(t *testing.T) {
				data := csvLike(r, n)
				var out bytes.Buffer
				w, err := pools.newWriter(&out)
				require.NoError(t, err)
				writePieces(t, r, w, data)
				require.NoError(t, w.Close())
				got, err := io.ReadAll(flate.NewReader(bytes.NewReader(out.Bytes())))
				require.NoError(t, err)
				require.True(t, bytes.Equal(data, got), "inflated %d bytes, wrote %d", len(got), len(data))
			})
		}
	}
}

// TestParallelDeflateZip writes entries through newZip and reads them back
// with the standard library's archive/zip, which checks CRC and sizes; the
// data bundle is about as small as with one deflate stream.
func TestParallelDeflateZip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var out bytes.Buffer
	zw := newZip(&out, 1)
	entries := map[string][]byte{}
	var total int
	for i, n := range []int{5 << 20, 0, 123, 3<<20 + 5} {
		name := fmt.Sprintf("f%d.csv", i)
		entries[name] = csvLike(r, n)
		total += n
		fw, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate})
		require.NoError(t, err)
		writePieces(t, r, fw, entries[name])
	}
	require.NoError(t, zw.Close())
	zr, err := stdzip.NewReader(bytes.NewReader(out.Bytes()), int64(out.Len()))
	require.NoError(t, err)
	require.Len(t, zr.File, len(entries))
	for _, f := range zr.File {
		rc, err := f.Open()
		require.NoError(t, err)
		got, err := io.ReadAll(rc) // fails on a CRC or size mismatch
		require.NoError(t, err)
		require.NoError(t, rc.Close())
		require.True(t, bytes.Equal(entries[f.Name], got), "%s differs", f.Name)
	}

	// One stream, for size.
	var all bytes.Buffer
	for i := range 4 {
		all.Write(entries[fmt.Sprintf("f%d.csv", i)])
	}
	var one bytes.Buffer
	fw, err := kflate.NewWriter(&one, 1)
	require.NoError(t, err)
	_, err = fw.Write(all.Bytes())
	require.NoError(t, err)
	require.NoError(t, fw.Close())
	t.Logf("%d bytes: one stream %d, parallel blocks in a zip %d", total, one.Len(), out.Len())
	require.Less(t, float64(out.Len()), 1.03*float64(one.Len()), "blocks cost more than 3%% in size")
}

type failAfter struct {
	n   int
	err error
}

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		n := f.n
		f.n = 0
		return n, f.err
	}
	f.n -= len(p)
	return len(p), nil
}

// TestParallelDeflateWriteError: an error of the output stops the stream
// and is returned by Write or Close, not lost.
func TestParallelDeflateWriteError(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	boom := errors.New("disk full")
	w, err := newDeflatePools(1).newWriter(&failAfter{n: 100_000, err: boom})
	require.NoError(t, err)
	data := csvLike(r, 20*deflateBlockSize)
	var werr error
	for len(data) > 0 && werr == nil {
		k := min(len(data), 64<<10)
		_, werr = w.Write(data[:k])
		data = data[k:]
	}
	cerr := w.Close()
	require.True(t, errors.Is(werr, boom) || errors.Is(cerr, boom), "write: %v, close: %v", werr, cerr)
	require.ErrorIs(t, cerr, boom)

	_, err = newDeflatePools(12).newWriter(io.Discard)
	require.Error(t, err)
}

// BenchmarkDeflate compares one klauspost deflate stream at level 1 with
// parallelDeflate on CSV-like text.
func BenchmarkDeflate(b *testing.B) {
	data := csvLike(rand.New(rand.NewPCG(7, 8)), 32<<20)
	for _, bc := range []struct {
		name string
		w    func() (io.WriteCloser, error)
	}{
		{"one", func() (io.WriteCloser, error) { return kflate.NewWriter(io.Discard, 1) }},
		{"parallel", func() (io.WriteCloser, error) { return newDeflatePools(1).newWriter(io.Discard) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				w, err := bc.w()
				if err != nil {
					b.Fatal(err)
				}
				for p := data; len(p) > 0; p = p[min(len(p), 32<<10):] {
					if _, err := w.Write(p[:min(len(p), 32<<10)]); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestParallelDeflateAbandoned: an entry left without Close (its export
// failed) leaves no goroutine behind.
func TestParallelDeflateAbandoned(t *testing.T) {
	before := runtime.NumGoroutine()
	w, err := newDeflatePools(1).newWriter(io.Discard)
	require.NoError(t, err)
	_, err = w.Write(csvLike(rand.New(rand.NewPCG(9, 10)), 3*deflateBlockSize+5))
	require.NoError(t, err)
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), before, "goroutines left by an abandoned writer")
}
