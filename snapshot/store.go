package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/parquet-go/parquet-go/compress"
)

const (
	defaultMemoryLimit     = 64 << 20
	defaultCompactInterval = time.Second
	defaultMaxOpenFiles    = 256
	defaultMetaCacheSize   = 48 << 20
	metaMemTableSize       = 8 << 20
	// lsnPersistInterval bounds how long an LSN moved by Advance stays only in memory.
	lsnPersistInterval = 2 * time.Second
	// closePersistTimeout bounds the last write of the position at Close in
	// shared staging.
	closePersistTimeout = 10 * time.Second
)

// errSimulatedCrash is what test hooks return to simulate a crash.
var errSimulatedCrash = errors.New("simulated crash")

// Store is the staging store of one state directory. Its methods are safe
// for concurrent use; at most one Batch or Load is open at a time.
type Store struct {
	id    string // stateMeta.ID
	dir   string
	opts  Options
	log   *slog.Logger
	m     *metrics
	db    *pebble.DB
	objs  objects
	files *fileCache
	lay   segLayout
	codec compress.Codec // base files
	// segCodec compresses segments: they are transient and point lookups
	// decode their pages, so a fast codec (snappy) pays off.
	segCodec compress.Codec
	seed     maphash.Seed

	// dead is set when a test simulates a crash: nothing cleans up any more.
	dead atomic.Bool

	nextFile atomic.Uint64

	// writeMu serializes manifest edits (Commit, Load commit, compaction
	// install, LSN persistence). It is held during the synced pebble write,
	// never during data file I/O.
	writeMu sync.Mutex
	// compactMu allows one compaction at a time.
	compactMu sync.Mutex

	mu           sync.Mutex
	closed       bool
	cur          *dataVer
	live         map[uint64]*dataVer
	nextVerID    uint64
	obsolete     []obsoleteFiles
	lsn          LSN
	persistedLSN LSN
	lastPersist  time.Time
	snapshotDone bool
	slot         string
	lsnCh        chan struct{}
	nextSeq      int64
	nextTable    uint32
	batch        *Batch
	load         *Load
	// indexBroken: a committed batch's index updates could not be copied;
	// no new Batch until Open repairs it.
	indexBroken error
	// Shared staging (see shared.go): the writer's term and replica id,
	// the newest log entry applied, and how many applied entries the
	// key-to-tenant index still has to take in.
	term      uint64
	writerID  string
	entryN    uint64
	idxBehind int
	pinned    int
	commits   int64
	merges    int64
	folds     int64
	spilled   int64

	// sh is the state of shared staging; nil for local staging.
	sh *shared

	kick chan struct{}
	// life is cancelled by Close: it stops the compactor and any Compact call.
	life   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// dataVer is one immutable version of the staged data: the table schemas
// and the files that hold the rows. Readers hold references to it; files
// it uses are not deleted while it is referenced.
type dataVer struct {
	id        uint64
	epoch     uint64
	tables    map[uint32]*tableMeta
	byName    map[string]*tableMeta
	segs      []*segMeta           // ordered by (MinSeq, Num)
	bases     map[string]*baseMeta // by ttKey; shared between versions, never mutated
	segBytes  int64
	baseBytes int64
	refs      int
}

type obsoleteFiles struct {
	ver   uint64 // the last version that uses the files
	names []string
}

// derive returns a copy of dv sharing its immutable parts (not id and
// refs, which s.mu guards).
func (dv *dataVer) derive() *dataVer {
	return &dataVer{
		epoch:     dv.epoch,
		tables:    dv.tables,
		byName:    dv.byName,
		segs:      dv.segs,
		bases:     dv.bases,
		segBytes:  dv.segBytes,
		baseBytes: dv.baseBytes,
	}
}

func (dv *dataVer) setSegs(segs []*segMeta) {
	slices.SortFunc(segs, func(a, b *segMeta) int {
		if a.MinSeq != b.MinSeq {
			if a.MinSeq < b.MinSeq {
				return -1
			}
			return 1
		}
		if a.Num < b.Num {
			return -1
		}
		if a.Num > b.Num {
			return 1
		}
		return 0
	})
	dv.segs = segs
	dv.segBytes = 0
	for _, s := range segs {
		dv.segBytes += s.Size
	}
}

func (dv *dataVer) setBases(bases map[string]*baseMeta) {
	dv.bases = bases
	dv.baseBytes = 0
	for _, b := range bases {
		dv.baseBytes += b.Size
	}
}

func (dv *dataVer) setTables(tables map[uint32]*tableMeta) {
	dv.tables = tables
	dv.byName = make(map[string]*tableMeta, len(tables))
	for _, t := range tables {
		dv.byName[t.Name] = t
	}
}

// baseAlive reports whether base b still holds rows (no TRUNCATE after it).
func (dv *dataVer) baseAlive(b *baseMeta) bool {
	t := dv.tables[b.Table]
	return t != nil && b.H >= t.TruncSeq
}

// Open opens (creating if needed) the store in dir and recovers the last
// committed version: uncommitted index updates are rolled back and files no
// committed version references are removed.
func Open(ctx context.Context, dir string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MemoryLimit <= 0 {
		opts.MemoryLimit = defaultMemoryLimit
	}
	if opts.CompactInterval <= 0 {
		opts.CompactInterval = defaultCompactInterval
	}
	if opts.MaxOpenFiles <= 0 {
		opts.MaxOpenFiles = defaultMaxOpenFiles
	}
	if opts.MetaCacheSize <= 0 {
		opts.MetaCacheSize = defaultMetaCacheSize
	}
	if opts.policy.fanIn <= 1 {
		opts.policy = defaultPolicy()
	}
	if opts.Compression == "" {
		opts.Compression = "zstd"
	}
	if opts.SegmentCompression == "" {
		opts.SegmentCompression = "snappy"
	}
	if opts.LoadCompression == "" {
		opts.LoadCompression = "auto"
	}
	known := func(c string) bool { return c == "zstd" || c == "snappy" || c == "none" }
	for _, c := range []string{opts.Compression, opts.SegmentCompression} {
		if !known(c) {
			return nil, fmt.Errorf("open store: unknown compression %q", c)
		}
	}
	if c := opts.LoadCompression; !known(c) && c != "auto" {
		return nil, fmt.Errorf("open store: unknown compression %q", c)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	life, cancel := context.WithCancel(context.Background())
	var sh *shared
	var objs objects
	if opts.Shared != nil {
		so, err := opts.Shared.withDefaults()
		if err != nil {
			cancel()
			return nil, fmt.Errorf("open store: %w", err)
		}
		bo, err := newBucketObjects(life, so.Bucket, so.Prefix+"data/", filepath.Join(dir, "data"))
		if err != nil {
			cancel()
			return nil, err
		}
		sh = &shared{opts: so, b: so.Bucket, objs: bo}
		objs = bo
	} else {
		do, err := newDirObjects(filepath.Join(dir, "data"))
		if err != nil {
			cancel()
			return nil, err
		}
		objs = do
	}
	log := opts.Logger.With("component", "snapshot")
	cache := pebble.NewCache(opts.MetaCacheSize)
	popts := &pebble.Options{
		Logger:       pebbleLogger{log: log},
		MemTableSize: metaMemTableSize, // memtables are reserved from the cache
		Cache:        cache,
		// An initial snapshot writes the key-to-tenant index of its tables
		// at full speed: with pebble's default (compact at 4 level-0 files)
		// the index was rewritten while the load ran and took 13% of the
		// load's CPU. Letting level 0 grow to 16 files defers that work
		// until writes calm down; lookups check a bloom filter per file.
		L0CompactionThreshold: 16,
		L0StopWritesThreshold: 64,
	}
	for i := range popts.Levels {
		// Index lookups of new keys (every insert) mostly miss: bloom filters make that cheap.
		popts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(filepath.Join(dir, "meta"), popts)
	cache.Unref() // the DB holds its own reference
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open metadata store: %w", err)
	}
	s := &Store{
		dir:      dir,
		opts:     opts,
		log:      log,
		m:        newMetrics(opts.Registerer),
		db:       db,
		objs:     objs,
		files:    newFileCache(objs, opts.MaxOpenFiles),
		lay:      newSegLayout(),
		codec:    codecFor(opts.Compression),
		segCodec: codecFor(opts.SegmentCompression),
		seed:     maphash.MakeSeed(),
		live:     make(map[uint64]*dataVer),
		lsnCh:    make(chan struct{}),
		kick:     make(chan struct{}, 1),
		sh:       sh,
		life:     life,
		cancel:   cancel,
	}
	if sh != nil {
		err = s.recoverShared(ctx)
	} else {
		err = s.recover()
	}
	if err != nil {
		cancel()
		return nil, errors.Join(err, db.Close())
	}
	s.wg.Add(1)
	go s.background(s.life)
	if sh != nil {
		s.wg.Add(1)
		go s.sharedLoop(s.life)
	}
	return s, nil
}

// recover loads the manifest and cleans up after a crash.
func (s *Store) recover() error {
	if err := recoverIndex(s.db); err != nil {
		return err
	}
	st := stateMeta{NextSeq: 1, NextFile: 1, NextTable: 1}
	if v, closer, err := s.db.Get([]byte(keyState)); err == nil {
		err = json.Unmarshal(v, &st)
		_ = closer.Close() // Get's closer only releases memory
		if err != nil {
			return fmt.Errorf("decode manifest state: %w", err)
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("read manifest state: %w", err)
	}
	tables := make(map[uint32]*tableMeta)
	var segs []*segMeta
	bases := make(map[string]*baseMeta)
	err := scanPrefix(s.db, []byte(prefixManif), func(k, v []byte) error {
		key := string(k)
		switch {
		case strings.HasPrefix(key, prefixTable):
			t := &tableMeta{}
			if err := json.Unmarshal(v, t); err != nil {
				return fmt.Errorf("decode table entry: %w", err)
			}
			if err := t.prepare(); err != nil {
				return err
			}
			tables[t.ID] = t
		case strings.HasPrefix(key, prefixSeg):
			sg := &segMeta{}
			if err := json.Unmarshal(v, sg); err != nil {
				return fmt.Errorf("decode segment entry: %w", err)
			}
			segs = append(segs, sg)
		case strings.HasPrefix(key, prefixBase):
			b := &baseMeta{}
			if err := json.Unmarshal(v, b); err != nil {
				return fmt.Errorf("decode base entry: %w", err)
			}
			bases[ttKey(b.Table, b.Tenant)] = b
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load manifest: %w", err)
	}
	if err := s.cleanIndex(tables); err != nil {
		return err
	}

	// Remove every data file the manifest does not reference.
	referenced := make(map[string]bool, len(segs)+len(bases))
	for _, sg := range segs {
		referenced[sg.name()] = true
	}
	for _, b := range bases {
		referenced[b.name()] = true
	}
	names, err := s.objs.List("")
	if err != nil {
		return err
	}
	nextFile := st.NextFile
	removed := 0
	for _, name := range names {
		if num, ok := fileNum(name); ok && num >= nextFile {
			nextFile = num + 1
		}
		if referenced[name] {
			delete(referenced, name)
			continue
		}
		if err := s.objs.Remove(name); err != nil {
			return err
		}
		removed++
	}
	if len(referenced) > 0 {
		missing := make([]string, 0, len(referenced))
		for n := range referenced {
			missing = append(missing, n)
		}
		slices.Sort(missing)
		return fmt.Errorf("recover store: %d data files of the manifest are missing (first %s)", len(missing), missing[0])
	}
	if removed > 0 {
		s.log.Info("removed orphan data files", "count", removed)
	}
	s.nextFile.Store(nextFile)

	dv := &dataVer{epoch: st.Epoch}
	dv.setTables(tables)
	dv.setSegs(segs)
	dv.setBases(bases)
	s.nextVerID = 1
	s.installLocked(dv, nil)
	s.lsn, s.persistedLSN = st.LSN, st.LSN
	s.lastPersist = time.Now()
	s.snapshotDone, s.slot = st.SnapshotDone, st.Slot
	s.nextSeq, s.nextTable = st.NextSeq, st.NextTable
	s.id = st.ID
	if s.id == "" {
		var b [12]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("choose store id: %w", err)
		}
		s.id = hex.EncodeToString(b[:])
		st.ID = s.id
		if err := s.db.Set([]byte(keyState), mustJSON(st), pebble.Sync); err != nil {
			return fmt.Errorf("persist store id: %w", err)
		}
	}
	s.updateGauges()
	return nil
}

// fileNum parses the number of a data file name ("seg-%016x.parquet").
func fileNum(name string) (uint64, bool) {
	name = strings.TrimSuffix(name, ".tmp")
	name = strings.TrimSuffix(name, ".parquet")
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(name[i+1:], 16, 64)
	return n, err == nil
}

// cleanIndex removes key-to-tenant index entries of tables or index
// generations the manifest does not know (left by an aborted or crashed Load
// or by a TRUNCATE).
func (s *Store) cleanIndex(tables map[uint32]*tableMeta) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefixIndex), UpperBound: prefixEnd([]byte(prefixIndex))})
	if err != nil {
		return fmt.Errorf("scan index: %w", err)
	}
	b := s.db.NewBatch()
	n := 0
	for ok := it.First(); ok; {
		k := it.Key()
		if len(k) < len(prefixIndex)+8 {
			ok = it.Next()
			continue
		}
		id := binary.BigEndian.Uint32(k[len(prefixIndex):])
		gen := binary.BigEndian.Uint32(k[len(prefixIndex)+4:])
		t := tables[id]
		switch {
		case t == nil:
			p := indexTablePrefix(id)
			if err := b.DeleteRange(p, prefixEnd(p), nil); err != nil {
				return errors.Join(fmt.Errorf("clean index: %w", err), it.Close())
			}
			n++
			ok = it.SeekGE(prefixEnd(p))
		case gen != t.IdxGen:
			lo, hi := indexPrefix(id, gen), prefixEnd(indexPrefix(id, gen))
			if err := b.DeleteRange(lo, hi, nil); err != nil {
				return errors.Join(fmt.Errorf("clean index: %w", err), it.Close())
			}
			n++
			ok = it.SeekGE(hi)
		default:
			ok = it.SeekGE(prefixEnd(indexPrefix(id, gen)))
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("scan index: %w", err)
	}
	if n == 0 {
		return b.Close()
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return errors.Join(fmt.Errorf("clean index: %w", err), b.Close())
	}
	return b.Close()
}

func scanPrefix(db *pebble.DB, prefix []byte, fn func(k, v []byte) error) error {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return errors.Join(err, it.Close())
		}
		if err := fn(it.Key(), v); err != nil {
			return errors.Join(err, it.Close())
		}
	}
	return it.Close()
}

// Close stops the compactor, aborts an open Batch or Load, persists the
// applied LSN and closes the store. It must not run concurrently with the
// open Batch's or LoadWriters' methods. Versions still pinned become unusable.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	b, l := s.batch, s.load
	s.mu.Unlock()
	if b != nil {
		b.Abort()
	}
	var errs []error
	if l != nil {
		errs = append(errs, l.Abort())
	}
	s.cancel()
	s.wg.Wait()
	s.compactMu.Lock() // a Compact call notices the cancellation
	defer s.compactMu.Unlock()
	s.writeMu.Lock() // an in-flight commit finishes
	defer s.writeMu.Unlock()

	s.mu.Lock()
	s.closed = true
	close(s.lsnCh)
	st := s.stateLocked()
	dirty := s.lsn != s.persistedLSN && s.isWriterLocked()
	s.mu.Unlock()
	switch {
	case dirty && s.sh == nil:
		if err := s.db.Set([]byte(keyState), mustJSON(st), pebble.Sync); err != nil {
			errs = append(errs, fmt.Errorf("persist state: %w", err))
		}
	case dirty:
		ctx, cancel := context.WithTimeout(context.Background(), closePersistTimeout)
		pb := s.db.NewBatch()
		if err := s.commitManifest(ctx, pb, &logEntry{Kind: entryState, State: st}, ""); err != nil {
			errs = append(errs, fmt.Errorf("persist state: %w", err))
		}
		_ = pb.Close() // recycles the batch
		cancel()
	}
	s.files.closeAll()
	if err := s.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close metadata store: %w", err))
	}
	return errors.Join(errs...)
}

// crash abandons the store as a killed process would (tests only): nothing
// is persisted or cleaned up.
func (s *Store) crash() {
	s.dead.Store(true)
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.lsnCh)
	}
	s.mu.Unlock()
	s.files.closeAll()
	_ = s.db.Close() // the WAL holds what was written, as after a kill
}

func (s *Store) hook(point string) error {
	if s.opts.hook == nil {
		return nil
	}
	return s.opts.hook(point)
}

// State returns the applied position.
func (s *Store) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return State{LSN: s.lsn, SnapshotDone: s.snapshotDone, Slot: s.slot}
}

// WaitFor blocks until State().LSN >= lsn, ctx is done or the store closes.
func (s *Store) WaitFor(ctx context.Context, lsn LSN) error {
	for {
		s.mu.Lock()
		if s.lsn >= lsn {
			s.mu.Unlock()
			return nil
		}
		if s.closed {
			s.mu.Unlock()
			return ErrClosed
		}
		ch := s.lsnCh
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// setLSNLocked moves the applied position and wakes waiters.
func (s *Store) setLSNLocked(lsn LSN) {
	if lsn == s.lsn {
		return
	}
	s.lsn = lsn
	close(s.lsnCh)
	s.lsnCh = make(chan struct{})
}

// Advance records that there are no changes up to lsn. The position is
// visible at once and persisted lazily (with the next commit or within a
// few seconds); losing it in a crash only makes replication resume earlier.
func (s *Store) Advance(ctx context.Context, lsn LSN) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.batch != nil {
		return fmt.Errorf("advance: %w", ErrBusy)
	}
	if !s.isWriterLocked() {
		return fmt.Errorf("advance: %w", ErrNotWriter)
	}
	if lsn > s.lsn {
		s.setLSNLocked(lsn)
	}
	return nil
}

// stateLocked returns the manifest state to persist.
func (s *Store) stateLocked() stateMeta {
	return stateMeta{
		LSN:          s.lsn,
		NextSeq:      s.nextSeq,
		NextFile:     s.nextFile.Load(),
		NextTable:    s.nextTable,
		SnapshotDone: s.snapshotDone,
		Slot:         s.slot,
		Epoch:        s.cur.epoch,
		ID:           s.id,
		Term:         s.term,
		Writer:       s.writerID,
	}
}

// persistState writes the state if the LSN moved since it was last written
// (force: regardless of the interval).
func (s *Store) persistState(force bool) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if s.lsn == s.persistedLSN || (!force && time.Since(s.lastPersist) < lsnPersistInterval) || s.batch != nil || s.load != nil {
		s.mu.Unlock()
		return nil
	}
	if !s.isWriterLocked() {
		s.mu.Unlock()
		return nil
	}
	st := s.stateLocked()
	s.mu.Unlock()
	pb := s.db.NewBatch()
	defer pb.Close() // recycles the batch; committed or not
	if err := s.commitManifest(s.life, pb, &logEntry{Kind: entryState, State: st}, ""); err != nil {
		return fmt.Errorf("persist state: %w", err)
	}
	s.mu.Lock()
	s.persistedLSN = st.LSN
	s.lastPersist = time.Now()
	s.mu.Unlock()
	return nil
}

// Stats returns the store's current files and activity.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	dv := s.cur
	st := Stats{
		LSN:            s.lsn,
		Tables:         len(dv.tables),
		Segments:       len(dv.segs),
		SegmentBytes:   dv.segBytes,
		BaseFiles:      len(dv.bases),
		BaseBytes:      dv.baseBytes,
		PinnedVersions: s.pinned,
		Commits:        s.commits,
		Merges:         s.merges,
		Folds:          s.folds,
		Compactions:    s.merges + s.folds,
		SpilledBytes:   s.spilled,
		OpenFiles:      s.files.openCount(),
	}
	st.Files = st.Segments + st.BaseFiles
	st.Bytes = st.SegmentBytes + st.BaseBytes
	for _, o := range s.obsolete {
		st.ObsoleteFiles += len(o.names)
	}
	if s.batch != nil {
		st.Pending = s.batch.changes
		st.PendingBytes = s.batch.bytes
	}
	return st
}

func (s *Store) updateGauges() {
	dv := s.cur
	s.m.files.Set(float64(len(dv.segs) + len(dv.bases)))
	s.m.bytes.Set(float64(dv.segBytes + dv.baseBytes))
	s.m.segments.Set(float64(len(dv.segs)))
	s.m.baseFiles.Set(float64(len(dv.bases)))
	s.m.pinnedVersions.Set(float64(s.pinned))
}

// installLocked makes nd the current version; removed are the files of the
// previous version nd no longer uses. Returns files that can be deleted now.
func (s *Store) installLocked(nd *dataVer, removed []string) []string {
	old := s.cur
	nd.id = s.nextVerID
	s.nextVerID++
	nd.refs = 1
	s.live[nd.id] = nd
	s.cur = nd
	if old == nil {
		return nil
	}
	if len(removed) > 0 {
		s.obsolete = append(s.obsolete, obsoleteFiles{ver: old.id, names: removed})
	}
	return s.unrefLocked(old)
}

func (s *Store) refLocked(dv *dataVer) { dv.refs++ }

// unrefLocked drops a reference; returns files that became deletable.
func (s *Store) unrefLocked(dv *dataVer) []string {
	dv.refs--
	if dv.refs > 0 {
		return nil
	}
	delete(s.live, dv.id)
	if len(s.obsolete) == 0 {
		return nil
	}
	minLive := s.cur.id
	for id := range s.live {
		minLive = min(minLive, id)
	}
	var del []string
	k := 0
	for _, o := range s.obsolete {
		if o.ver < minLive {
			del = append(del, o.names...)
			continue
		}
		s.obsolete[k] = o
		k++
	}
	clear(s.obsolete[k:])
	s.obsolete = s.obsolete[:k]
	return del
}

// removeFiles deletes data files no version uses any more.
func (s *Store) removeFiles(names []string) {
	if s.dead.Load() {
		return
	}
	for _, n := range names {
		s.files.evict(n)
		if s.sh != nil {
			// Only the cached copy: the writer deletes the bucket's after
			// SharedOptions.DeleteDelay, for readers on other replicas.
			if err := s.sh.objs.dropLocal(n); err != nil {
				s.log.Warn("remove cached data file", "err", err, "file", n)
			}
			continue
		}
		if err := s.objs.Remove(n); err != nil {
			s.log.Warn("remove obsolete data file", "err", err, "file", n)
		}
	}
}

func (s *Store) unref(dv *dataVer) {
	s.mu.Lock()
	del := s.unrefLocked(dv)
	s.mu.Unlock()
	s.removeFiles(del)
}

// pinCurrent references the current version (for internal readers).
func (s *Store) pinCurrent() (*dataVer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	dv := s.cur
	s.refLocked(dv)
	return dv, nil
}

func (s *Store) allocFile() uint64 { return s.nextFile.Add(1) - 1 }

func (s *Store) kickCompactor() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// background runs the compactor and persists Advance'd LSNs.
func (s *Store) background(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.CompactInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
		if err := s.persistState(false); err != nil {
			s.log.Error("persist applied position", "err", err)
		}
		for ctx.Err() == nil && !s.opts.NoCompaction && s.isWriter() {
			did, err := s.compactOnce(ctx, false)
			if err != nil {
				if ctx.Err() == nil && !s.dead.Load() {
					s.log.Error("compact staging", "err", err)
				}
				break
			}
			if !did {
				break
			}
		}
	}
}

// pebbleLogger routes pebble's log lines to slog.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error(msg, "source", "pebble")
	panic(msg)
}
