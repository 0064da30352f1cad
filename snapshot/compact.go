package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/internal/lowprio"
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
	// workers is how many merges, or parts of a fold, run at once while
	// staging has no base files, i.e. after an initial snapshot (0:
	// defaultCompactWorkers). Each holds its own input iterators and one
	// output file's buffers, a few tens of MiB at most.
	workers int
}

// defaultCompactWorkers: two merges or fold parts at once while staging has
// no base files. After an initial snapshot the merges and the fold rewrite
// every row, and one goroutine left the second core idle (scale L: 353 s).
// Once base files exist, compaction runs beside a busy replication stream
// and keeps to one goroutine: two cost the apply of a large backlog a fifth
// of its rate at scale L.
const defaultCompactWorkers = 2

// workersFor is how many merges or fold parts run at once on dv.
func (p policy) workersFor(dv *dataVer) int {
	if len(dv.bases) > 0 {
		return 1
	}
	if p.workers > 0 {
		return p.workers
	}
	return defaultCompactWorkers
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
	if !s.isWriter() {
		return false, ErrNotWriter
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
	var edits []*edit
	switch kind {
	case compactMerge:
		edits, err = s.mergeWindows(ctx, dv, s.opts.policy.concurrentWindows(dv.segs, segs, s.opts.policy.workersFor(dv)))
	case compactFold:
		var e *edit
		e, err = s.fold(ctx, dv, segs)
		edits = []*edit{e}
	}
	if err != nil {
		// The edits are nil unless their outputs were complete when the
		// error came (e.g. closing a merge's inputs failed): they are not
		// installed.
		if !s.dead.Load() {
			for _, e := range edits {
				s.removeOutputs(e)
			}
		}
		return false, err
	}
	did := false
	for i, e := range edits {
		installed, err := s.installEdit(dv, e)
		if err != nil || !installed {
			if !s.dead.Load() {
				for _, e := range edits[i:] {
					s.removeOutputs(e)
				}
			}
			return did, err
		}
		did = true
		s.m.compactions.WithLabelValues(kind.String()).Inc()
		s.m.compactionSeconds.WithLabelValues(kind.String()).Observe(time.Since(start).Seconds())
		s.log.Debug("compacted staging", "kind", kind.String(), "inputs", len(e.inputs),
			"bases", len(e.bases), "seconds", time.Since(start).Seconds())
	}
	return did, nil
}

// concurrentWindows adds to first, the window pick chose, more windows of
// adjacent segments to merge at the same time (up to workers), while
// the segments left after merging them would still be more than fanIn.
// Windows are disjoint runs of adjacent segments: merging each keeps the
// segments' order, which lookups rely on (newest first).
func (p policy) concurrentWindows(segs, first []*segMeta, workers int) [][]*segMeta {
	wins := [][]*segMeta{first}
	n := len(segs) - (len(first) - 1)
	var free [][]*segMeta
	if i := slices.Index(segs, first[0]); i >= 0 {
		free = append(free, segs[:i], segs[i+len(first):])
	}
	for len(wins) < workers && n > p.fanIn {
		// The longest stretch of segments outside the chosen windows.
		best := -1
		for i, f := range free {
			if len(f) >= 2 && (best < 0 || len(f) > len(free[best])) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		f := free[best]
		w := window(f, p.fanIn)
		wins = append(wins, w)
		n -= len(w) - 1
		i := slices.Index(f, w[0])
		free = append(free[:best], append([][]*segMeta{f[:i], f[i+len(w):]}, free[best+1:]...)...)
	}
	return wins
}

// mergeWindows merges each window into one segment, at the same time. On
// error it returns the edits whose outputs are complete (for removal).
func (s *Store) mergeWindows(ctx context.Context, dv *dataVer, wins [][]*segMeta) ([]*edit, error) {
	edits := make([]*edit, len(wins))
	g, gctx := errgroup.WithContext(ctx)
	for i, w := range wins {
		g.Go(func() error {
			defer lowprio.Lower()()
			e, err := s.merge(gctx, dv, w)
			edits[i] = e
			return err
		})
	}
	err := g.Wait()
	return slices.DeleteFunc(edits, func(e *edit) bool { return e == nil }), err
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
		_ = s.discardFile(e.out.name()) // an orphan is removed by the next Open anyway
	}
	for _, b := range e.bases {
		if b != nil {
			_ = s.discardFile(b.name())
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
	s.mu.Lock()
	st := s.stateLocked()
	s.mu.Unlock()
	le := &logEntry{Kind: entryCompact, State: st, Obsolete: slices.Clone(e.obsolete)}
	for _, in := range e.inputs {
		le.DelSegs = append(le.DelSegs, in.Num)
		le.Obsolete = append(le.Obsolete, in.name())
	}
	if e.out != nil {
		le.AddSegs = []*segMeta{e.out}
	}
	for _, tt := range slices.Sorted(maps.Keys(e.bases)) {
		if b := e.bases[tt]; b != nil {
			le.SetBases = append(le.SetBases, b)
		} else {
			le.DelBases = append(le.DelBases, baseRef{Table: binary.BigEndian.Uint32([]byte(tt)), Tenant: []byte(tt[4:])})
		}
	}
	if err := s.commitManifest(s.life, pb, le, ""); err != nil {
		return false, fmt.Errorf("install compaction: %w", err)
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
	return s.openSegSourcesFrom(segs, nil)
}

// openSegSourcesFrom opens iterators over segments from key lo (nil: all).
func (s *Store) openSegSourcesFrom(segs []*segMeta, lo []byte) ([]mergeSrc, []*cachedFile, error) {
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
		srcs = append(srcs, &segSrc{it: newSegIter(cf.f, s.lay, lo, nil, readBatchRows)})
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
// The key space is cut at (table, tenant) boundaries into parts of about
// equal size, folded at the same time.
func (s *Store) fold(ctx context.Context, dv *dataVer, segs []*segMeta) (_ *edit, err error) {
	e := &edit{kind: compactFold, inputs: segs, bases: make(map[string]*baseMeta)}
	defer func() {
		if err != nil && !s.dead.Load() {
			s.removeOutputs(e)
		}
	}()
	cuts, err := s.foldCuts(dv, segs, s.opts.policy.workersFor(dv))
	if err != nil {
		return nil, err
	}
	parts := make([]*edit, len(cuts)+1)
	g, gctx := errgroup.WithContext(ctx)
	for i := range parts {
		var lo, hi []byte
		if i > 0 {
			lo = cuts[i-1]
		}
		if i < len(cuts) {
			hi = cuts[i]
		}
		g.Go(func() error {
			defer lowprio.Lower()()
			p, err := s.foldRange(gctx, dv, segs, lo, hi)
			parts[i] = p
			return err
		})
	}
	err = g.Wait()
	for _, p := range parts {
		if p != nil {
			maps.Copy(e.bases, p.bases)
			e.obsolete = append(e.obsolete, p.obsolete...)
		}
	}
	if err != nil {
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

// foldCuts returns up to parts-1 increasing (table, tenant) prefixes that
// cut the segments' entries into parts of about equal rows, judged from the
// first key and the row count of every row group. A (table, tenant) is
// never cut: its keys all sort at or after its prefix, the previous
// groups' before it.
func (s *Store) foldCuts(dv *dataVer, segs []*segMeta, parts int) ([][]byte, error) {
	if parts < 2 {
		return nil, nil
	}
	type mark struct {
		key  []byte
		rows int64
	}
	var marks []mark
	var total int64
	for _, sg := range segs {
		cf, err := s.files.acquire(sg.name())
		if err != nil {
			return nil, err
		}
		for _, rg := range cf.f.RowGroups() {
			if k, ok := rowGroupMin(rg, s.lay.sk); ok && len(k) >= 4 {
				marks = append(marks, mark{bytes.Clone(k), rg.NumRows()})
				total += rg.NumRows()
			}
		}
		s.files.release(cf)
	}
	slices.SortFunc(marks, func(a, b mark) int { return bytes.Compare(a.key, b.key) })
	var cuts [][]byte
	var sum int64
	next := 1
	for _, m := range marks {
		if next >= parts {
			break
		}
		if sum >= total*int64(next)/int64(parts) {
			cut := m.key[:4]
			if t := dv.tables[binary.BigEndian.Uint32(m.key)]; t != nil {
				if tl := tenantLen(t.cur().tenantKind, m.key[4:]); tl >= 0 {
					cut = m.key[:4+tl]
				}
			}
			if len(cuts) == 0 || bytes.Compare(cut, cuts[len(cuts)-1]) > 0 {
				cuts = append(cuts, cut)
			}
			next++
		}
		sum += m.rows
	}
	return cuts, nil
}

// foldRange folds the segments' entries with keys in [lo, hi) (nil: no
// bound). On error it removes what it wrote and returns a nil edit.
func (s *Store) foldRange(ctx context.Context, dv *dataVer, segs []*segMeta, lo, hi []byte) (_ *edit, err error) {
	e := &edit{kind: compactFold, inputs: segs, bases: make(map[string]*baseMeta)}
	defer func() {
		if err != nil && !s.dead.Load() {
			s.removeOutputs(e)
		}
	}()
	var maxSeq int64
	for _, sg := range segs {
		maxSeq = max(maxSeq, sg.MaxSeq)
	}
	srcs, held, err := s.openSegSourcesFrom(segs, lo)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.closeSources(srcs, held)) }()
	var h mergeHeap
	h.init(srcs)

	f := &folder{s: s, dv: dv, e: e, hi: maxSeq, maps: make(map[[2]int][]int)}
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
		if hi != nil && bytes.Compare(sk, hi) >= 0 {
			break
		}
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
