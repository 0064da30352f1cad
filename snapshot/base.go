package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"
)

// Base file: the rows of one (table, tenant), sorted by key. Columns:
// "_exportd_key" (required BYTE_ARRAY, the key's order-preserving encoding)
// and every table column under its PostgreSQL name as an optional
// BYTE_ARRAY String holding PostgreSQL's text output, so any Parquet reader
// (DuckDB, ...) can read it. Key/value metadata: exportd.table,
// exportd.tenant, exportd.columns (JSON list of {name, type_oid, since}).

const (
	baseKeyColumn     = "_exportd_key"
	metaTable         = "exportd.table"
	metaTenant        = "exportd.tenant"
	metaColumns       = "exportd.columns"
	baseRowGroupRows  = 128 << 10
	baseRowGroupBytes = 16 << 20
	basePageBytes     = 64 << 10
)

type baseWriter struct {
	obj      objWriter
	cw       *countingWriter
	pw       *parquet.Writer
	keyCol   int
	leaf     []int // table column i -> leaf column index
	cols     [][]parquet.Value
	arena    []byte
	rows     int64
	rgRows   int64
	rgBytes  int64
	finished bool
}

func baseSchema(g *genMeta) (*parquet.Schema, error) {
	grp := parquet.Group{baseKeyColumn: parquet.Leaf(parquet.ByteArrayType)}
	for _, c := range g.Cols {
		if c.Name == baseKeyColumn {
			return nil, fmt.Errorf("column name %s is reserved", baseKeyColumn)
		}
		grp[c.Name] = parquet.Optional(parquet.String())
	}
	return parquet.NewSchema("exportd_base", grp), nil
}

func newBaseWriter(objs objects, name string, table string, tenant string, g *genMeta, codec compress.Codec) (*baseWriter, error) {
	schema, err := baseSchema(g)
	if err != nil {
		return nil, err
	}
	obj, err := objs.Create(name)
	if err != nil {
		return nil, err
	}
	cw := &countingWriter{w: obj}
	opts := []parquet.WriterOption{
		schema,
		parquet.Compression(codec),
		parquet.PageBufferSize(basePageBytes),
		parquet.ColumnIndexSizeLimit(func([]string) int { return skIndexSizeLimit }),
		parquet.CreatedBy("exportd", "", ""),
		parquet.KeyValueMetadata(metaTable, table),
		parquet.KeyValueMetadata(metaTenant, tenant),
		parquet.KeyValueMetadata(metaColumns, string(mustJSON(g.Cols))),
	}
	// Only the key's page bounds are read (seekSorted); the writer would
	// keep every page's bounds of every column, full values, until Close.
	for _, c := range g.Cols {
		opts = append(opts, parquet.SkipPageBounds(c.Name))
	}
	pw := parquet.NewWriter(cw, opts...)
	w := &baseWriter{obj: obj, cw: cw, pw: pw, leaf: make([]int, len(g.Cols))}
	kc, _ := schema.Lookup(baseKeyColumn)
	w.keyCol = kc.ColumnIndex
	for i, c := range g.Cols {
		lc, _ := schema.Lookup(c.Name)
		w.leaf[i] = lc.ColumnIndex
	}
	w.cols = make([][]parquet.Value, len(g.Cols)+1)
	for i := range w.cols {
		w.cols[i] = make([]parquet.Value, 0, writeBatchRows)
	}
	return w, nil
}

// add appends a row; vals are in the generation's column order.
func (w *baseWriter) add(key []byte, vals [][]byte) error {
	o := len(w.arena)
	w.arena = append(w.arena, key...)
	w.cols[w.keyCol] = append(w.cols[w.keyCol], parquet.ByteArrayValue(w.arena[o:len(w.arena)]).Level(0, 0, w.keyCol))
	n := len(key)
	for i, v := range vals {
		li := w.leaf[i]
		if v == nil {
			w.cols[li] = append(w.cols[li], parquet.NullValue().Level(0, 0, li))
			continue
		}
		o := len(w.arena)
		w.arena = append(w.arena, v...)
		w.cols[li] = append(w.cols[li], parquet.ByteArrayValue(w.arena[o:len(w.arena):len(w.arena)]).Level(0, 1, li))
		n += len(v)
	}
	w.rows++
	w.rgRows++
	w.rgBytes += int64(n)
	if len(w.cols[0]) >= writeBatchRows {
		if err := w.flushCols(); err != nil {
			return err
		}
	}
	if w.rgRows >= baseRowGroupRows || w.rgBytes >= baseRowGroupBytes {
		if err := w.flushCols(); err != nil {
			return err
		}
		if err := w.pw.Flush(); err != nil {
			return fmt.Errorf("flush base row group: %w", err)
		}
		w.rgRows, w.rgBytes = 0, 0
	}
	return nil
}

func (w *baseWriter) flushCols() error {
	if len(w.cols[0]) == 0 {
		return nil
	}
	cws := w.pw.ColumnWriters()
	for i := range w.cols {
		if _, err := cws[i].WriteRowValues(w.cols[i]); err != nil {
			return fmt.Errorf("write base column: %w", err)
		}
		clear(w.cols[i])
		w.cols[i] = w.cols[i][:0]
	}
	w.arena = w.arena[:0]
	return nil
}

func (w *baseWriter) finish() (int64, error) {
	w.finished = true
	if err := w.flushCols(); err != nil {
		return 0, errors.Join(err, w.obj.Abort())
	}
	if err := w.pw.Close(); err != nil {
		return 0, errors.Join(fmt.Errorf("close base file: %w", err), w.obj.Abort())
	}
	if err := w.obj.Commit(); err != nil {
		return 0, errors.Join(err, w.obj.Abort())
	}
	return w.cw.n, nil
}

func (w *baseWriter) abort() error {
	if w.finished {
		return nil
	}
	w.finished = true
	return w.obj.Abort()
}

// baseLayout describes a base file's columns.
type baseLayout struct {
	keyCol int
	cols   []colMeta
	leaf   map[colIdent]int // column identity -> leaf column index
}

func readBaseLayout(f *parquet.File) (*baseLayout, error) {
	kc, ok := f.Schema().Lookup(baseKeyColumn)
	if !ok {
		return nil, fmt.Errorf("base file lacks column %s", baseKeyColumn)
	}
	raw, ok := f.Lookup(metaColumns)
	if !ok {
		return nil, fmt.Errorf("base file lacks metadata %s", metaColumns)
	}
	l := &baseLayout{keyCol: kc.ColumnIndex, leaf: make(map[colIdent]int)}
	if err := json.Unmarshal([]byte(raw), &l.cols); err != nil {
		return nil, fmt.Errorf("decode base file columns: %w", err)
	}
	for _, c := range l.cols {
		lc, ok := f.Schema().Lookup(c.Name)
		if !ok {
			return nil, fmt.Errorf("base file lacks column %s", c.Name)
		}
		l.leaf[colIdent{c.Name, c.Since}] = lc.ColumnIndex
	}
	return l, nil
}

// mapTo returns, for each column of g, its leaf index in the base file or -1.
func (l *baseLayout) mapTo(g *genMeta) []int {
	m := make([]int, len(g.Cols))
	for i, c := range g.Cols {
		j, ok := l.leaf[colIdent{c.Name, c.Since}]
		if !ok {
			j = -1
		}
		m[i] = j
	}
	return m
}

// baseIter iterates a base file's rows in key order.
type baseIter struct {
	r   *sortedReader
	lay *baseLayout
	m   []int
	row parquet.Row
	key []byte
}

func newBaseIter(f *parquet.File, lay *baseLayout, target *genMeta, lo, prefix []byte, batch int) *baseIter {
	return &baseIter{r: newSortedReader(f, lay.keyCol, lo, prefix, batch), lay: lay, m: lay.mapTo(target)}
}

func (it *baseIter) next() bool {
	it.row = it.r.next()
	if it.row == nil {
		return false
	}
	it.key = it.row[it.lay.keyCol].ByteArray()
	return true
}

// values appends the current row's values in the target generation's order.
func (it *baseIter) values(dst [][]byte) [][]byte {
	for _, j := range it.m {
		if j < 0 {
			dst = append(dst, nil)
			continue
		}
		v := it.row[j]
		if v.IsNull() {
			dst = append(dst, nil)
			continue
		}
		b := v.ByteArray()
		if b == nil {
			b = []byte{}
		}
		dst = append(dst, b)
	}
	return dst
}

func (it *baseIter) err() error   { return it.r.err }
func (it *baseIter) close() error { return it.r.close() }
