package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/klauspost/compress/s2"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"
	"github.com/parquet-go/parquet-go/compress/snappy"
	"github.com/parquet-go/parquet-go/compress/zstd"
)

// Delta segment: one Parquet file holding changes of many tables and
// tenants, sorted by (sk, seq) with at most one entry per sk. Columns:
//
//	sk      BYTE_ARRAY  table id || tenant || key (see encoding.go)
//	seq     INT64       global change sequence
//	op      INT32       opUpsert or opDelete
//	payload BYTE_ARRAY  row values (encoding.go), empty for deletes
//
// Row-group statistics and the page index (column index + offset index) of
// sk let a reader seek to a (table, tenant) range or to one key.

const (
	opUpsert uint8 = 1
	opDelete uint8 = 2
)

const (
	segRowGroupRows  = 256 << 10
	segRowGroupBytes = 8 << 20
	segPageBytes     = 8 << 10
	writeBatchRows   = 64
	readBatchRows    = 256
	skIndexSizeLimit = 64
)

func segSchema() *parquet.Schema {
	return parquet.NewSchema("exportd_segment", parquet.Group{
		"sk":      parquet.Leaf(parquet.ByteArrayType),
		"seq":     parquet.Leaf(parquet.Int64Type),
		"op":      parquet.Leaf(parquet.Int32Type),
		"payload": parquet.Leaf(parquet.ByteArrayType),
	})
}

// segLayout holds the leaf column indexes of the segment schema.
type segLayout struct {
	schema               *parquet.Schema
	sk, seq, op, payload int
}

func newSegLayout() segLayout {
	s := segSchema()
	idx := func(name string) int {
		c, ok := s.Lookup(name)
		if !ok {
			panic("segment schema lacks " + name)
		}
		return c.ColumnIndex
	}
	return segLayout{schema: s, sk: idx("sk"), seq: idx("seq"), op: idx("op"), payload: idx("payload")}
}

func codecFor(name string) compress.Codec {
	switch name {
	case "zstd":
		return &zstd.Codec{Level: zstd.SpeedFastest}
	case "none":
		return &parquet.Uncompressed
	}
	return &fastSnappy{}
}

// fastSnappy is the SNAPPY codec in its fastest mode (parquet-go's uses the
// slower "better" mode); the output is standard snappy.
type fastSnappy struct{ snappy.Codec }

func (*fastSnappy) Encode(dst, src []byte) ([]byte, error) {
	return s2.EncodeSnappy(dst[:cap(dst)], src), nil
}

// countingWriter counts the bytes written to an object.
type countingWriter struct {
	w objWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// segWriter writes one segment. Entries must be added in (sk, seq) order.
type segWriter struct {
	lay      segLayout
	obj      objWriter
	cw       *countingWriter
	pw       *parquet.Writer
	cols     [4][]parquet.Value
	rows     int64
	rgRows   int64
	rgBytes  int64
	minSeq   int64
	maxSeq   int64
	finished bool
}

func newSegWriter(objs objects, name string, lay segLayout, codec compress.Codec) (*segWriter, error) {
	return newSegWriterPaged(objs, name, lay, codec, segPageBytes)
}

// loadPageBytes is the page size of an initial snapshot's runs: they are
// written at full speed and folded soon, so fewer, larger pages (less
// per-page work: headers, bounds, page index) pay more than cheap point
// lookups in them.
const loadPageBytes = 64 << 10

func newSegWriterPaged(objs objects, name string, lay segLayout, codec compress.Codec, pageBytes int) (*segWriter, error) {
	obj, err := objs.Create(name)
	if err != nil {
		return nil, err
	}
	cw := &countingWriter{w: obj}
	pw := parquet.NewWriter(cw, lay.schema,
		parquet.Compression(codec),
		parquet.PageBufferSize(pageBytes),
		parquet.ColumnIndexSizeLimit(func([]string) int { return skIndexSizeLimit }),
		parquet.BloomFilters(parquet.SplitBlockFilter(10, "sk")),
		// Only sk's page bounds are read (seekSorted). The writer keeps
		// every page's bounds until the file is closed, full values for
		// byte arrays: for payload that was a tenth of the data in memory.
		parquet.SkipPageBounds("payload"),
		parquet.SkipPageBounds("seq"),
		parquet.SkipPageBounds("op"),
		parquet.CreatedBy("exportd", "", ""),
	)
	w := &segWriter{lay: lay, obj: obj, cw: cw, pw: pw, minSeq: -1, maxSeq: -1}
	for i := range w.cols {
		w.cols[i] = make([]parquet.Value, 0, writeBatchRows)
	}
	return w, nil
}

// add appends an entry. sk and payload are not copied: they must stay
// unchanged until add returns for the following writeBatchRows entries or
// until finish (all callers write from buffers that outlive the writer).
func (w *segWriter) add(sk []byte, seq int64, op uint8, payload []byte) error {
	if w.minSeq < 0 || seq < w.minSeq {
		w.minSeq = seq
	}
	if seq > w.maxSeq {
		w.maxSeq = seq
	}
	l := w.lay
	w.cols[l.sk] = append(w.cols[l.sk], parquet.ByteArrayValue(sk).Level(0, 0, l.sk))
	w.cols[l.seq] = append(w.cols[l.seq], parquet.Int64Value(seq).Level(0, 0, l.seq))
	w.cols[l.op] = append(w.cols[l.op], parquet.Int32Value(int32(op)).Level(0, 0, l.op))
	w.cols[l.payload] = append(w.cols[l.payload], parquet.ByteArrayValue(payload).Level(0, 0, l.payload))
	w.rows++
	w.rgRows++
	w.rgBytes += int64(len(sk) + len(payload) + 16)
	if len(w.cols[0]) >= writeBatchRows {
		if err := w.flushCols(); err != nil {
			return err
		}
	}
	if w.rgRows >= segRowGroupRows || w.rgBytes >= segRowGroupBytes {
		if err := w.flushCols(); err != nil {
			return err
		}
		if err := w.pw.Flush(); err != nil {
			return fmt.Errorf("flush segment row group: %w", err)
		}
		w.rgRows, w.rgBytes = 0, 0
	}
	return nil
}

func (w *segWriter) flushCols() error {
	if len(w.cols[0]) == 0 {
		return nil
	}
	cws := w.pw.ColumnWriters()
	for i := range w.cols {
		if _, err := cws[i].WriteRowValues(w.cols[i]); err != nil {
			return fmt.Errorf("write segment column: %w", err)
		}
		clear(w.cols[i])
		w.cols[i] = w.cols[i][:0]
	}
	return nil
}

// finish writes the footer and commits the object durably.
func (w *segWriter) finish() (size int64, err error) {
	w.finished = true
	if err := w.flushCols(); err != nil {
		return 0, errors.Join(err, w.obj.Abort())
	}
	if err := w.pw.Close(); err != nil {
		return 0, errors.Join(fmt.Errorf("close segment: %w", err), w.obj.Abort())
	}
	if err := w.obj.Commit(); err != nil {
		return 0, errors.Join(err, w.obj.Abort())
	}
	return w.cw.n, nil
}

func (w *segWriter) abort() error {
	if w.finished {
		return nil
	}
	w.finished = true
	return w.obj.Abort()
}

// seekSorted returns the first row of the row group that may hold a value
// >= lo in the sorted byte-array column col, or -1 if none can.
func seekSorted(rg parquet.RowGroup, col int, lo []byte) (int64, error) {
	cc := rg.ColumnChunks()[col]
	if _, maxV, ok := chunkBounds(cc); ok && bytes.Compare(maxV, lo) < 0 {
		return -1, nil
	}
	if len(lo) == 0 {
		return 0, nil
	}
	ci, err := cc.ColumnIndex()
	if err != nil || ci == nil || ci.NumPages() == 0 {
		return 0, nil // no page index: scan the row group
	}
	oi, err := cc.OffsetIndex()
	if err != nil || oi == nil || oi.NumPages() != ci.NumPages() {
		return 0, nil
	}
	// Page maxima are upper bounds (truncated ones are rounded up) and
	// non-decreasing since the column is sorted.
	p := sort.Search(ci.NumPages(), func(i int) bool {
		return bytes.Compare(ci.MaxValue(i).ByteArray(), lo) >= 0
	})
	if p == ci.NumPages() {
		return -1, nil
	}
	return oi.FirstRowIndex(p), nil
}

// rowGroupMin returns the minimum of column col in the row group (ok=false if unknown).
func rowGroupMin(rg parquet.RowGroup, col int) ([]byte, bool) {
	minV, _, ok := chunkBounds(rg.ColumnChunks()[col])
	return minV, ok
}

// chunkBounds returns a byte-array column chunk's min and max statistics.
func chunkBounds(cc parquet.ColumnChunk) (minV, maxV []byte, ok bool) {
	b, isB := cc.(interface {
		Bounds() (min, max parquet.Value, ok bool)
	})
	if !isB {
		return nil, nil, false
	}
	lo, hi, ok := b.Bounds()
	if !ok {
		return nil, nil, false
	}
	return lo.ByteArray(), hi.ByteArray(), true
}

// sortedReader reads rows of a Parquet file sorted by a byte-array column,
// from the first row whose sort value is >= lo, while the sort value has
// the given prefix (prefix empty: to the end).
type sortedReader struct {
	f       *parquet.File
	col     int
	lo      []byte
	prefix  []byte
	rgi     int
	rows    parquet.Rows
	buf     []parquet.Row
	pos, n  int
	done    bool
	err     error
	started bool
}

func newSortedReader(f *parquet.File, col int, lo, prefix []byte, batch int) *sortedReader {
	return &sortedReader{f: f, col: col, lo: lo, prefix: prefix, buf: make([]parquet.Row, batch)}
}

// next returns the next row in range, or nil at the end (check err).
func (r *sortedReader) next() parquet.Row {
	for !r.done {
		if r.pos < r.n {
			row := r.buf[r.pos]
			r.pos++
			v := row[r.col].ByteArray()
			if !r.started {
				if bytes.Compare(v, r.lo) < 0 {
					continue
				}
				r.started = true
			}
			if len(r.prefix) > 0 && !bytes.HasPrefix(v, r.prefix) {
				r.finish()
				return nil
			}
			return row
		}
		if r.rows != nil {
			n, err := r.rows.ReadRows(r.buf)
			r.pos, r.n = 0, n
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.fail(fmt.Errorf("read rows: %w", err))
					return nil
				}
				cerr := r.rows.Close()
				r.rows = nil
				if cerr != nil {
					r.fail(fmt.Errorf("close rows: %w", cerr))
					return nil
				}
			}
			continue
		}
		if !r.openNextRowGroup() {
			return nil
		}
	}
	return nil
}

func (r *sortedReader) openNextRowGroup() bool {
	rgs := r.f.RowGroups()
	for r.rgi < len(rgs) {
		rg := rgs[r.rgi]
		r.rgi++
		if rg.NumRows() == 0 {
			continue
		}
		if len(r.prefix) > 0 && r.started {
			// Past the start: the range continues into this row group only if
			// it starts inside the prefix.
			if minV, ok := rowGroupMin(rg, r.col); ok && !bytes.HasPrefix(minV, r.prefix) && bytes.Compare(minV, r.prefix) > 0 {
				r.finish()
				return false
			}
		}
		var start int64
		if !r.started {
			if minV, ok := rowGroupMin(rg, r.col); ok && len(r.prefix) > 0 &&
				bytes.Compare(minV, r.prefix) > 0 && !bytes.HasPrefix(minV, r.prefix) {
				r.finish()
				return false
			}
			s, err := seekSorted(rg, r.col, r.lo)
			if err != nil {
				r.fail(err)
				return false
			}
			if s < 0 {
				continue
			}
			start = s
		}
		if start > 0 {
			loadOffsetIndexes(rg)
		}
		rows := rg.Rows()
		if start > 0 {
			if err := rows.SeekToRow(start); err != nil {
				r.fail(errors.Join(fmt.Errorf("seek row: %w", err), rows.Close()))
				return false
			}
		}
		r.rows = rows
		return true
	}
	r.finish()
	return false
}

func (r *sortedReader) fail(err error) {
	r.err = err
	r.finish()
}

func (r *sortedReader) finish() {
	r.done = true
	r.pos, r.n = 0, 0
	if r.rows != nil {
		if err := r.rows.Close(); err != nil && r.err == nil {
			r.err = fmt.Errorf("close rows: %w", err)
		}
		r.rows = nil
	}
}

func (r *sortedReader) close() error {
	r.finish()
	return r.err
}

// segIter iterates a segment's entries (see sortedReader for the range).
type segIter struct {
	lay     segLayout
	r       *sortedReader
	sk      []byte
	seq     int64
	op      uint8
	payload []byte
}

func newSegIter(f *parquet.File, lay segLayout, lo, prefix []byte, batch int) *segIter {
	return &segIter{lay: lay, r: newSortedReader(f, lay.sk, lo, prefix, batch)}
}

func (it *segIter) next() bool {
	row := it.r.next()
	if row == nil {
		return false
	}
	it.sk = row[it.lay.sk].ByteArray()
	it.seq = row[it.lay.seq].Int64()
	it.op = uint8(row[it.lay.op].Int32())
	it.payload = row[it.lay.payload].ByteArray()
	return true
}

func (it *segIter) err() error   { return it.r.err }
func (it *segIter) close() error { return it.r.close() }
