package pipeline

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync/atomic"

	"github.com/klauspost/compress/zip"
	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/internal/lowprio"
	"github.com/exportd/exportd/internal/pgcsv"
)

// Putter stores a stream under a key. storage.Store implementations are
// Putters; Put must leave the key unchanged when it fails.
type Putter interface {
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
}

// bundleResult describes one published object.
type bundleResult struct {
	Key    string
	Size   int64
	SHA256 string
	Files  int64
}

// hashCounter hashes and counts what passes through it to w.
type hashCounter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *hashCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// publishStream runs fill, which writes an object's bytes, and stores them
// under key as they are produced: nothing is held whole in memory or on
// disk. If fill or the store fails, both are stopped and the error returned;
// the store's Put then leaves key unchanged (a partial multipart upload is
// aborted by the store).
func publishStream(ctx context.Context, out Putter, key string, fill func(w io.Writer) error) (bundleResult, error) {
	pr, pw := io.Pipe()
	g, gctx := errgroup.WithContext(ctx)
	hc := &hashCounter{w: countingWriter{pw, &progressFrom(ctx).bytes}, h: sha256.New()}
	g.Go(func() error {
		bw := bufio.NewWriterSize(hc, 256<<10)
		err := fill(bw)
		if err == nil {
			err = bw.Flush()
		}
		if err == nil {
			err = gctx.Err()
		}
		pw.CloseWithError(err) // nil: EOF for the reader
		return err
	})
	var stored int64
	g.Go(func() error {
		n, err := out.Put(gctx, key, pr)
		stored = n
		if err != nil {
			err = fmt.Errorf("put %s: %w", key, err)
			pr.CloseWithError(err)
			return err
		}
		// Put returned early without reading everything: the writer must not block.
		pr.CloseWithError(errors.New("store stopped reading"))
		return nil
	})
	if err := g.Wait(); err != nil {
		return bundleResult{}, err
	}
	if stored != hc.n {
		return bundleResult{}, fmt.Errorf("put %s: stored %d bytes, wrote %d", key, stored, hc.n)
	}
	return bundleResult{Key: key, Size: hc.n, SHA256: hex.EncodeToString(hc.h.Sum(nil))}, nil
}

// newZip returns a zip writer whose Deflate entries use klauspost/compress at
// level, on several goroutines (parallelDeflate).
func newZip(w io.Writer, level int) *zip.Writer {
	zw := zip.NewWriter(w)
	zw.RegisterCompressor(zip.Deflate, newDeflatePools(level).newWriter)
	return zw
}

// missingList collects the rows of missing_files.csv. It keeps up to
// missingMemLimit bytes in memory and spills to a temporary file beyond, so a
// tenant whose whole file store is unreachable does not exhaust memory.
type missingList struct {
	buf   bytes.Buffer
	f     *os.File
	w     *pgcsv.Writer
	count int64
}

const missingMemLimit = 4 << 20

var missingHeader = []string{"path", "object_key", "file_name", "owner", "reason"}

func (m *missingList) add(path, key, name, owner, reason string) error {
	if m.w == nil {
		m.w = pgcsv.NewWriter(&m.buf)
		if err := m.w.WriteHeader(missingHeader); err != nil {
			return err
		}
	}
	m.count++
	if err := m.w.Write([][]byte{[]byte(path), []byte(key), []byte(name), []byte(owner), []byte(reason)}); err != nil {
		return err
	}
	if m.f == nil && m.buf.Len() > missingMemLimit {
		if err := m.w.Flush(); err != nil {
			return err
		}
		f, err := os.CreateTemp("", "exportd-missing-*.csv")
		if err != nil {
			return fmt.Errorf("spill missing-files list: %w", err)
		}
		m.f = f
		if _, err := m.buf.WriteTo(f); err != nil {
			return fmt.Errorf("spill missing-files list: %w", err)
		}
		m.w = pgcsv.NewWriter(f)
	}
	return nil
}

// writeTo writes missing_files.csv (header only when nothing is missing).
func (m *missingList) writeTo(w io.Writer) error {
	if m.w == nil {
		cw := pgcsv.NewWriter(w)
		if err := cw.WriteHeader(missingHeader); err != nil {
			return err
		}
		return cw.Flush()
	}
	if err := m.w.Flush(); err != nil {
		return err
	}
	if m.f == nil {
		_, err := m.buf.WriteTo(w)
		return err
	}
	if _, err := m.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	_, err := io.Copy(w, m.f)
	return err
}

func (m *missingList) close() error {
	if m.f == nil {
		return nil
	}
	name := m.f.Name()
	return errors.Join(m.f.Close(), os.Remove(name))
}

// asyncWriter hands what is written to it to another goroutine, which
// writes it to w, so that producing bytes (rendering CSV) and consuming
// them (deflating) run on two cores. It holds at most asyncBuffers buffers
// of asyncBufSize bytes.
type asyncWriter struct {
	buf  []byte
	full chan []byte
	free chan []byte
	done chan error
	werr atomic.Pointer[error] // the consumer's first error
}

const (
	asyncBufSize = 256 << 10
	asyncBuffers = 4
)

// newAsyncWriter returns an asyncWriter to w; background: its goroutine
// runs at a lowered CPU priority (lowprio).
func newAsyncWriter(w io.Writer, background bool) *asyncWriter {
	a := &asyncWriter{full: make(chan []byte, asyncBuffers), free: make(chan []byte, asyncBuffers), done: make(chan error, 1)}
	for range asyncBuffers - 1 {
		a.free <- make([]byte, 0, asyncBufSize)
	}
	a.buf = make([]byte, 0, asyncBufSize)
	go func() {
		if background {
			defer lowprio.Lower()()
		}
		var err error
		for b := range a.full {
			if err == nil {
				if _, err = w.Write(b); err != nil {
					a.werr.Store(&err)
				}
			}
			a.free <- b[:0]
		}
		a.done <- err
	}()
	return a
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	if e := a.werr.Load(); e != nil {
		return 0, *e
	}
	n := len(p)
	for len(p) > 0 {
		k := copy(a.buf[len(a.buf):cap(a.buf)], p)
		a.buf = a.buf[:len(a.buf)+k]
		p = p[k:]
		if len(a.buf) == cap(a.buf) {
			a.full <- a.buf
			a.buf = <-a.free
		}
	}
	return n, nil
}

// Close writes what is buffered, waits for the consumer and returns its
// first error. The writer must not be used after.
func (a *asyncWriter) Close() error {
	if len(a.buf) > 0 {
		a.full <- a.buf
	}
	close(a.full)
	return <-a.done
}
