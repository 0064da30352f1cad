package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// policy holds the compaction thresholds (tests shrink them).
type policy struct {
	// fanIn bounds the files merged at once (plus one base file in a fold).
	fanIn int
	// maxSegments: more segments than this are merged (adjacent, smallest first).
	maxSegments int
	// A fold of all segments into base files runs when the segments hold at
	// least foldMinBytes and 1/foldRatio of the base bytes, or when the
	// oldest segment is older than foldMaxAge.
	foldMinBytes int64
	foldRatio    int64
	foldMaxAge   time.Duration
	// manual: the background compactor does nothing (tests call Compact).
	manual bool
}

func defaultPolicy() policy {
	return policy{
		fanIn:        32,
		maxSegments:  16,
		foldMinBytes: 32 << 20,
		foldRatio:    8,
		foldMaxAge:   5 * time.Minute,
	}
}

type compactKind int

const (
	compactNone compactKind = iota
	compactMerge
	compactFold
)

func (k compactKind) String() string {
	switch k {
	case compactMerge:
		return "merge"
	case compactFold:
		return "fold"
	}
	return "none"
}

// Compact runs compaction until there is nothing left to do: every segment
// is folded into base files.
func (s *Store) Compact(ctx context.Context) error {
	for {
		did, err := s.compactOnce(ctx, true)
		if err != nil {
			return fmt.Errorf("compact: %w", err)
		}
		if !did {
			return nil
		}
	}
}

// pick chooses the next compaction. force: fold everything (Compact).
func (p policy) pick(dv *dataVer, force bool, now time.Time) (compactKind, []*segMeta) {
	if p.manual && !force {
		return compactNone, nil
	}
	n := len(dv.segs)
	if n > p.fanIn {
		return compactMerge, window(dv.segs, p.fanIn)
	}
	if force {
		if n > 0 || hasDeadBases(dv) {
			return compactFold, dv.segs
		}
		return compactNone, nil
	}
	if n > p.maxSegments {
		return compactMerge, window(dv.segs, min(p.fanIn, max(4, n-p.maxSegments+1)))
	}
	if n > 0 {
		oldest := dv.segs[0].Created
		for _, sg := range dv.segs {
			oldest = min(oldest, sg.Created)
		}
		if dv.segBytes >= max(p.foldMinBytes, dv.baseBytes/p.foldRatio) ||
			(oldest > 0 && now.Sub(time.Unix(oldest, 0)) > p.foldMaxAge) {
			return compactFold, dv.segs
		}
	}
	if hasDeadBases(dv) {
		return compactFold, nil
	}
	return compactNone, nil
}

// window returns the l adjacent segments with the smallest total size.
func window(segs []*segMeta, l int) []*segMeta {
	l = min(l, len(segs))
	best, bestSum := 0, int64(-1)
	var sum int64
	for i, sg := range segs {
		sum += sg.Size
		if i >= l {
			sum -= segs[i-l].Size
		}
		if i >= l-1 && (bestSum < 0 || sum < bestSum) {
			best, bestSum = i-l+1, sum
		}
	}
	return segs[best : best+l]
}

func hasDeadBases(dv *dataVer) bool {
	for _, b := range dv.bases {
		if !dv.baseAlive(b) {
			return true
		}
	}
	return false
}

// compactOnce runs one compaction step; it reports whether it did anything.
func (s *Store) compactOnce(ctx context.Context, force bool) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.life, cancel)() // Close stops a compaction
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	// Close cancels s.life before it waits for compactMu; AfterFunc above
	// cancels ctx only asynchronously, so check here, under the lock, that
	// the store is still open: no compaction may write files after Close.
	if s.life.Err() != nil {
		return false, ErrClosed
	}
	dv, err := s.pinCurrent()
	if err != nil {
		return false, err
	}
	defer s.unref(dv)
	kind, segs := s.opts.policy.pick(dv, force, time.Now())
	if kind == compactNone {
		return false, nil
	}
	start := time.Now()
	var e *edit
	switch kind {
	case compactMerge:
		e, err = s.merge(ctx, dv, segs)
	case compactFold:
		e, err = s.fold(ctx, dv, segs)
	}
	if err != nil {
		// e is nil unless the outputs were complete when the error came
		// (e.g. closing a merge's inputs failed): they are not installed.
		if !s.dead.Load() {
			s.removeOutputs(e)
		}
		return false, err
	}
	installed, err := s.installEdit(dv, e)
	if err != nil || !installed {
		if !s.dead.Load() {
			s.removeOutputs(e)
		}
		return false, err
	}
	s.m.compactions.WithLabelValues(kind.String()).Inc()
	s.m.compactionSeconds.WithLabelValues(kind.String()).Observe(time.Since(start).Seconds())
	s.log.Debug("compacted staging", "kind", kind.String(), "inputs", len(segs),
		"bases", len(e.bases), "seconds", time.Since(start).Seconds())
	return true, nil
}

// edit is the manifest change of a compaction.
type edit struct {
	kind     compactKind
	inputs   []*segMeta
	out      *segMeta             // merge output (nil if every entry was dropped)
	bases    map[string]*baseMeta // fold: new base per (table, tenant); nil value = removed
	obsolete []string             // base files replaced or removed
}

func (s *Store) removeOutputs(e *edit) {
	if e == nil {
		return
	}
	if e.out != nil {
		_ = s.objs.Remove(e.out.name()) // an orphan is removed by the next Open anyway
	}
	for _, b := range e.bases {
		if b != nil {
			_ = s.objs.Remove(b.name())
		}
	}
}

// installEdit makes a compaction's result current, unless a Load replaced
// the data meanwhile (then it reports false).
func (s *Store) installEdit(dv *dataVer, e *edit) (bool, error) {
	if err := s.hook("compact.files"); err != nil {
		return false, err
	}
	var names []string
	if e.out != nil {
		names = append(names, e.out.name())
	}
	for _, b := range e.bases {
		if b != nil {
			names = append(names, b.name())
		}
	}
	if len(names) > 0 {
		if err := s.objs.Sync(names); err != nil {
			return false, err
		}
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	cur := s.cur
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return false, ErrClosed
	}
	if cur.epoch != dv.epoch {
		return false, nil
	}
	present := make(map[uint64]bool, len(cur.segs))
	for _, sg := range cur.segs {
		present[sg.Num] = true
	}
	for _, in := range e.inputs {
		if !present[in.Num] {
			return false, nil
		}
	}
	pb := s.db.NewBatch()
	defer pb.Close() // recycles the batch; committed or not
	var err error
	for _, in := range e.inputs {
		err = errors.Join(err, pb.Delete(segKey(in.Num), nil))
	}
	if e.out != nil {
		err = errors.Join(err, pb.Set(segKey(e.out.Num), mustJSON(e.out), nil))
	}
	for tt, b := range e.bases {
		k := baseKey(binary.BigEndian.Uint32([]byte(tt)), []byte(tt[4:]))
		if b == nil {
			err = errors.Join(err, pb.Delete(k, nil))
		} else {
			err = errors.Join(err, pb.Set(k, mustJSON(b), nil))
		}
	}
	s.mu.Lock()
	st := s.stateLocked()
	s.mu.Unlock()
	err = errors.Join(err, pb.Set([]byte(keyState), mustJSON(st), nil))
	if err != nil {
		return false, fmt.Errorf("install compaction: %w", err)
	}
	if err := pb.Commit(pebble.Sync); err != nil {
		return false, fmt.Errorf("install compaction: write manifest: %w", err)
	}
	if err := s.hook("compact.committed"); err != nil {
		return true, err
	}

	removed := slices.Clone(e.obsolete)
	inputs := make(map[uint64]bool, len(e.inputs))
	for _, in := range e.inputs {
		inputs[in.Num] = true
		removed = append(removed, in.name())
	}
	// writeMu keeps s.cur stable: build the new version without s.mu (the
	// bases map can be large), then swap it in.
	nd := cur.derive()
	segs := make([]*segMeta, 0, len(nd.segs)+1)
	for _, sg := range nd.segs {
		if !inputs[sg.Num] {
			segs = append(segs, sg)
		}
	}
	if e.out != nil {
		segs = append(segs, e.out)
	}
	nd.setSegs(segs)
	if len(e.bases) > 0 {
		bases := make(map[string]*baseMeta, len(nd.bases)+len(e.bases))
		for k, b := range nd.bases {
			bases[k] = b
		}
		for k, b := range e.bases {
			if b == nil {
				delete(bases, k)
			} else {
				bases[k] = b
			}
		}
		nd.setBases(bases)
	}
	s.mu.Lock()
	del := s.installLocked(nd, removed)
	if e.kind == compactMerge {
		s.merges++
	} else {
		s.folds++
	}
	s.updateGauges()
	s.mu.Unlock()
	s.removeFiles(del)
	return true, nil
}

// openSegSources opens full-range iterators over segments.
func (s *Store) openSegSources(segs []*segMeta) ([]mergeSrc, []*cachedFile, error) {
	var srcs []mergeSrc
	var held []*cachedFile
	for _, sg := range segs {
		cf, err := s.files.acquire(sg.name())
		if err != nil {
			for _, h := range held {
				s.files.release(h)
			}
			return nil, nil, err
		}
		held = append(held, cf)
		srcs = append(srcs, &segSrc{it: newSegIter(cf.f, s.lay, nil, nil, readBatchRows)})
	}
	return srcs, held, nil
}

func (s *Store) closeSources(srcs []mergeSrc, held []*cachedFile) error {
	var errs []error
	for _, src := range srcs {
		errs = append(errs, src.close())
	}
	for _, h := range held {
		s.files.release(h)
	}
	return errors.Join(errs...)
}

// merge merges adjacent segments into one, keeping the newest entry per key
// and dropping entries of truncated tables.
func (s *Store) merge(ctx context.Context, dv *dataVer, inputs []*segMeta) (_ *edit, err error) {
	srcs, held, err := s.openSegSources(inputs)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.closeSources(srcs, held)) }()
	var h mergeHeap
	h.init(srcs)
	num := s.allocFile()
	w, err := newSegWriter(s.objs, segName(num), s.lay, s.segCodec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && !s.dead.Load() {
			_ = w.abort() // the error at hand matters more
		}
	}()
	var tid uint32
	var t *tableMeta
	for n := 0; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		win, ok := h.pop()
		if !ok {
			break
		}
		sk := win.key()
		if id := binary.BigEndian.Uint32(sk); t == nil || id != tid {
			tid, t = id, dv.tables[id]
		}
		if t != nil && win.seq() >= t.TruncSeq {
			if err := w.add(sk, win.seq(), win.op(), win.(*segSrc).it.payload); err != nil {
				return nil, err
			}
		}
		h.advance()
	}
	if h.err != nil {
		return nil, h.err
	}
	e := &edit{kind: compactMerge, inputs: inputs}
	if w.rows == 0 {
		return e, w.abort()
	}
	size, err := w.finish()
	if err != nil {
		return nil, err
	}
	out := &segMeta{Num: num, MinSeq: inputs[0].MinSeq, MaxSeq: inputs[0].MaxSeq, Rows: w.rows, Size: size, Created: inputs[0].Created}
	for _, in := range inputs {
		out.MinSeq = min(out.MinSeq, in.MinSeq)
		out.MaxSeq = max(out.MaxSeq, in.MaxSeq)
		if in.Created > 0 && (out.Created == 0 || in.Created < out.Created) {
			out.Created = in.Created
		}
	}
	e.out = out
	return e, nil
}

// fold applies the oldest segments (all of dv's, at most fanIn) to the base
// files: each (table, tenant) they touch gets a new base file merged from
// its old base and their entries. Bases of truncated tables are removed.
func (s *Store) fold(ctx context.Context, dv *dataVer, segs []*segMeta) (_ *edit, err error) {
	e := &edit{kind: compactFold, inputs: segs, bases: make(map[string]*baseMeta)}
	defer func() {
		if err != nil && !s.dead.Load() {
			s.removeOutputs(e)
		}
	}()
	var hi int64
	for _, sg := range segs {
		hi = max(hi, sg.MaxSeq)
	}
	srcs, held, err := s.openSegSources(segs)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.closeSources(srcs, held)) }()
	var h mergeHeap
	h.init(srcs)

	f := &folder{s: s, dv: dv, e: e, hi: hi, maps: make(map[[2]int][]int)}
	defer func() {
		if err != nil {
			f.abortGroup()
		}
	}()
	var tid uint32
	var t *tableMeta
	for n := 0; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		win, ok := h.pop()
		if !ok {
			break
		}
		sk := win.key()
		if id := binary.BigEndian.Uint32(sk); t == nil || id != tid {
			tid, t = id, dv.tables[id]
		}
		if t == nil {
			h.advance()
			continue
		}
		tl := tenantLen(t.cur().tenantKind, sk[4:])
		if tl < 0 {
			return nil, fmt.Errorf("fold: malformed sort key in table %s", t.Name)
		}
		tt := sk[:4+tl]
		if f.t == nil || !bytes.Equal(tt, f.tt) {
			if err := f.finishGroup(); err != nil {
				return nil, err
			}
			if err := f.startGroup(t, tt); err != nil {
				return nil, err
			}
		}
		if err := f.entry(sk[4+tl:], win.seq(), win.op(), win.(*segSrc).it.payload); err != nil {
			return nil, err
		}
		h.advance()
	}
	if h.err != nil {
		return nil, h.err
	}
	if err := f.finishGroup(); err != nil {
		return nil, err
	}
	for k, b := range dv.bases {
		if _, done := e.bases[k]; !done && !dv.baseAlive(b) {
			e.bases[k] = nil
			e.obsolete = append(e.obsolete, b.name())
		}
	}
	return e, nil
}

// folder builds the base file of one (table, tenant) group at a time.
type folder struct {
	s    *Store
	dv   *dataVer
	e    *edit
	hi   int64
	maps map[[2]int][]int

	t      *tableMeta
	g      *genMeta
	tt     []byte
	old    *baseMeta
	oldCF  *cachedFile
	oldIt  *baseIter
	oldOK  bool
	w      *baseWriter
	wNum   uint64
	vals   [][]byte
	raw    [][]byte
	nGroup int
}

func (f *folder) startGroup(t *tableMeta, tt []byte) error {
	f.t, f.g = t, t.cur()
	f.tt = append(f.tt[:0], tt...)
	f.old = f.dv.bases[string(tt)]
	f.oldIt, f.oldOK = nil, false
	if f.old != nil && f.dv.baseAlive(f.old) {
		cf, err := f.s.files.acquire(f.old.name())
		if err != nil {
			return err
		}
		f.oldCF = cf
		lay, err := cf.baseLayout()
		if err != nil {
			return err
		}
		f.oldIt = newBaseIter(cf.f, lay, f.g, nil, nil, readBatchRows)
		f.oldOK = f.oldIt.next()
		if err := f.oldIt.err(); err != nil {
			return err
		}
	}
	return nil
}

func (f *folder) write(key []byte, vals [][]byte) error {
	if f.w == nil {
		f.wNum = f.s.allocFile()
		tenant := "NULL"
		if f.tt[4] == 1 {
			tenant = decodeValue(f.g.tenantKind, f.tt[5:])
		}
		w, err := newBaseWriter(f.s.objs, baseName(f.wNum), f.t.Name, tenant, f.g, f.s.codec)
		if err != nil {
			return err
		}
		f.w = w
	}
	return f.w.add(key, vals)
}

// drainOld writes old base rows with keys below key (all if key is nil) and
// skips a row with key itself.
func (f *folder) drainOld(key []byte) error {
	for f.oldOK {
		c := -1
		if key != nil {
			c = bytes.Compare(f.oldIt.key, key)
		}
		if c > 0 {
			return nil
		}
		if c < 0 {
			f.vals = f.oldIt.values(f.vals[:0])
			if err := f.write(f.oldIt.key, f.vals); err != nil {
				return err
			}
		}
		f.oldOK = f.oldIt.next()
		if err := f.oldIt.err(); err != nil {
			return err
		}
		if c == 0 {
			return nil
		}
	}
	return nil
}

func (f *folder) entry(key []byte, seq int64, op uint8, payload []byte) error {
	if err := f.drainOld(key); err != nil {
		return err
	}
	if seq < f.t.TruncSeq || op != opUpsert {
		return nil
	}
	gen, raw, err := decodePayload(f.raw[:0], payload)
	f.raw = raw
	if err != nil {
		return err
	}
	vals := raw
	if gen != len(f.t.Gens)-1 {
		if gen >= len(f.t.Gens) {
			return fmt.Errorf("fold: payload of unknown schema generation %d", gen)
		}
		mk := [2]int{int(f.t.ID), gen}
		m, ok := f.maps[mk]
		if !ok {
			m = colMap(&f.t.Gens[gen], f.g)
			f.maps[mk] = m
		}
		f.vals = f.vals[:0]
		for _, j := range m {
			if j >= 0 && j < len(raw) {
				f.vals = append(f.vals, raw[j])
			} else {
				f.vals = append(f.vals, nil)
			}
		}
		vals = f.vals
	}
	return f.write(key, vals)
}

func (f *folder) finishGroup() error {
	if f.t == nil {
		return nil
	}
	if err := f.drainOld(nil); err != nil {
		return err
	}
	f.closeOld()
	k := string(f.tt)
	if f.w != nil {
		size, err := f.w.finish()
		rows := f.w.rows
		f.w = nil
		if err != nil {
			return err
		}
		f.e.bases[k] = &baseMeta{Num: f.wNum, Table: f.t.ID, Tenant: slices.Clone(f.tt[4:]), H: f.hi, Rows: rows, Size: size}
	} else if f.old != nil {
		f.e.bases[k] = nil
	}
	if f.old != nil {
		f.e.obsolete = append(f.e.obsolete, f.old.name())
	}
	f.t, f.old = nil, nil
	f.nGroup++
	return nil
}

func (f *folder) closeOld() {
	if f.oldIt != nil {
		_ = f.oldIt.close() // read errors surfaced through err() already
		f.oldIt = nil
	}
	if f.oldCF != nil {
		f.s.files.release(f.oldCF)
		f.oldCF = nil
	}
	f.oldOK = false
}

func (f *folder) abortGroup() {
	f.closeOld()
	if f.w != nil && !f.s.dead.Load() {
		_ = f.w.abort() // the fold's error is reported instead
	}
	f.w = nil
}
