package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"

	"github.com/exportd/exportd/internal/lowprio"
)

// parallelDeflate is a raw deflate stream (what a zip Deflate entry holds)
// compressed by several goroutines: the input is cut into blocks, each
// compressed on its own (no history across blocks) and ended with a sync
// flush, which leaves the output byte-aligned, so the blocks' outputs
// concatenate into one valid stream; the last block ends it. A CSV of a
// large tenant otherwise deflates on one core while the other renders: the
// deflate set the pace of the export.
//
// The caller's goroutine writes the blocks' outputs in order; the
// compressing goroutines end with their block, so an entry abandoned
// without Close (an export that failed) leaves nothing running. Memory: at
// most deflateInFlight blocks of input and their output.
type parallelDeflate struct {
	out   io.Writer
	pools *deflatePools

	buf     []byte
	pending []*deflateJob // in input order
	err     error         // the first error; nothing is written after it
	closed  bool
}

type deflateJob struct {
	in    *[]byte
	out   bytes.Buffer
	final bool
	err   error
	ready chan struct{}
}

const (
	deflateBlockSize = 1 << 20
	// deflateInFlight bounds the blocks being compressed or waiting to be
	// written: enough for two cores with blocks to spare.
	deflateInFlight = 4
)

// deflatePools are shared by the entries of one zip writer.
type deflatePools struct {
	level int
	// background: blocks are compressed at a lowered CPU priority
	// (lowprio), for the prerenderer.
	background bool
	flate      sync.Pool // *flate.Writer
	bufs       sync.Pool // *[]byte of deflateBlockSize capacity
}

func newDeflatePools(level int) *deflatePools {
	p := &deflatePools{level: level}
	p.bufs.New = func() any {
		b := make([]byte, 0, deflateBlockSize)
		return &b
	}
	return p
}

func (p *deflatePools) newWriter(out io.Writer) (io.WriteCloser, error) {
	if p.level < flate.HuffmanOnly || p.level > flate.BestCompression {
		return nil, fmt.Errorf("deflate: invalid compression level %d", p.level)
	}
	return &parallelDeflate{out: out, pools: p}, nil
}

func (d *parallelDeflate) Write(p []byte) (int, error) {
	if d.closed {
		return 0, errors.New("deflate: write after close")
	}
	if d.err != nil {
		return 0, d.err
	}
	n := len(p)
	for len(p) > 0 {
		if d.buf == nil {
			d.buf = (*d.pools.bufs.Get().(*[]byte))[:0]
		}
		k := copy(d.buf[len(d.buf):cap(d.buf)], p)
		d.buf = d.buf[:len(d.buf)+k]
		p = p[k:]
		if len(d.buf) == cap(d.buf) {
			if err := d.submit(false); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// submit hands the current block to a compressing goroutine, first writing
// the blocks already compressed (and, if deflateInFlight are pending,
// waiting for the oldest).
func (d *parallelDeflate) submit(final bool) error {
	for len(d.pending) >= deflateInFlight || (len(d.pending) > 0 && isDone(d.pending[0].ready)) {
		if err := d.writeOldest(); err != nil {
			return err
		}
	}
	in := d.buf
	d.buf = nil
	j := &deflateJob{in: &in, final: final, ready: make(chan struct{})}
	d.pending = append(d.pending, j)
	go d.compress(j)
	return nil
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// writeOldest waits for the oldest pending block and writes its output.
func (d *parallelDeflate) writeOldest() error {
	j := d.pending[0]
	d.pending = d.pending[1:]
	<-j.ready
	if d.err == nil {
		if j.err != nil {
			d.err = fmt.Errorf("deflate: %w", j.err)
		} else if _, err := d.out.Write(j.out.Bytes()); err != nil {
			d.err = err
		}
	}
	return d.err
}

func (d *parallelDeflate) compress(j *deflateJob) {
	defer close(j.ready)
	if d.pools.background {
		defer lowprio.Lower()()
	}
	defer d.pools.bufs.Put(j.in)
	fw, _ := d.pools.flate.Get().(*flate.Writer)
	if fw == nil {
		var err error
		if fw, err = flate.NewWriter(&j.out, d.pools.level); err != nil {
			j.err = err
			return
		}
	} else {
		fw.Reset(&j.out)
	}
	defer d.pools.flate.Put(fw)
	j.out.Grow(len(*j.in)/2 + 64)
	_, err := fw.Write(*j.in)
	if err == nil {
		if j.final {
			err = fw.Close()
		} else {
			err = fw.Flush()
		}
	}
	j.err = err
}

// Close compresses what is buffered, ends the stream and writes all of it;
// it returns the first error.
func (d *parallelDeflate) Close() error {
	if d.closed {
		return d.err
	}
	d.closed = true
	if d.err == nil {
		if d.buf == nil {
			d.buf = (*d.pools.bufs.Get().(*[]byte))[:0]
		}
		if err := d.submit(true); err != nil {
			return err
		}
	}
	for len(d.pending) > 0 {
		_ = d.writeOldest() // d.err keeps the first error
	}
	return d.err
}
