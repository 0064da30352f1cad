package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/parquet-go/parquet-go"
)

// The key-to-tenant index of a follower (shared staging) is derived from
// the data files the writer commits, so that a follower can take over as
// the writer without rebuilding it. What the writer's Batch does to the
// index is a function of the entries it stages: an upsert of (tenant, key)
// maps key to tenant, a delete unmaps key. Within one data file the last
// entry of a key (in any tenant) is the one that counts: at the end of the
// changes a file holds, a key is in use in at most one tenant (PostgreSQL
// enforces the primary key), so applying a file's deletions first and then
// its upserts reproduces the writer's index. Entries before a table's last
// TRUNCATE are dead, and so are entries a base file already folded in (its
// H), which matters only when rebuilding from a whole version.
//
// Derivation uses the newest tables a follower knows, not the tables as of
// each entry: a TRUNCATE the follower has already seen makes every earlier
// entry of the table dead, which is what the index must end up with; the
// entries of a table created later cannot name it.

// indexWriter batches index writes into pebble in chunks.
type indexWriter struct {
	db *pebble.DB
	b  *pebble.Batch
	ik []byte
}

func newIndexWriter(db *pebble.DB) *indexWriter {
	return &indexWriter{db: db, b: db.NewBatch()}
}

func (w *indexWriter) maybeFlush() error {
	if w.b.Len() < copyChunk {
		return nil
	}
	if err := w.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("write key-to-tenant index: %w", err)
	}
	_ = w.b.Close() // recycles the committed batch
	w.b = w.db.NewBatch()
	return nil
}

func (w *indexWriter) set(table, gen uint32, key, tenant []byte) error {
	w.ik = append(appendIndexPrefix(w.ik[:0], table, gen), key...)
	if err := w.b.Set(w.ik, tenant, nil); err != nil {
		return fmt.Errorf("write key-to-tenant index: %w", err)
	}
	return w.maybeFlush()
}

func (w *indexWriter) delete(table, gen uint32, key []byte) error {
	w.ik = append(appendIndexPrefix(w.ik[:0], table, gen), key...)
	if err := w.b.Delete(w.ik, nil); err != nil {
		return fmt.Errorf("write key-to-tenant index: %w", err)
	}
	return w.maybeFlush()
}

func (w *indexWriter) deleteRange(lo, hi []byte) error {
	if err := w.b.DeleteRange(lo, hi, nil); err != nil {
		return fmt.Errorf("write key-to-tenant index: %w", err)
	}
	return nil
}

// finish records the index position and commits what is left.
func (w *indexWriter) finish(m sharedMeta) error {
	defer w.b.Close()
	if err := w.b.Set([]byte(keyShared), mustJSON(m), nil); err != nil {
		return fmt.Errorf("write key-to-tenant index: %w", err)
	}
	if err := w.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("write key-to-tenant index: %w", err)
	}
	return nil
}

func (w *indexWriter) abort() { _ = w.b.Close() }

// indexTables returns the ids of the tables that have an index, in order.
func indexTables(tables map[uint32]*tableMeta) []uint32 {
	var ids []uint32
	for id, t := range tables {
		if !t.cur().tenantInKey {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// indexEntry applies entry e's effects to the index and records e as the
// index's position.
func (s *Store) indexEntry(ctx context.Context, e *logEntry) error {
	s.mu.Lock()
	tables, id := s.cur.tables, s.id
	s.mu.Unlock()
	w := newIndexWriter(s.db)
	if e.Replace {
		if err := w.deleteRange([]byte(prefixIndex), prefixEnd([]byte(prefixIndex))); err != nil {
			w.abort()
			return err
		}
	}
	for _, et := range e.Tables {
		if t := tables[et.ID]; t != nil && !t.cur().tenantInKey && t.IdxGen > 0 {
			if err := w.deleteRange(indexPrefix(t.ID, 0), indexPrefix(t.ID, t.IdxGen)); err != nil {
				w.abort()
				return err
			}
		}
	}
	segs := slices.Clone(e.AddSegs)
	slices.SortFunc(segs, func(a, b *segMeta) int {
		if a.MinSeq != b.MinSeq {
			return int(a.MinSeq - b.MinSeq)
		}
		return int(a.Num - b.Num)
	})
	for _, sg := range segs {
		if err := s.indexSegment(ctx, w, sg, tables, nil); err != nil {
			w.abort()
			return fmt.Errorf("index entry %d: %w", e.N, err)
		}
	}
	return w.finish(sharedMeta{StoreID: id, IdxPos: e.N})
}

// rebuildIndexLocked rebuilds the index from the current version: the keys
// of the base files, then the segments in order. Callers hold writeMu.
func (s *Store) rebuildIndexLocked(ctx context.Context) error {
	sh := s.sh
	dv, err := s.pinCurrent()
	if err != nil {
		return err
	}
	defer s.unref(dv)
	s.mu.Lock()
	n, id := s.entryN, s.id
	s.mu.Unlock()
	w := newIndexWriter(s.db)
	for _, p := range []string{prefixIndex, prefixPending} {
		if err := w.deleteRange([]byte(p), prefixEnd([]byte(p))); err != nil {
			w.abort()
			return err
		}
	}
	ids := indexTables(dv.tables)
	rows := 0
	for _, b := range dv.bases {
		t := dv.tables[b.Table]
		if t == nil || t.cur().tenantInKey || !dv.baseAlive(b) {
			continue
		}
		k, err := s.indexBase(ctx, w, t, b)
		if err != nil {
			w.abort()
			return fmt.Errorf("rebuild key-to-tenant index: %w", err)
		}
		rows += k
	}
	if len(ids) > 0 {
		for _, sg := range dv.segs {
			if err := s.indexSegment(ctx, w, sg, dv.tables, dv.bases); err != nil {
				w.abort()
				return fmt.Errorf("rebuild key-to-tenant index: %w", err)
			}
		}
	}
	if err := w.finish(sharedMeta{StoreID: id, IdxPos: n}); err != nil {
		return err
	}
	sh.idxGap, sh.idxQueue, sh.idxPos = false, nil, n
	s.mu.Lock()
	s.idxBehind = 0
	s.mu.Unlock()
	s.log.Info("rebuilt the key-to-tenant index from staging", "entry", n, "base_rows", rows, "segments", len(dv.segs))
	return nil
}

// openData opens a data file outside the file cache (derivation reads each
// file once).
func (s *Store) openData(name string) (objReader, *parquet.File, error) {
	return s.files.open(name)
}

// closeData closes what openData opened; in shared staging it drops the
// cached copy of a file the current version does not use (derivation may
// read files of versions compacted since).
func (s *Store) closeData(name string, r objReader) error {
	err := r.Close()
	if s.sh == nil {
		return err
	}
	s.mu.Lock()
	inUse := false
	for _, sg := range s.cur.segs {
		if sg.name() == name {
			inUse = true
			break
		}
	}
	for _, o := range s.obsolete {
		if slices.Contains(o.names, name) {
			inUse = true // kept for a pinned version
		}
	}
	s.mu.Unlock()
	if !inUse && !strings.HasPrefix(name, "base-") {
		err = errors.Join(err, s.sh.objs.dropLocal(name))
	}
	return err
}

// indexBase maps every key of base file b to its tenant.
func (s *Store) indexBase(ctx context.Context, w *indexWriter, t *tableMeta, b *baseMeta) (int, error) {
	r, f, err := s.openData(b.name())
	if err != nil {
		return 0, err
	}
	defer r.Close() // read-only
	lay, err := readBaseLayout(f)
	if err != nil {
		return 0, fmt.Errorf("base file %s: %w", b.name(), err)
	}
	n := 0
	for _, rg := range f.RowGroups() {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		cr := newColReader(rg.ColumnChunks()[lay.keyCol])
		for {
			v, ok := cr.next()
			if !ok {
				break
			}
			if err := w.set(t.ID, t.IdxGen, v.ByteArray(), b.Tenant); err != nil {
				cr.close()
				return n, err
			}
			n++
		}
		if err := cr.close(); err != nil {
			return n, fmt.Errorf("base file %s: %w", b.name(), err)
		}
	}
	return n, nil
}

// indexSegment applies segment sg's entries of the index tables: its
// deletions, then its upserts. With bases, entries a base file folded in
// are skipped.
func (s *Store) indexSegment(ctx context.Context, w *indexWriter, sg *segMeta, tables map[uint32]*tableMeta, bases map[string]*baseMeta) (err error) {
	ids := indexTables(tables)
	if len(ids) == 0 {
		return nil
	}
	r, f, err := s.openData(sg.name())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.closeData(sg.name(), r)) }()
	for _, id := range ids {
		t := tables[id]
		g := t.cur()
		prefix := binary.BigEndian.AppendUint32(nil, id)
		for _, op := range []uint8{opDelete, opUpsert} {
			err := scanSegKeys(ctx, f, s.lay, prefix, func(sk []byte, seq int64, last uint8) error {
				if last != op || seq < t.TruncSeq {
					return nil
				}
				rest := sk[4:]
				tl := tenantLen(g.tenantKind, rest)
				if tl < 0 {
					return fmt.Errorf("segment %s: bad sort key", sg.name())
				}
				tenant, key := rest[:tl], rest[tl:]
				if bases != nil {
					if b := bases[ttKey(id, tenant)]; b != nil && seq <= b.H {
						return nil
					}
				}
				if op == opDelete {
					return w.delete(id, t.IdxGen, key)
				}
				return w.set(id, t.IdxGen, key, tenant)
			})
			if err != nil {
				return fmt.Errorf("segment %s: %w", sg.name(), err)
			}
		}
	}
	return nil
}

// scanSegKeys calls fn with the last entry (seq, op) of each sort key with
// the prefix, in order, reading only the sk, seq and op columns.
func scanSegKeys(ctx context.Context, f *parquet.File, lay segLayout, prefix []byte, fn func(sk []byte, seq int64, op uint8) error) error {
	var last []byte
	var lastSeq int64
	var lastOp uint8
	have := false
	emit := func() error {
		if !have {
			return nil
		}
		have = false
		return fn(last, lastSeq, lastOp)
	}
	for _, rg := range f.RowGroups() {
		if err := ctx.Err(); err != nil {
			return err
		}
		ccs := rg.ColumnChunks()
		if minV, maxV, ok := chunkBounds(ccs[lay.sk]); ok &&
			(bytes.Compare(maxV, prefix) < 0 || (bytes.Compare(minV, prefix) > 0 && !bytes.HasPrefix(minV, prefix))) {
			continue
		}
		skr, seqr, opr := newColReader(ccs[lay.sk]), newColReader(ccs[lay.seq]), newColReader(ccs[lay.op])
		err := func() error {
			for {
				sk, ok := skr.next()
				if !ok {
					return nil
				}
				seq, ok1 := seqr.next()
				op, ok2 := opr.next()
				if !ok1 || !ok2 {
					return errors.New("columns of unequal length")
				}
				b := sk.ByteArray()
				if !bytes.HasPrefix(b, prefix) {
					if bytes.Compare(b, prefix) > 0 {
						return io.EOF // sorted: past the prefix
					}
					continue
				}
				if have && !bytes.Equal(b, last) {
					if err := emit(); err != nil {
						return err
					}
				}
				last = append(last[:0], b...)
				lastSeq, lastOp, have = seq.Int64(), uint8(op.Int32()), true
			}
		}()
		err = errors.Join(err, skr.close(), seqr.close(), opr.close())
		if errors.Is(err, io.EOF) {
			return emit()
		}
		if err != nil {
			return err
		}
	}
	return emit()
}

// colReader reads one column chunk's values in order. A value's bytes are
// valid until the next call.
type colReader struct {
	pages parquet.Pages
	page  parquet.Page
	vr    parquet.ValueReader
	buf   []parquet.Value
	pos   int
	err   error
	done  bool
}

func newColReader(cc parquet.ColumnChunk) *colReader {
	return &colReader{pages: cc.Pages(), buf: make([]parquet.Value, 0, readBatchRows)}
}

func (c *colReader) next() (parquet.Value, bool) {
	for {
		if c.pos < len(c.buf) {
			v := c.buf[c.pos]
			c.pos++
			return v, true
		}
		if c.done {
			return parquet.Value{}, false
		}
		if c.vr != nil {
			n, err := c.vr.ReadValues(c.buf[:cap(c.buf)])
			c.buf, c.pos = c.buf[:n], 0
			if err != nil {
				if !errors.Is(err, io.EOF) {
					c.fail(fmt.Errorf("read values: %w", err))
					return parquet.Value{}, false
				}
				c.vr = nil // the page's values stay valid until the next page
			}
			if n > 0 {
				continue
			}
		}
		if c.page != nil {
			parquet.Release(c.page)
			c.page = nil
		}
		p, err := c.pages.ReadPage()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				c.fail(fmt.Errorf("read page: %w", err))
			}
			c.done = true
			continue
		}
		c.page, c.vr = p, p.Values()
	}
}

func (c *colReader) fail(err error) {
	c.err = err
	c.done = true
	c.buf, c.pos = c.buf[:0], 0
}

func (c *colReader) close() error {
	if c.page != nil {
		parquet.Release(c.page)
		c.page = nil
	}
	return errors.Join(c.err, c.pages.Close())
}
