package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Version is one consistent, immutable version of all staged tables of all
// tenants. Files it uses are kept until it is closed.
type Version struct {
	s    *Store
	dv   *dataVer
	lsn  LSN
	once sync.Once
}

// Pin returns the current version. Close it when done.
func (s *Store) Pin(ctx context.Context) (*Version, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	dv := s.cur
	s.refLocked(dv)
	s.pinned++
	s.m.pinnedVersions.Set(float64(s.pinned))
	return &Version{s: s, dv: dv, lsn: s.lsn}, nil
}

// LSN returns the position the version reflects.
func (v *Version) LSN() LSN { return v.lsn }

// Tables returns the schemas of all tables, sorted by name.
func (v *Version) Tables() []TableSchema {
	out := make([]TableSchema, 0, len(v.dv.tables))
	for _, t := range v.dv.tables {
		out = append(out, t.cur().schema())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Table returns one table's schema.
func (v *Version) Table(name string) (TableSchema, bool) {
	t, ok := v.dv.byName[name]
	if !ok {
		return TableSchema{}, false
	}
	return t.cur().schema(), true
}

// Close releases the version.
func (v *Version) Close() error {
	v.once.Do(func() {
		s := v.s
		s.mu.Lock()
		s.pinned--
		s.m.pinnedVersions.Set(float64(s.pinned))
		del := s.unrefLocked(v.dv)
		s.mu.Unlock()
		s.removeFiles(del)
	})
	return nil
}

// Scan returns the rows of one tenant's table in primary-key order, in the
// table's schema of this version. tenant is the tenant id's text.
func (v *Version) Scan(ctx context.Context, table, tenant string) (*Rows, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, ok := v.dv.byName[table]
	if !ok {
		return nil, fmt.Errorf("scan: unknown table %s", table)
	}
	g := t.cur()
	tt := binary.BigEndian.AppendUint32(nil, t.ID)
	tt, err := appendTenant(tt, g.tenantKind, []byte(tenant))
	if err != nil {
		return nil, fmt.Errorf("scan %s: tenant: %w", table, err)
	}
	s := v.s
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.refLocked(v.dv)
	s.mu.Unlock()
	r := &Rows{ctx: ctx, s: s, dv: v.dv, t: t, g: g, maps: make(map[int][]int)}
	if b := v.dv.bases[string(tt)]; b != nil && v.dv.baseAlive(b) {
		cf, err := s.files.acquire(b.name())
		if err != nil {
			return nil, errors.Join(fmt.Errorf("scan %s: %w", table, err), r.Close())
		}
		r.held = append(r.held, cf)
		lay, err := cf.baseLayout()
		if err != nil {
			return nil, errors.Join(fmt.Errorf("scan %s: %w", table, err), r.Close())
		}
		r.srcs = append(r.srcs, &baseSrc{it: newBaseIter(cf.f, lay, g, nil, nil, readBatchRows)})
	}
	for _, sg := range v.dv.segs {
		if sg.MaxSeq < t.TruncSeq {
			continue
		}
		cf, err := s.files.acquire(sg.name())
		if err != nil {
			return nil, errors.Join(fmt.Errorf("scan %s: %w", table, err), r.Close())
		}
		r.held = append(r.held, cf)
		r.srcs = append(r.srcs, &segSrc{it: newSegIter(cf.f, s.lay, tt, tt, readBatchRows), skip: len(tt)})
	}
	r.h.init(r.srcs)
	if r.h.err != nil {
		return nil, errors.Join(fmt.Errorf("scan %s: %w", table, r.h.err), r.Close())
	}
	return r, nil
}

// Rows iterates the rows of a Scan.
type Rows struct {
	ctx    context.Context
	s      *Store
	dv     *dataVer
	t      *tableMeta
	g      *genMeta
	srcs   []mergeSrc
	held   []*cachedFile
	h      mergeHeap
	row    Row
	raw    [][]byte
	maps   map[int][]int
	n      int
	err    error
	closed bool
}

// Next advances to the next row.
func (r *Rows) Next() bool {
	if r.closed || r.err != nil {
		return false
	}
	for {
		r.n++
		if r.n%1024 == 0 {
			if err := r.ctx.Err(); err != nil {
				r.err = err
				return false
			}
		}
		win, ok := r.h.pop()
		if !ok {
			r.err = r.h.err
			return false
		}
		if win.seq() >= 0 && (win.seq() < r.t.TruncSeq || win.op() != opUpsert) {
			r.h.advance()
			if r.h.err != nil {
				r.err = r.h.err
				return false
			}
			continue
		}
		var err error
		r.row, err = r.values(win, r.row[:0])
		r.h.advance()
		if err == nil {
			err = r.h.err
		}
		if err != nil {
			r.err = err
			return false
		}
		return true
	}
}

// values appends the winner's values in the version's schema.
func (r *Rows) values(src mergeSrc, dst Row) (Row, error) {
	switch x := src.(type) {
	case *baseSrc:
		return x.it.values(dst), nil
	case *segSrc:
		var gen int
		var err error
		gen, r.raw, err = decodePayload(r.raw[:0], x.it.payload)
		if err != nil {
			return dst, err
		}
		if gen == len(r.t.Gens)-1 {
			return append(dst, r.raw...), nil
		}
		m, ok := r.maps[gen]
		if !ok {
			if gen >= len(r.t.Gens) {
				return dst, fmt.Errorf("payload of unknown schema generation %d", gen)
			}
			m = colMap(&r.t.Gens[gen], r.g)
			r.maps[gen] = m
		}
		for _, j := range m {
			if j >= 0 && j < len(r.raw) {
				dst = append(dst, r.raw[j])
			} else {
				dst = append(dst, nil)
			}
		}
		return dst, nil
	}
	return dst, errors.New("unknown merge source")
}

// Row returns the current row; it is valid until the next call to Next.
func (r *Rows) Row() Row { return r.row }

// Err returns the error that ended the iteration, if any.
func (r *Rows) Err() error { return r.err }

// Close releases the rows' files.
func (r *Rows) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	var errs []error
	for _, src := range r.srcs {
		if err := src.close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, cf := range r.held {
		r.s.files.release(cf)
	}
	r.held = nil
	r.s.unref(r.dv)
	return errors.Join(errs...)
}

// mergeSrc is one sorted input of a k-way merge: entries by key ascending,
// at most one per key (segments are deduplicated when written).
type mergeSrc interface {
	next() bool
	key() []byte
	seq() int64 // -1 for base rows
	op() uint8
	err() error
	close() error
}

var (
	_ mergeSrc = (*segSrc)(nil)
	_ mergeSrc = (*baseSrc)(nil)
)

type segSrc struct {
	it   *segIter
	skip int // bytes of sk before the key (the scanned (table, tenant) prefix)
}

func (s *segSrc) next() bool   { return s.it.next() }
func (s *segSrc) key() []byte  { return s.it.sk[s.skip:] }
func (s *segSrc) seq() int64   { return s.it.seq }
func (s *segSrc) op() uint8    { return s.it.op }
func (s *segSrc) err() error   { return s.it.err() }
func (s *segSrc) close() error { return s.it.close() }

type baseSrc struct{ it *baseIter }

func (s *baseSrc) next() bool   { return s.it.next() }
func (s *baseSrc) key() []byte  { return s.it.key }
func (s *baseSrc) seq() int64   { return -1 }
func (s *baseSrc) op() uint8    { return opUpsert }
func (s *baseSrc) err() error   { return s.it.err() }
func (s *baseSrc) close() error { return s.it.close() }

// mergeHeap merges sources by (key ascending, seq descending). pop returns
// the newest entry of the smallest key; advance then moves every source
// positioned on that key.
type mergeHeap struct {
	items []mergeSrc
	err   error
	top   []byte
	popd  bool
}

func (h *mergeHeap) init(srcs []mergeSrc) {
	h.items = h.items[:0]
	for _, s := range srcs {
		if s.next() {
			h.items = append(h.items, s)
		} else if err := s.err(); err != nil {
			h.err = err
			return
		}
	}
	for i := len(h.items)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *mergeHeap) less(i, j int) bool {
	a, b := h.items[i], h.items[j]
	if c := bytes.Compare(a.key(), b.key()); c != 0 {
		return c < 0
	}
	return a.seq() > b.seq()
}

func (h *mergeHeap) down(i int) {
	n := len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h.items[i], h.items[m] = h.items[m], h.items[i]
		i = m
	}
}

// pop returns the winning source for the smallest key without moving it.
func (h *mergeHeap) pop() (mergeSrc, bool) {
	if h.err != nil || len(h.items) == 0 {
		return nil, false
	}
	h.top = append(h.top[:0], h.items[0].key()...)
	return h.items[0], true
}

// advance moves every source positioned on the last popped key.
func (h *mergeHeap) advance() {
	for len(h.items) > 0 && bytes.Equal(h.items[0].key(), h.top) {
		s := h.items[0]
		if s.next() {
			h.down(0)
			continue
		}
		if err := s.err(); err != nil {
			h.err = err
			return
		}
		last := len(h.items) - 1
		h.items[0] = h.items[last]
		h.items[last] = nil
		h.items = h.items[:last]
		h.down(0)
	}
}

// segGet returns the entry for sk in a segment, if any. Only the sk and
// payload pages are read (a delete has an empty payload); seq is read only
// when the segment has entries older than truncSeq (else it is reported as
// the segment's MaxSeq, which is all the caller compares).
func (s *Store) segGet(sg *segMeta, sk []byte, truncSeq int64) (ok bool, seq int64, op uint8, payload []byte, err error) {
	name := sg.name()
	cf, err := s.files.acquire(name)
	if err != nil {
		return false, 0, 0, nil, err
	}
	defer s.files.release(cf)
	rg, row, found, err := cf.pointLookup(s.lay.sk, sk)
	if err != nil || !found {
		return false, 0, 0, nil, wrapRead(name, err)
	}
	seq = sg.MaxSeq
	if sg.MinSeq < truncSeq {
		v, err := readCell(rg, s.lay.seq, row)
		if err != nil {
			return false, 0, 0, nil, wrapRead(name, err)
		}
		seq = v.Int64()
	}
	v, err := readCell(rg, s.lay.payload, row)
	if err != nil {
		return false, 0, 0, nil, wrapRead(name, err)
	}
	payload, op = v.ByteArray(), opUpsert
	if len(payload) == 0 {
		op = opDelete
	}
	return true, seq, op, payload, nil
}

func wrapRead(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("read %s: %w", name, err)
}

// baseGet returns the row with key in a base file, in generation g's
// columns; only the columns marked in need are read (nil need: all).
func (s *Store) baseGet(name string, key []byte, g *genMeta, need []bool) ([][]byte, bool, error) {
	cf, err := s.files.acquire(name)
	if err != nil {
		return nil, false, err
	}
	defer s.files.release(cf)
	lay, err := cf.baseLayout()
	if err != nil {
		return nil, false, err
	}
	rg, row, found, err := cf.pointLookup(lay.keyCol, key)
	if err != nil || !found {
		return nil, false, wrapRead(name, err)
	}
	vals := make([][]byte, len(g.Cols))
	for i, j := range lay.mapTo(g) {
		if j < 0 || (need != nil && !need[i]) {
			continue
		}
		v, err := readCell(rg, j, row)
		if err != nil {
			return nil, false, wrapRead(name, err)
		}
		if !v.IsNull() {
			vals[i] = append([]byte{}, v.ByteArray()...)
		}
	}
	return vals, true, nil
}

// EstimateRows returns about how many rows the tenant has in table: the
// rows of its base file, without the changes of newer segments. It is meant
// for progress reports.
func (v *Version) EstimateRows(table, tenant string) int64 {
	t, ok := v.dv.byName[table]
	if !ok {
		return 0
	}
	tt := binary.BigEndian.AppendUint32(nil, t.ID)
	tt, err := appendTenant(tt, t.cur().tenantKind, []byte(tenant))
	if err != nil {
		return 0
	}
	if b := v.dv.bases[string(tt)]; b != nil && v.dv.baseAlive(b) {
		return b.Rows
	}
	return 0
}
