package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

const (
	arenaChunk = 1 << 20
	// memEntOverhead is what a buffered change costs beyond its data: its
	// entry (40), hash map slot (~48) and sort reference at spill time (48).
	memEntOverhead = 136
	idxBatchBytes  = 4 << 20
	entChunkBits   = 15 // entries are stored in chunks of 32768
)

// Batch is a set of whole transactions applied atomically by Commit. It is
// used by one goroutine. Changes are buffered in memory up to
// Options.MemoryLimit, then spilled to disk as sorted runs (segment files not
// yet in the manifest) and, for the key-to-tenant index, to pebble with an
// undo log.
type Batch struct {
	s   *Store
	ver *dataVer // the committed version the batch reads (pinned)

	tables  map[uint32]*tableMeta // tables changed or created by the batch
	byName  map[string]*tableMeta
	dropIdx map[uint32]bool // tables whose older index generations are deleted at commit
	seq     int64

	arena    *arena
	ents     entries
	byHash   map[uint64]int32
	memBytes int64
	refs     []sortRef

	runs []*segMeta

	idx      map[string]*idxEnt
	idxBytes int64
	// pendingIdx: index updates were spilled to "p/".
	pendingIdx bool

	changes int
	bytes   int64
	done    bool

	// scratch buffers
	sk, lk, tenant, key, oldTenant, oldKey, pl, ik []byte
	vals                                           [][]byte
}

// entries stores buffered changes in fixed chunks (no slack, no copying on growth).
type entries struct {
	chunks [][]memEnt
	n      int
}

func (es *entries) add(e memEnt) int32 {
	c := es.n >> entChunkBits
	if c == len(es.chunks) {
		es.chunks = append(es.chunks, make([]memEnt, 0, 1<<entChunkBits))
	}
	es.chunks[c] = append(es.chunks[c], e)
	es.n++
	return int32(es.n - 1)
}

func (es *entries) at(i int32) *memEnt {
	return &es.chunks[i>>entChunkBits][i&(1<<entChunkBits-1)]
}

func (es *entries) reset() {
	for i := range es.chunks {
		es.chunks[i] = es.chunks[i][:0]
	}
	es.n = 0
}

type memEnt struct {
	sk, pl span
	seq    int64
	op     uint8
	prev   int32 // previous entry with the same sk hash, -1 if none
}

// Begin opens a Batch. Only one Batch or Load can be open.
func (s *Store) Begin() (*Batch, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.batch != nil || s.load != nil {
		return nil, fmt.Errorf("begin batch: %w", ErrBusy)
	}
	if !s.isWriterLocked() {
		return nil, fmt.Errorf("begin batch: %w", ErrNotWriter)
	}
	if s.indexBroken != nil {
		return nil, fmt.Errorf("begin batch: reopen the store to repair the index: %w", s.indexBroken)
	}
	b := &Batch{
		s:       s,
		ver:     s.cur,
		tables:  make(map[uint32]*tableMeta),
		byName:  make(map[string]*tableMeta),
		dropIdx: make(map[uint32]bool),
		seq:     s.nextSeq,
		arena:   newArena(arenaChunk),
		byHash:  make(map[uint64]int32),
		idx:     make(map[string]*idxEnt),
	}
	s.refLocked(b.ver)
	s.batch = b
	return b, nil
}

func (b *Batch) table(name string) (*tableMeta, error) {
	if b.done {
		return nil, errors.New("batch is finished")
	}
	if t, ok := b.byName[name]; ok {
		return t, nil
	}
	if t, ok := b.ver.byName[name]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("unknown table %s", name)
}

func (b *Batch) tableByID(id uint32) *tableMeta {
	if t, ok := b.tables[id]; ok {
		return t
	}
	return b.ver.tables[id]
}

func schemaEqual(g *genMeta, ts TableSchema) bool {
	if len(g.Cols) != len(ts.Columns) || g.TenantCol != ts.TenantColumn || !slices.Equal(g.KeyCols, ts.KeyColumns) {
		return false
	}
	for i, c := range ts.Columns {
		if g.Cols[i].Name != c.Name || g.Cols[i].TypeOID != c.TypeOID {
			return false
		}
	}
	return true
}

// SetSchema declares a table's columns as of now: a new table, or columns
// added or dropped (matched by name). An unchanged schema is a no-op. The
// primary key and tenant column must keep their names and types; otherwise
// the error wraps ErrInconsistent.
func (b *Batch) SetSchema(ts TableSchema) error {
	if b.done {
		return errors.New("set schema: batch is finished")
	}
	existing := b.byName[ts.Name]
	if existing == nil {
		existing = b.ver.byName[ts.Name]
	}
	var t *tableMeta
	if existing == nil {
		g, err := newGen(ts, nil, b.seq)
		if err != nil {
			return fmt.Errorf("set schema: %w", err)
		}
		b.s.mu.Lock()
		id := b.s.nextTable
		b.s.nextTable++
		b.s.mu.Unlock()
		t = &tableMeta{ID: id, Name: ts.Name, Gens: []genMeta{g}}
	} else {
		prev := existing.cur()
		if schemaEqual(prev, ts) {
			return nil
		}
		g, err := newGen(ts, prev, b.seq)
		if err != nil {
			return fmt.Errorf("set schema: %w", err)
		}
		if !sameKey(prev, &g) {
			return fmt.Errorf("set schema of %s: primary key or tenant column changed: %w", ts.Name, ErrInconsistent)
		}
		t = existing.clone()
		t.Gens = append(t.Gens, g)
	}
	b.seq++
	b.tables[t.ID] = t
	b.byName[t.Name] = t
	return nil
}

func encodeKey(dst []byte, g *genMeta, row Row) ([]byte, error) {
	var err error
	for i, c := range g.KeyCols {
		v := row[c]
		if v == nil {
			return dst, fmt.Errorf("key column %s is NULL", g.Cols[c].Name)
		}
		if dst, err = appendValue(dst, g.keyKinds[i], v); err != nil {
			return dst, fmt.Errorf("key column %s: %w", g.Cols[c].Name, err)
		}
	}
	return dst, nil
}

func checkRow(g *genMeta, row Row, what string) error {
	if len(row) != len(g.Cols) {
		return fmt.Errorf("%s has %d values, the table has %d columns", what, len(row), len(g.Cols))
	}
	return nil
}

// Insert upserts row into its tenant.
func (b *Batch) Insert(table string, row Row) error {
	if err := b.insert(table, row); err != nil {
		return fmt.Errorf("insert into %s: %w", table, err)
	}
	return b.maybeSpill()
}

func (b *Batch) insert(table string, row Row) error {
	t, err := b.table(table)
	if err != nil {
		return err
	}
	g := t.cur()
	if err := checkRow(g, row, "row"); err != nil {
		return err
	}
	if b.tenant, err = appendTenant(b.tenant[:0], g.tenantKind, row[g.TenantCol]); err != nil {
		return fmt.Errorf("tenant column: %w", err)
	}
	if b.key, err = encodeKey(b.key[:0], g, row); err != nil {
		return err
	}
	b.pl = appendPayload(b.pl[:0], len(t.Gens)-1, row)
	if !g.tenantInKey {
		// An INSERT's key is not in use (PostgreSQL enforces the primary
		// key), so the index is written without being read.
		b.idxSet(b.idxEntry(t, b.key), b.tenant)
	}
	b.put(t, b.tenant, b.key, opUpsert, b.pl)
	b.changes++
	return nil
}

// Update applies an UPDATE; see the package documentation for old and unchanged.
func (b *Batch) Update(table string, old Row, row Row, unchanged []bool) error {
	if err := b.update(table, old, row, unchanged); err != nil {
		return fmt.Errorf("update %s: %w", table, err)
	}
	return b.maybeSpill()
}

func (b *Batch) update(table string, old Row, row Row, unchanged []bool) error {
	t, err := b.table(table)
	if err != nil {
		return err
	}
	g := t.cur()
	if err := checkRow(g, row, "new row"); err != nil {
		return err
	}
	if old != nil {
		if err := checkRow(g, old, "old row"); err != nil {
			return err
		}
	}
	if unchanged != nil && len(unchanged) != len(g.Cols) {
		return fmt.Errorf("unchanged has %d markers, the table has %d columns", len(unchanged), len(g.Cols))
	}
	if b.tenant, err = appendTenant(b.tenant[:0], g.tenantKind, row[g.TenantCol]); err != nil {
		return fmt.Errorf("tenant column: %w", err)
	}
	if b.key, err = encodeKey(b.key[:0], g, row); err != nil {
		return err
	}
	keySrc := row
	if old != nil {
		keySrc = old
	}
	if b.oldKey, err = encodeKey(b.oldKey[:0], g, keySrc); err != nil {
		return fmt.Errorf("old key: %w", err)
	}

	// The row's previous tenant.
	known := false
	var ie *idxEnt
	switch {
	case old != nil && old[g.TenantCol] != nil:
		if b.oldTenant, err = appendTenant(b.oldTenant[:0], g.tenantKind, old[g.TenantCol]); err != nil {
			return fmt.Errorf("old tenant: %w", err)
		}
		known = true
	case g.tenantInKey:
		if b.oldTenant, err = appendTenant(b.oldTenant[:0], g.tenantKind, keySrc[g.TenantCol]); err != nil {
			return fmt.Errorf("old tenant: %w", err)
		}
		known = true
	default:
		if ie, err = b.idxGet(t, b.oldKey); err != nil {
			return err
		}
		if ie.present {
			b.oldTenant = append(b.oldTenant[:0], ie.cur...)
			known = true
		}
	}

	vals := row
	if slices.Contains(unchanged, true) {
		if !known {
			return fmt.Errorf("unchanged values but the row's tenant is unknown: %w", ErrInconsistent)
		}
		prev, found, err := b.lookupRow(t, b.oldTenant, b.oldKey, unchanged)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("unchanged values but no previous row: %w", ErrInconsistent)
		}
		b.vals = append(b.vals[:0], row...)
		for i, u := range unchanged {
			if u {
				b.vals[i] = prev[i]
			}
		}
		vals = b.vals
	}
	// Encode before any put: prev may point into the arena.
	b.pl = appendPayload(b.pl[:0], len(t.Gens)-1, vals)

	keyChanged := !bytes.Equal(b.oldKey, b.key)
	if known && (keyChanged || !bytes.Equal(b.oldTenant, b.tenant)) {
		b.put(t, b.oldTenant, b.oldKey, opDelete, nil)
	}
	if !g.tenantInKey {
		if keyChanged {
			if ie == nil {
				ie = b.idxEntry(t, b.oldKey)
			}
			b.idxDelete(ie)
		}
		// Blind write: a changed key is not in use (PostgreSQL enforces the
		// primary key), an unchanged one maps to this row.
		b.idxSet(b.idxEntry(t, b.key), b.tenant)
	}
	b.put(t, b.tenant, b.key, opUpsert, b.pl)
	b.changes++
	return nil
}

// Delete removes the row whose key (and maybe tenant) old holds. A row that
// is not staged is ignored.
func (b *Batch) Delete(table string, old Row) error {
	if err := b.delete(table, old); err != nil {
		return fmt.Errorf("delete from %s: %w", table, err)
	}
	return b.maybeSpill()
}

func (b *Batch) delete(table string, old Row) error {
	t, err := b.table(table)
	if err != nil {
		return err
	}
	g := t.cur()
	if err := checkRow(g, old, "old row"); err != nil {
		return err
	}
	if b.oldKey, err = encodeKey(b.oldKey[:0], g, old); err != nil {
		return err
	}
	b.changes++
	switch {
	case old[g.TenantCol] != nil:
		if b.oldTenant, err = appendTenant(b.oldTenant[:0], g.tenantKind, old[g.TenantCol]); err != nil {
			return fmt.Errorf("tenant column: %w", err)
		}
		if !g.tenantInKey {
			b.idxDelete(b.idxEntry(t, b.oldKey))
		}
	case g.tenantInKey:
		return errors.New("tenant key column is NULL")
	default:
		ie, err := b.idxGet(t, b.oldKey)
		if err != nil {
			return err
		}
		if !ie.present {
			return nil
		}
		b.oldTenant = append(b.oldTenant[:0], ie.cur...)
		b.idxDelete(ie)
	}
	b.put(t, b.oldTenant, b.oldKey, opDelete, nil)
	return nil
}

// Truncate removes every row of the table (all tenants).
func (b *Batch) Truncate(table string) error {
	t, err := b.table(table)
	if err != nil {
		return fmt.Errorf("truncate %s: %w", table, err)
	}
	t = t.clone()
	t.TruncSeq = b.seq
	b.seq++
	t.IdxGen++
	b.dropIdx[t.ID] = true
	// Pending index entries of older generations are dead.
	p := indexTablePrefix(t.ID)
	for k, e := range b.idx {
		if len(k) >= len(p) && k[:len(p)] == string(p) {
			b.idxBytes -= idxEntBytes(k, e)
			delete(b.idx, k)
		}
	}
	b.tables[t.ID] = t
	b.byName[t.Name] = t
	b.changes++
	return nil
}

// Pending returns the number of changes and bytes of row data since Begin.
func (b *Batch) Pending() (changes int, bytes int64) { return b.changes, b.bytes }

func (b *Batch) put(t *tableMeta, tenant, key []byte, op uint8, payload []byte) {
	b.sk = binary.BigEndian.AppendUint32(b.sk[:0], t.ID)
	b.sk = append(b.sk, tenant...)
	b.sk = append(b.sk, key...)
	e := memEnt{sk: b.arena.add(b.sk), seq: b.seq, op: op, prev: -1}
	if op == opUpsert {
		e.pl = b.arena.add(payload)
	}
	b.seq++
	h := maphash.Bytes(b.s.seed, b.sk)
	if p, ok := b.byHash[h]; ok {
		e.prev = p
	}
	b.byHash[h] = b.ents.add(e)
	n := int64(len(b.sk) + len(payload))
	b.memBytes += n + memEntOverhead
	b.bytes += n
}

// memFind returns the newest buffered entry for sk, or -1.
func (b *Batch) memFind(sk []byte) int32 {
	i, ok := b.byHash[maphash.Bytes(b.s.seed, sk)]
	if !ok {
		return -1
	}
	for i >= 0 {
		e := b.ents.at(i)
		if bytes.Equal(b.arena.get(e.sk), sk) {
			return i
		}
		i = e.prev
	}
	return -1
}

// idxGet returns the batch's view of an index key, reading the pending and
// committed index if the batch has not seen the key yet.
func (b *Batch) idxGet(t *tableMeta, key []byte) (*idxEnt, error) {
	b.ik = append(appendIndexPrefix(b.ik[:0], t.ID, t.IdxGen), key...)
	if e, ok := b.idx[string(b.ik)]; ok {
		return e, nil
	}
	e := &idxEnt{}
	found := false
	if b.pendingIdx {
		v, closer, err := b.s.db.Get(pendingKey(b.ik))
		switch {
		case err == nil:
			found = true
			if !(len(v) == 1 && v[0] == pendingDeleted) {
				e.cur, e.present = slices.Clone(v), true
			}
			_ = closer.Close() // releases memory only
		case !errors.Is(err, pebble.ErrNotFound):
			return nil, fmt.Errorf("read pending key-to-tenant index: %w", err)
		}
	}
	if !found {
		v, closer, err := b.s.db.Get(b.ik)
		switch {
		case err == nil:
			e.cur, e.present = slices.Clone(v), true
			_ = closer.Close() // releases memory only
		case !errors.Is(err, pebble.ErrNotFound):
			return nil, fmt.Errorf("read key-to-tenant index: %w", err)
		}
	}
	k := string(b.ik)
	b.idx[k] = e
	b.idxBytes += idxEntBytes(k, e)
	return e, nil
}

// idxEntry returns the batch's entry for an index key without reading the
// index (for blind writes).
func (b *Batch) idxEntry(t *tableMeta, key []byte) *idxEnt {
	b.ik = append(appendIndexPrefix(b.ik[:0], t.ID, t.IdxGen), key...)
	if e, ok := b.idx[string(b.ik)]; ok {
		return e
	}
	e := &idxEnt{}
	k := string(b.ik)
	b.idx[k] = e
	b.idxBytes += idxEntBytes(k, e)
	return e
}

func (b *Batch) idxSet(e *idxEnt, tenant []byte) {
	if e.present && bytes.Equal(e.cur, tenant) {
		return
	}
	e.cur = slices.Clone(tenant)
	e.present = true
	e.dirty = true
	b.idxBytes += int64(len(tenant))
}

func (b *Batch) idxDelete(e *idxEnt) {
	b.idxBytes -= int64(len(e.cur))
	e.cur, e.present, e.dirty = nil, false, true
}

// lookupRow returns the current values (in the table's current schema) of
// the row (tenant, key), looking at the batch's own changes first. Only the
// columns marked in need are guaranteed to be filled.
func (b *Batch) lookupRow(t *tableMeta, tenant, key []byte, need []bool) ([][]byte, bool, error) {
	b.lk = binary.BigEndian.AppendUint32(b.lk[:0], t.ID)
	b.lk = append(b.lk, tenant...)
	b.lk = append(b.lk, key...)
	sk := b.lk
	decide := func(seq int64, op uint8, payload []byte) ([][]byte, bool, error) {
		if seq < t.TruncSeq || op != opUpsert {
			return nil, false, nil
		}
		vals, err := valuesIn(t, payload)
		return vals, err == nil, err
	}
	if i := b.memFind(sk); i >= 0 {
		e := b.ents.at(i)
		return decide(e.seq, e.op, b.arena.get(e.pl))
	}
	for i := len(b.runs) - 1; i >= 0; i-- {
		ok, seq, op, payload, err := b.s.segGet(b.runs[i], sk, t.TruncSeq)
		if err != nil {
			return nil, false, err
		}
		if ok {
			return decide(seq, op, payload)
		}
	}
	for i := len(b.ver.segs) - 1; i >= 0; i-- {
		sg := b.ver.segs[i]
		if sg.MaxSeq < t.TruncSeq {
			return nil, false, nil
		}
		ok, seq, op, payload, err := b.s.segGet(sg, sk, t.TruncSeq)
		if err != nil {
			return nil, false, err
		}
		if ok {
			return decide(seq, op, payload)
		}
	}
	base := b.ver.bases[ttKey(t.ID, tenant)]
	if base == nil || base.H < t.TruncSeq {
		return nil, false, nil
	}
	return b.s.baseGet(base.name(), key, t.cur(), need)
}

// valuesIn decodes a payload into the table's current schema.
func valuesIn(t *tableMeta, payload []byte) ([][]byte, error) {
	gen, raw, err := decodePayload(nil, payload)
	if err != nil {
		return nil, err
	}
	if gen >= len(t.Gens) {
		return nil, fmt.Errorf("payload of unknown schema generation %d", gen)
	}
	g := t.cur()
	if gen == len(t.Gens)-1 {
		return raw, nil
	}
	m := colMap(&t.Gens[gen], g)
	out := make([][]byte, len(m))
	for i, j := range m {
		if j >= 0 && j < len(raw) {
			out[i] = raw[j]
		}
	}
	return out, nil
}

func (b *Batch) maybeSpill() error {
	if b.memBytes+b.idxBytes < b.s.opts.MemoryLimit {
		return nil
	}
	if err := b.spillRows(); err != nil {
		return err
	}
	return b.spillIndex()
}

// spillRows writes the buffered changes as a sorted run.
func (b *Batch) spillRows() error {
	if b.ents.n == 0 {
		return nil
	}
	refs := b.refs[:0]
	for i := range int32(b.ents.n) {
		e := b.ents.at(i)
		sk := b.arena.get(e.sk)
		refs = append(refs, newSortRef(sk, e.seq, uint64(i)))
	}
	sortRefs(refs)
	num := b.s.allocFile()
	w, err := newSegWriter(b.s.objs, segName(num), b.s.lay, b.s.segCodec)
	if err != nil {
		return err
	}
	var tid uint32
	var t *tableMeta
	for i, r := range refs {
		if i+1 < len(refs) && bytes.Equal(r.sk, refs[i+1].sk) {
			continue // superseded within the run
		}
		e := b.ents.at(int32(r.ref))
		if id := binary.BigEndian.Uint32(r.sk); t == nil || id != tid {
			tid, t = id, b.tableByID(id)
		}
		if t == nil || e.seq < t.TruncSeq {
			continue
		}
		var pl []byte
		if e.op == opUpsert {
			pl = b.arena.get(e.pl)
		}
		if err := w.add(r.sk, e.seq, e.op, pl); err != nil {
			return errors.Join(err, w.abort())
		}
	}
	clear(refs)
	b.refs = refs[:0]
	if w.rows == 0 {
		if err := w.abort(); err != nil {
			return err
		}
	} else {
		size, err := w.finish()
		if err != nil {
			return err
		}
		b.runs = append(b.runs, &segMeta{Num: num, MinSeq: w.minSeq, MaxSeq: w.maxSeq, Rows: w.rows, Size: size, Created: time.Now().Unix()})
		b.s.m.spilledBytes.Add(float64(size))
		b.s.mu.Lock()
		b.s.spilled += size
		b.s.mu.Unlock()
	}
	b.arena.reset()
	b.ents.reset()
	clear(b.byHash)
	b.memBytes = 0
	return nil
}

// spillIndex writes the index updates to the pending keyspace "p/".
func (b *Batch) spillIndex() error {
	pb := b.s.db.NewBatch()
	var pk []byte
	deleted := []byte{pendingDeleted}
	for k, e := range b.idx {
		if !e.dirty {
			continue
		}
		pk = append(append(pk[:0], prefixPending...), k[len(prefixIndex):]...)
		v := deleted
		if e.present {
			v = e.cur
		}
		if err := pb.Set(pk, v, nil); err != nil {
			return errors.Join(fmt.Errorf("spill index: %w", err), pb.Close())
		}
		if pb.Len() >= idxBatchBytes {
			if err := pb.Commit(pebble.NoSync); err != nil {
				return errors.Join(fmt.Errorf("spill index: %w", err), pb.Close())
			}
			_ = pb.Close() // recycles the committed batch
			pb = b.s.db.NewBatch()
		}
	}
	if err := pb.Commit(pebble.NoSync); err != nil {
		return errors.Join(fmt.Errorf("spill index: %w", err), pb.Close())
	}
	_ = pb.Close() // recycles the committed batch
	b.pendingIdx = true
	clear(b.idx)
	b.idxBytes = 0
	return nil
}

// Commit makes the batch's changes durable and visible at lsn (the applied
// position becomes max(lsn, current)). On error the batch stays open and
// should be aborted.
func (b *Batch) Commit(ctx context.Context, lsn LSN) error {
	if b.done {
		return errors.New("commit batch: batch is finished")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s := b.s
	start := time.Now()
	if err := b.spillRows(); err != nil {
		return fmt.Errorf("commit batch: %w", err)
	}
	if b.pendingIdx {
		// Later updates must be copied after the spilled ones.
		if err := b.spillIndex(); err != nil {
			return fmt.Errorf("commit batch: %w", err)
		}
	}
	if len(b.runs) > 0 {
		names := make([]string, len(b.runs))
		for i, r := range b.runs {
			names[i] = r.name()
		}
		if err := s.objs.Sync(names); err != nil {
			return fmt.Errorf("commit batch: %w", err)
		}
	}
	if err := s.hook("batch.files"); err != nil {
		return err
	}

	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	pb := s.db.NewBatch()
	defer pb.Close() // recycles the batch; committed or not
	for id := range b.dropIdx {
		t := b.tables[id]
		lo, hi := indexPrefix(id, 0), indexPrefix(id, t.IdxGen)
		if err := pb.DeleteRange(lo, hi, nil); err != nil {
			return fmt.Errorf("commit batch: %w", err)
		}
		if err := pb.DeleteRange(pendingKey(lo), pendingKey(hi), nil); err != nil {
			return fmt.Errorf("commit batch: %w", err)
		}
	}
	for k, e := range b.idx {
		if !e.dirty {
			continue
		}
		var err error
		if e.present {
			err = pb.Set([]byte(k), e.cur, nil)
		} else {
			err = pb.Delete([]byte(k), nil)
		}
		if err != nil {
			return fmt.Errorf("commit batch: %w", err)
		}
	}
	if b.pendingIdx {
		if err := pb.Set([]byte(keyIndexRedo), []byte{1}, nil); err != nil {
			return fmt.Errorf("commit batch: %w", err)
		}
	}
	s.mu.Lock()
	st := s.stateLocked()
	s.mu.Unlock()
	st.LSN = max(st.LSN, lsn)
	st.NextSeq = b.seq
	e := &logEntry{Kind: entryBatch, State: st, AddSegs: b.runs}
	for _, id := range slices.Sorted(maps.Keys(b.tables)) {
		e.Tables = append(e.Tables, b.tables[id])
	}
	if err := s.commitManifest(ctx, pb, e, "batch.manifest"); err != nil {
		return fmt.Errorf("commit batch: %w", err)
	}
	if err := s.hook("batch.committed"); err != nil {
		return err
	}
	var idxErr error
	if b.pendingIdx {
		if err := s.hook("batch.index"); err != nil {
			return err
		}
		if idxErr = applyPending(s.db); idxErr != nil {
			idxErr = fmt.Errorf("commit batch: committed, but copying the index failed (Open repairs it): %w", idxErr)
		}
	}

	s.mu.Lock()
	nd := s.cur.derive()
	if len(b.tables) > 0 {
		tables := make(map[uint32]*tableMeta, len(nd.tables)+len(b.tables))
		for id, t := range nd.tables {
			tables[id] = t
		}
		for id, t := range b.tables {
			tables[id] = t
		}
		nd.setTables(tables)
	}
	segs := append(slices.Clone(nd.segs), b.runs...)
	nd.setSegs(segs)
	del := s.installLocked(nd, nil)
	s.nextSeq = b.seq
	s.setLSNLocked(st.LSN)
	s.persistedLSN = st.LSN
	s.lastPersist = time.Now()
	s.batch = nil
	s.commits++
	if idxErr != nil {
		s.indexBroken = idxErr
	}
	del = append(del, s.unrefLocked(b.ver)...)
	s.updateGauges()
	s.mu.Unlock()
	b.done = true
	s.removeFiles(del)
	s.m.commits.Inc()
	s.m.commitSeconds.Observe(time.Since(start).Seconds())
	s.kickCompactor()
	return idxErr
}

// Abort drops every change since Begin.
func (b *Batch) Abort() {
	if b.done {
		return
	}
	b.done = true
	s := b.s
	if !s.dead.Load() {
		for _, r := range b.runs {
			if err := s.discardFile(r.name()); err != nil {
				s.log.Warn("remove aborted run", "err", err)
			}
		}
		if b.pendingIdx {
			if err := discardPending(s.db, pebble.NoSync); err != nil {
				s.log.Error("discard index updates of aborted batch", "err", err)
			}
		}
	}
	s.mu.Lock()
	if s.batch == b {
		s.batch = nil
	}
	del := s.unrefLocked(b.ver)
	s.mu.Unlock()
	s.removeFiles(del)
}
