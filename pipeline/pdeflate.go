package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
)

// parallelDeflate is a raw deflate stream (what a zip Deflate entry holds)
// compressed by several goroutines: the input is cut into blocks, each
// compressed on its own (no history across blocks) and ended with a sync
// flush, which leaves the output byte-aligned, so the blocks' outputs
// concatenate into one valid stream; the last block ends it. A CSV of a
// large tenant otherwise deflates on one core while the other renders: the
// deflate set the pace of the export.
//
// Memory: at most inFlight blocks of input and their output.
type parallelDeflate struct {
	out   io.Writer
	level int
	pool  *sync.Pool // *flate.Writer
	bufs  *sync.Pool // *[]byte, blockSize capacity

	buf     []byte
	queue   chan *deflateJob // in input order, to the writing goroutine
	slots   chan struct{}    // bounds the blocks in flight
	done    chan struct{}    // the writing goroutine has ended
	werr    error            // the first error, set by the writing goroutine before done
	errOnce sync.Once
	failed  chan struct{} // closed at the first error
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
	// written: enough for two cores with one block to spare.
	deflateInFlight = 4
)

// deflatePools are shared by the entries of one zip writer.
type deflatePools struct {
	level int
	flate sync.Pool
	bufs  sync.Pool
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
	d := &parallelDeflate{
		out:    out,
		level:  p.level,
		pool:   &p.flate,
		bufs:   &p.bufs,
		queue:  make(chan *deflateJob, deflateInFlight),
		slots:  make(chan struct{}, deflateInFlight),
		done:   make(chan struct{}),
		failed: make(chan struct{}),
	}
	go d.writeOut()
	return d, nil
}

func (d *parallelDeflate) fail(err error) {
	d.errOnce.Do(func() {
		d.werr = err
		close(d.failed)
	})
}

// writeOut writes the jobs' outputs in input order.
func (d *parallelDeflate) writeOut() {
	defer close(d.done)
	var failed bool
	for j := range d.queue {
		<-j.ready
		if failed {
			// Nothing more is written after an error: drain.
		} else if j.err != nil {
			failed = true
			d.fail(j.err)
		} else if _, err := d.out.Write(j.out.Bytes()); err != nil {
			failed = true
			d.fail(err)
		}
		<-d.slots
	}
}

func (d *parallelDeflate) Write(p []byte) (int, error) {
	if d.closed {
		return 0, errors.New("deflate: write after close")
	}
	n := len(p)
	for len(p) > 0 {
		if d.buf == nil {
			d.buf = (*d.bufs.Get().(*[]byte))[:0]
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

// submit hands the current block to a compressing goroutine.
func (d *parallelDeflate) submit(final bool) error {
	select {
	case d.slots <- struct{}{}:
	case <-d.failed:
		return d.werr
	}
	in := d.buf
	d.buf = nil
	j := &deflateJob{in: &in, final: final, ready: make(chan struct{})}
	d.queue <- j // never blocks: the queue holds as many jobs as there are slots
	go d.compress(j)
	return nil
}

func (d *parallelDeflate) compress(j *deflateJob) {
	defer close(j.ready)
	fw, _ := d.pool.Get().(*flate.Writer)
	if fw == nil {
		var err error
		if fw, err = flate.NewWriter(&j.out, d.level); err != nil {
			j.err = err
			return
		}
	} else {
		fw.Reset(&j.out)
	}
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
	d.bufs.Put(j.in)
	d.pool.Put(fw)
}

// Close compresses what is buffered, ends the stream and waits until all of
// it is written; it returns the first error.
func (d *parallelDeflate) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	if d.buf == nil {
		d.buf = (*d.bufs.Get().(*[]byte))[:0]
	}
	err := d.submit(true)
	close(d.queue)
	<-d.done
	if err != nil {
		return err
	}
	return d.werr
}
