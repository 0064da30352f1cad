package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"
	"golang.org/x/sys/unix"
)

// Load writes a fresh snapshot of all tables. Writers fill private chunks
// (no locking per row), sort each full chunk and hand it to the Load; when
// the handed-over chunks reach half of Options.MemoryLimit, a spill goroutine
// merges them into one run (a segment file, not yet in the manifest) while
// writers go on filling the other half (a writer waits if a spill is still
// running then). Commit installs the runs as the new version's segments; the
// background compactor then merges them and folds them into base files.
type Load struct {
	s      *Store
	slot   string
	lsn    LSN
	seq    int64
	tables map[uint32]*tableMeta
	byName map[string]*tableMeta
	minID  uint32
	maxID  uint32

	chunkSize int
	threshold int64
	codec     compress.Codec // of the runs; set before any writer exists
	aborted   atomic.Bool

	mu       sync.Mutex
	cond     *sync.Cond
	cur      []*loadChunk
	curBytes int64
	spilling bool
	free     []*loadChunk
	runs     []*segMeta
	err      error
	writers  int
	done     bool
}

// loadIdxBatchBytes bounds each writer's unwritten index updates.
const loadIdxBatchBytes = 1 << 20

type loadChunk struct {
	buf  []byte
	ents []loadEnt
	refs []sortRef // ents sorted by sk, filled by sortEntries
}

type loadEnt struct {
	skOff, skLen, plOff, plLen uint32
}

func (c *loadChunk) size() int64 {
	return int64(cap(c.buf)) + int64(cap(c.ents))*16 + int64(cap(c.refs))*64
}

// sortEntries sorts the chunk's entries (done by the writer that filled it).
func (c *loadChunk) sortEntries(seq int64) {
	c.refs = c.refs[:0]
	for i, e := range c.ents {
		c.refs = append(c.refs, newSortRef(c.buf[e.skOff:e.skOff+e.skLen], seq, uint64(i)))
	}
	sortRefs(c.refs)
}

// LoadWriter appends rows of one table. It is used by one goroutine; several
// writers (also of one table) may be used concurrently.
type LoadWriter struct {
	l      *Load
	t      *tableMeta
	g      *genMeta
	ch     *loadChunk
	idx    *pebble.Batch
	sk     []byte
	ik     []byte
	err    error // sticky: the load failed
	closed bool
}

// BeginLoad starts a fresh snapshot taken with the replication slot at lsn.
// The current version stays readable until Commit replaces all staged data
// and schemas.
func (s *Store) BeginLoad(ctx context.Context, slot string, lsn LSN, tables []TableSchema) (*Load, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	gens := make([]genMeta, len(tables))
	names := make(map[string]bool, len(tables))
	for i, ts := range tables {
		if names[ts.Name] {
			return nil, fmt.Errorf("begin load: duplicate table %s", ts.Name)
		}
		names[ts.Name] = true
		g, err := newGen(ts, nil, 0)
		if err != nil {
			return nil, fmt.Errorf("begin load: %w", err)
		}
		gens[i] = g
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.batch != nil || s.load != nil {
		return nil, fmt.Errorf("begin load: %w", ErrBusy)
	}
	if !s.isWriterLocked() {
		return nil, fmt.Errorf("begin load: %w", ErrNotWriter)
	}
	chunk := int(min(max(s.opts.MemoryLimit/64, 64<<10), 1<<20))
	l := &Load{
		s:         s,
		slot:      slot,
		lsn:       lsn,
		seq:       s.nextSeq,
		tables:    make(map[uint32]*tableMeta, len(tables)),
		byName:    make(map[string]*tableMeta, len(tables)),
		minID:     s.nextTable,
		chunkSize: chunk,
		threshold: max(s.opts.MemoryLimit/2, int64(chunk)),
		codec:     &parquet.Uncompressed,
	}
	if c := s.opts.LoadCompression; c != "auto" {
		l.codec = codecFor(c)
	}
	l.cond = sync.NewCond(&l.mu)
	s.nextSeq++
	for i, ts := range tables {
		t := &tableMeta{ID: s.nextTable, Name: ts.Name, Gens: []genMeta{gens[i]}}
		s.nextTable++
		l.tables[t.ID] = t
		l.byName[t.Name] = t
	}
	l.maxID = s.nextTable
	s.load = l
	return l, nil
}

// SizeHint tells the load how many bytes the tables take in the source
// database (heap and TOAST). With LoadCompression "auto" it compresses its
// runs when the staging volume has less than 2.5 times that free:
// uncompressed runs take about 1.3 times the tables' size until the fold
// replaces them with base files of about half of it, and the rest is
// margin. Call it before the first Writer.
func (l *Load) SizeHint(bytes int64) {
	if l.s.opts.LoadCompression != "auto" || bytes <= 0 {
		return
	}
	free, err := freeBytes(l.s.dir)
	if err != nil {
		l.s.log.Warn("initial snapshot: cannot read the staging volume's free space; compressing runs", "err", err)
		l.codec = l.s.segCodec
		return
	}
	if free < bytes*5/2 {
		l.s.log.Info("initial snapshot: the staging volume is short of space for uncompressed runs; compressing them",
			"free_bytes", free, "tables_bytes", bytes)
		l.codec = l.s.segCodec
	}
}

// freeBytes is the space available to exportd on the volume holding dir.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// Writer returns a new writer for table.
func (l *Load) Writer(table string) (*LoadWriter, error) {
	t, ok := l.byName[table]
	if !ok {
		return nil, fmt.Errorf("load writer: unknown table %s", table)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil, errors.New("load writer: load is finished")
	}
	l.writers++
	return &LoadWriter{l: l, t: t, g: t.cur(), ch: l.getChunkLocked(), idx: l.s.db.NewBatch()}, nil
}

func (l *Load) getChunkLocked() *loadChunk {
	if n := len(l.free); n > 0 {
		c := l.free[n-1]
		l.free = l.free[:n-1]
		return c
	}
	return &loadChunk{buf: make([]byte, 0, l.chunkSize), ents: make([]loadEnt, 0, l.chunkSize/64)}
}

// Append buffers one row. Rows may come in any order.
func (w *LoadWriter) Append(row Row) error {
	if w.closed {
		return errors.New("append: writer is closed")
	}
	if w.l.aborted.Load() {
		return errors.New("append: load was aborted")
	}
	if w.err != nil {
		return w.err
	}
	g := w.g
	if len(row) != len(g.Cols) {
		return fmt.Errorf("append to %s: row has %d values, the table has %d columns", w.t.Name, len(row), len(g.Cols))
	}
	var err error
	w.sk = binary.BigEndian.AppendUint32(w.sk[:0], w.t.ID)
	if w.sk, err = appendTenant(w.sk, g.tenantKind, row[g.TenantCol]); err != nil {
		return fmt.Errorf("append to %s: tenant column: %w", w.t.Name, err)
	}
	tenantEnd := len(w.sk)
	if w.sk, err = encodeKey(w.sk, g, row); err != nil {
		return fmt.Errorf("append to %s: %w", w.t.Name, err)
	}
	plLen := payloadSize(0, row)

	ch := w.ch
	need := len(w.sk) + plLen
	if len(ch.buf)+need > cap(ch.buf) && len(ch.ents) > 0 {
		if err := w.l.submit(ch); err != nil {
			w.ch, w.err = nil, fmt.Errorf("append to %s: %w", w.t.Name, err)
			return w.err
		}
		w.l.mu.Lock()
		ch = w.l.getChunkLocked()
		w.l.mu.Unlock()
		w.ch = ch
	}
	if need > cap(ch.buf)-len(ch.buf) {
		ch.buf = append(make([]byte, 0, need), ch.buf...) // oversized row: a dedicated chunk
	}
	off := uint32(len(ch.buf))
	ch.buf = append(ch.buf, w.sk...)
	ch.buf = appendPayload(ch.buf, 0, row) // straight into the chunk: no second copy
	ch.ents = append(ch.ents, loadEnt{skOff: off, skLen: uint32(len(w.sk)), plOff: off + uint32(len(w.sk)), plLen: uint32(plLen)})

	if !g.tenantInKey {
		w.ik = append(appendIndexPrefix(w.ik[:0], w.t.ID, 0), w.sk[tenantEnd:]...)
		if err := w.idx.Set(w.ik, w.sk[4:tenantEnd], nil); err != nil {
			return fmt.Errorf("append to %s: index: %w", w.t.Name, err)
		}
		if w.idx.Len() >= loadIdxBatchBytes {
			if err := w.flushIndex(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *LoadWriter) flushIndex() error {
	if w.idx.Empty() {
		return nil
	}
	err := w.idx.Commit(pebble.NoSync)
	_ = w.idx.Close() // recycles the batch
	w.idx = w.l.s.db.NewBatch()
	if err != nil {
		return fmt.Errorf("write key-to-tenant index: %w", err)
	}
	return nil
}

// Close hands the writer's remaining rows to the Load.
func (w *LoadWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	var errs []error
	if w.ch != nil && len(w.ch.ents) > 0 && !w.l.aborted.Load() {
		errs = append(errs, w.l.submit(w.ch))
	}
	w.ch = nil
	if !w.l.aborted.Load() {
		errs = append(errs, w.flushIndex())
	}
	_ = w.idx.Close() // recycles the batch
	w.l.mu.Lock()
	w.l.writers--
	w.l.mu.Unlock()
	return errors.Join(errs...)
}

// submit sorts a full chunk and hands it over; when enough chunks are
// buffered, it starts a spill (waiting first if one is still running).
func (l *Load) submit(ch *loadChunk) error {
	ch.sortEntries(l.seq)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	if l.done {
		return errors.New("load is finished")
	}
	l.cur = append(l.cur, ch)
	l.curBytes += ch.size()
	if l.curBytes < l.threshold {
		return nil
	}
	l.waitSpillLocked()
	if l.err != nil {
		return l.err
	}
	if l.done {
		return errors.New("load is finished")
	}
	if len(l.cur) == 0 || l.curBytes < l.threshold {
		return nil // another writer started a spill meanwhile
	}
	l.startSpillLocked()
	return nil
}

// startSpillLocked writes the buffered chunks as a run in a new goroutine.
// At most one spill runs at a time; waitSpillLocked waits for it.
func (l *Load) startSpillLocked() {
	set := l.cur
	l.cur, l.curBytes = nil, 0
	l.spilling = true
	go func() {
		run, err := l.writeRun(set)
		if err == nil && run != nil {
			// Durable now, while the copy goes on, rather than all at Commit.
			if c, ok := l.s.objs.(coldSyncer); ok {
				err = c.SyncCold(run.name())
			} else {
				err = l.s.objs.Sync([]string{run.name()})
			}
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.spilling = false
		for _, c := range set {
			c.buf, c.ents, c.refs = c.buf[:0], c.ents[:0], c.refs[:0]
			if cap(c.buf) == l.chunkSize && !l.done {
				l.free = append(l.free, c)
			}
		}
		if err != nil && l.err == nil {
			l.err = err
		}
		if run != nil {
			l.runs = append(l.runs, run)
		}
		l.cond.Broadcast()
	}()
}

func (l *Load) waitSpillLocked() {
	for l.spilling {
		l.cond.Wait()
	}
}

// coldSyncer is implemented by object stores that can make an object
// durable and tell the OS it will not be read again soon.
type coldSyncer interface {
	SyncCold(name string) error
}

// chunkCursor walks one sorted chunk during a spill's merge.
type chunkCursor struct {
	c   *loadChunk
	pos int
}

func (cc *chunkCursor) ref() *sortRef { return &cc.c.refs[cc.pos] }

func refLess(a, b *sortRef) bool { return refCompare(a, b) < 0 }

// writeRun merges the sorted chunks into one run file.
func (l *Load) writeRun(set []*loadChunk) (*segMeta, error) {
	h := make([]chunkCursor, 0, len(set))
	for _, c := range set {
		if len(c.refs) > 0 {
			h = append(h, chunkCursor{c: c})
		}
	}
	if len(h) == 0 {
		return nil, nil
	}
	down := func(i int) {
		for {
			m := 2*i + 1
			if m >= len(h) {
				return
			}
			if r := m + 1; r < len(h) && refLess(h[r].ref(), h[m].ref()) {
				m = r
			}
			if !refLess(h[m].ref(), h[i].ref()) {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		down(i)
	}
	s := l.s
	num := s.allocFile()
	w, err := newSegWriterPaged(s.objs, segName(num), s.lay, l.codec, loadPageBytes)
	if err != nil {
		return nil, err
	}
	var last []byte
	for len(h) > 0 {
		top := &h[0]
		r := top.ref()
		if last == nil || !bytes.Equal(last, r.sk) { // a duplicate key keeps one row
			e := top.c.ents[r.ref]
			if err := w.add(r.sk, l.seq, opUpsert, top.c.buf[e.plOff:e.plOff+e.plLen]); err != nil {
				return nil, errors.Join(err, w.abort())
			}
			last = r.sk
		}
		top.pos++
		if top.pos == len(top.c.refs) {
			h[0] = h[len(h)-1]
			h = h[:len(h)-1]
		}
		down(0)
	}
	size, err := w.finish()
	if err != nil {
		return nil, err
	}
	s.m.spilledBytes.Add(float64(size))
	s.mu.Lock()
	s.spilled += size
	s.mu.Unlock()
	return &segMeta{Num: num, MinSeq: l.seq, MaxSeq: l.seq, Rows: w.rows, Size: size, Created: time.Now().Unix()}, nil
}

// Commit makes the loaded data the store's only content, durable and
// visible at the load's LSN. All writers must be closed.
func (l *Load) Commit(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s := l.s
	start := time.Now()
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return errors.New("commit load: load is finished")
	}
	if l.writers > 0 {
		l.mu.Unlock()
		return fmt.Errorf("commit load: %d writers are not closed", l.writers)
	}
	l.waitSpillLocked()
	if l.err == nil && len(l.cur) > 0 {
		l.startSpillLocked()
		l.waitSpillLocked() // its error is in l.err
	}
	err := l.err
	runs := l.runs
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("commit load: %w", err)
	}
	names := make([]string, len(runs))
	for i, r := range runs {
		names[i] = r.name()
	}
	if err := s.objs.Sync(names); err != nil {
		return fmt.Errorf("commit load: %w", err)
	}
	if err := s.hook("load.files"); err != nil {
		return err
	}

	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	pb := s.db.NewBatch()
	defer pb.Close() // recycles the batch; committed or not
	if err := pb.DeleteRange([]byte(prefixIndex), indexTablePrefix(l.minID), nil); err != nil {
		return fmt.Errorf("commit load: %w", err)
	}
	s.mu.Lock()
	st := s.stateLocked()
	old := s.cur
	s.mu.Unlock()
	st.LSN, st.SnapshotDone, st.Slot, st.Epoch = l.lsn, true, l.slot, st.Epoch+1
	removed := make([]string, 0, len(old.segs)+len(old.bases))
	for _, sg := range old.segs {
		removed = append(removed, sg.name())
	}
	for _, b := range old.bases {
		removed = append(removed, b.name())
	}
	e := &logEntry{Kind: entryLoad, Replace: true, State: st, AddSegs: runs, Obsolete: removed}
	for _, id := range slices.Sorted(maps.Keys(l.tables)) {
		e.Tables = append(e.Tables, l.tables[id])
	}
	if err := s.commitManifest(ctx, pb, e, ""); err != nil {
		return fmt.Errorf("commit load: %w", err)
	}
	if err := s.hook("load.committed"); err != nil {
		return err
	}

	s.mu.Lock()
	nd := &dataVer{epoch: st.Epoch}
	nd.setTables(l.tables)
	nd.setSegs(runs)
	nd.setBases(map[string]*baseMeta{})
	del := s.installLocked(nd, removed)
	s.setLSNLocked(l.lsn)
	s.persistedLSN = l.lsn
	s.lastPersist = time.Now()
	s.snapshotDone, s.slot = true, l.slot
	s.load = nil
	s.commits++
	s.updateGauges()
	s.mu.Unlock()
	l.mu.Lock()
	l.done = true
	l.free = nil
	l.mu.Unlock()
	s.removeFiles(del)
	s.m.commits.Inc()
	s.m.commitSeconds.Observe(time.Since(start).Seconds())
	s.kickCompactor()
	return nil
}

// Abort discards the load and everything it wrote.
func (l *Load) Abort() error {
	l.aborted.Store(true)
	s := l.s
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		return nil
	}
	l.done = true
	l.waitSpillLocked()
	runs := l.runs
	l.runs, l.cur, l.free = nil, nil, nil
	l.mu.Unlock()
	var errs []error
	if !s.dead.Load() {
		for _, r := range runs {
			errs = append(errs, s.discardFile(r.name()))
		}
		// Index entries of the load's tables; Open removes any written later.
		if err := s.db.DeleteRange(indexTablePrefix(l.minID), indexTablePrefix(l.maxID), pebble.NoSync); err != nil {
			errs = append(errs, fmt.Errorf("abort load: %w", err))
		}
	}
	s.mu.Lock()
	if s.load == l {
		s.load = nil
	}
	s.mu.Unlock()
	return errors.Join(errs...)
}
