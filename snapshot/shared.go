package snapshot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/klauspost/compress/zstd"

	"github.com/exportd/exportd/storage"
)

// Shared staging.
//
// With Options.Shared, staging lives in a bucket that several replicas
// share; the state directory only caches data files and keeps the
// key-to-tenant index. In the bucket, under SharedOptions.Prefix:
//
//	data/<file>                 data files (segments, base files), immutable
//	log/<20-digit n>.json       the manifest log: entry n is version n's change
//	checkpoint/<20-digit n>.json.zst   the whole manifest as of entry n
//
// A version is committed when its log entry exists: the entry is written
// last, after the data files it names, with a conditional write that fails
// if entry n already exists (If-None-Match). A reader therefore sees every
// committed version in order and never a half-written one: it reads the
// newest checkpoint, then entries from there until one is missing, and
// polls for the next.
//
// One replica, the writer, appends entries. It becomes the writer with
// Acquire, which appends an entry that starts a new term. A writer of an
// older term that still runs (it lost the replication slot but has not
// noticed) can no longer commit: the entry number it would write is taken,
// its write is refused and it gets ErrFenced. Every other replica follows
// the log: it installs each version as it appears (Pin sees it, WaitFor
// waits for it) and applies the entries' changes to its own key-to-tenant
// index, so that it can take over as the writer at once: Acquire resumes
// from the last committed version, with no new snapshot.
//
// Files a version stops using are deleted from the bucket only
// SharedOptions.DeleteDelay after that version, so that readers on other
// replicas that pinned an older version can finish. Data file numbers
// start at term<<40 in each term, so writers of different terms never
// write the same name; files a crashed or fenced writer left behind are
// removed by the next writer.

// Bucket is the object store shared staging lives in. storage.S3 and
// storage.FS are Buckets.
type Bucket interface {
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	// Get's error wraps storage.ErrNotExist for a missing object.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error
	// PutIfAbsent writes data only if key does not exist; otherwise its
	// error wraps storage.ErrPrecondition.
	PutIfAbsent(ctx context.Context, key string, data []byte) (string, error)
}

// SharedOptions configures shared staging (Options.Shared).
type SharedOptions struct {
	// Bucket holds staging.
	Bucket Bucket
	// Prefix is the key prefix of staging in the bucket, e.g. "staging/".
	Prefix string
	// ReplicaID names this replica in the entries it writes as the writer.
	ReplicaID string
	// PollInterval is how often a follower looks for the next log entry
	// (default 200ms).
	PollInterval time.Duration
	// DeleteDelay is how long files a version stopped using stay in the
	// bucket for readers of older versions, and how long log entries are
	// kept (default 1h).
	DeleteDelay time.Duration
	// CheckpointEvery is how many log entries the writer appends between
	// checkpoints (default 100).
	CheckpointEvery int
	// WriterAlive, if set, reports whether another replica is alive: Acquire
	// refuses (ErrWriterAlive) to take over from a writer that is.
	WriterAlive func(replicaID string) bool
}

const (
	defaultPollInterval    = 200 * time.Millisecond
	defaultDeleteDelay     = time.Hour
	defaultCheckpointEvery = 100
	// maintainInterval is how often the writer deletes what is past its
	// delay and writes a checkpoint when one is due.
	maintainInterval = 10 * time.Second
	// orphanScanInterval is how often the writer looks for data files no
	// version names.
	orphanScanInterval = 10 * time.Minute
	// reloadCheckInterval is how often a follower that finds no next entry
	// checks whether a checkpoint overtook it (it fell behind the log's
	// retention).
	reloadCheckInterval = 10 * time.Second
	// acquireAttempts bounds the entries Acquire tries to append while
	// another writer keeps appending.
	acquireAttempts = 20
	// fileTermShift: data file numbers of term t start at t<<fileTermShift.
	fileTermShift = 40
	keyShared     = "x/shared" // -> sharedMeta JSON
	entryKeyWidth = 20
)

// ErrFenced is returned by a commit of a store that was the shared staging
// writer when another replica has taken over: the commit did not happen.
// The store follows the log again.
var ErrFenced = errors.New("another replica took over as the staging writer")

// ErrNotWriter is returned by writes to shared staging on a replica that is
// not the writer (see Store.Acquire).
var ErrNotWriter = errors.New("this replica is not the staging writer")

// ErrWriterAlive is returned by Acquire while the current writer, another
// replica, is alive (SharedOptions.WriterAlive).
var ErrWriterAlive = errors.New("the staging writer is alive")

// Entry kinds.
const (
	entryAcquire = "acquire"
	entryBatch   = "batch"
	entryLoad    = "load"
	entryCompact = "compact"
	entryState   = "state"
)

// logEntry is one manifest change: in shared staging an object of the log,
// in local staging written to pebble by manifestOps.
type logEntry struct {
	N    uint64 `json:"n"`
	Kind string `json:"kind"`
	// Time is the writer's clock (Unix ms) when it wrote the entry.
	Time  int64     `json:"time"`
	State stateMeta `json:"state"`
	// Replace: the entry's tables and segments replace the whole version (a Load).
	Replace  bool         `json:"replace,omitempty"`
	Tables   []*tableMeta `json:"tables,omitempty"` // added or changed
	AddSegs  []*segMeta   `json:"add_segs,omitempty"`
	DelSegs  []uint64     `json:"del_segs,omitempty"`
	SetBases []*baseMeta  `json:"set_bases,omitempty"`
	DelBases []baseRef    `json:"del_bases,omitempty"`
	// Obsolete are the data files versions from this one on no longer use.
	Obsolete []string `json:"obsolete,omitempty"`
	// Nonce is random: a writer whose conditional write was retried after a
	// lost answer, and refused because the first attempt wrote, recognises
	// its own entry by it.
	Nonce string `json:"nonce"`
}

type baseRef struct {
	Table  uint32 `json:"table"`
	Tenant []byte `json:"tenant"`
}

// checkpointData is the whole manifest as of entry N.
type checkpointData struct {
	N        uint64        `json:"n"`
	State    stateMeta     `json:"state"`
	Tables   []*tableMeta  `json:"tables"`
	Segs     []*segMeta    `json:"segs"`
	Bases    []*baseMeta   `json:"bases"`
	Obsolete []obsoleteRec `json:"obsolete,omitempty"`
}

// obsoleteRec is a data file no current version uses, since At (Unix ms).
type obsoleteRec struct {
	Name string `json:"name"`
	At   int64  `json:"at"`
}

// sharedMeta is what the state directory records of shared staging.
type sharedMeta struct {
	// StoreID is the shared store's id the index belongs to.
	StoreID string `json:"store_id"`
	// IdxPos: the key-to-tenant index holds the effects of the log's
	// entries up to here.
	IdxPos uint64 `json:"idx_pos"`
}

// shared is the state of a store in shared staging.
type shared struct {
	opts SharedOptions
	b    Bucket
	objs *bucketObjects

	// Guarded by Store.writeMu:
	next     uint64 // the log entry to read or write next
	lastCkpt uint64 // the newest checkpoint written or read
	idxPos   uint64
	idxQueue []*logEntry // applied entries whose index effects are pending
	idxGap   bool        // the index must be rebuilt from the current version
	// lastReloadCheck is when a follower last looked for a newer checkpoint.
	lastReloadCheck time.Time
	lastMaintain    time.Time
	orphansDone     bool // this term's writer removed earlier terms' orphans
	lastOrphanScan  time.Time

	// Guarded by Store.mu:
	writer bool
	myTerm uint64 // the term this store acquired

	pending  []obsoleteRec // files to delete from the bucket once past DeleteDelay
	lastPoll time.Time     // a follower's last successful read of the log
}

func (o *SharedOptions) withDefaults() (SharedOptions, error) {
	c := *o
	if c.Bucket == nil {
		return c, errors.New("shared staging: no bucket")
	}
	if c.PollInterval <= 0 {
		c.PollInterval = defaultPollInterval
	}
	if c.DeleteDelay <= 0 {
		c.DeleteDelay = defaultDeleteDelay
	}
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = defaultCheckpointEvery
	}
	if c.ReplicaID == "" {
		c.ReplicaID = "exportd"
	}
	return c, nil
}

func entryKey(prefix string, n uint64) string {
	return fmt.Sprintf("%slog/%0*d.json", prefix, entryKeyWidth, n)
}

func checkpointKey(prefix string, n uint64) string {
	return fmt.Sprintf("%scheckpoint/%0*d.json.zst", prefix, entryKeyWidth, n)
}

// numberOf parses the entry or checkpoint number of a log or checkpoint key.
func numberOf(key string) (uint64, bool) {
	i := strings.LastIndexByte(key, '/')
	name := key[i+1:]
	j := strings.IndexByte(name, '.')
	if j != entryKeyWidth {
		return 0, false
	}
	n, err := strconv.ParseUint(name[:j], 10, 64)
	return n, err == nil
}

// SharedState describes a store's place in shared staging.
type SharedState struct {
	// Shared is false for local staging (the rest is then zero).
	Shared bool
	// Writer reports whether this store is the writer.
	Writer bool
	// Term is the current writer's term and WriterID its replica id (from
	// the newest entry seen).
	Term     uint64
	WriterID string
	// Entry is the newest log entry applied.
	Entry uint64
	// LastPoll is when a follower last read the log successfully.
	LastPoll time.Time
	// IndexBehind counts applied entries whose index effects are pending.
	IndexBehind int
}

// Shared returns the store's place in shared staging.
func (s *Store) Shared() SharedState {
	if s.sh == nil {
		return SharedState{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return SharedState{Shared: true, Writer: s.sh.writer, Term: s.term, WriterID: s.writerID,
		Entry: s.entryN, LastPoll: s.sh.lastPoll, IndexBehind: s.idxBehind}
}

// isWriter reports whether the store may write (always, in local staging).
func (s *Store) isWriter() bool {
	if s.sh == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sh.writer
}

func (s *Store) isWriterLocked() bool { return s.sh == nil || s.sh.writer }

// readEntry reads log entry n; the error wraps storage.ErrNotExist if it
// is not there (yet).
func (sh *shared) readEntry(ctx context.Context, n uint64) (*logEntry, error) {
	rc, err := sh.b.Get(ctx, entryKey(sh.opts.Prefix, n))
	if err != nil {
		return nil, fmt.Errorf("read log entry %d: %w", n, err)
	}
	data, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("read log entry %d: %w", n, err)
	}
	e := &logEntry{}
	if err := json.Unmarshal(data, e); err != nil {
		return nil, fmt.Errorf("decode log entry %d: %w", n, err)
	}
	if e.N != n {
		return nil, fmt.Errorf("decode log entry %d: it says it is entry %d", n, e.N)
	}
	for _, t := range e.Tables {
		if err := t.prepare(); err != nil {
			return nil, fmt.Errorf("decode log entry %d: %w", n, err)
		}
	}
	return e, nil
}

// appendEntry writes e as entry e.N, only if there is none yet; the error
// wraps storage.ErrPrecondition if there is.
func (sh *shared) appendEntry(ctx context.Context, e *logEntry) error {
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return fmt.Errorf("append log entry %d: %w", e.N, err)
	}
	e.Nonce = hex.EncodeToString(nonce[:])
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode log entry %d: %w", e.N, err)
	}
	_, err = sh.b.PutIfAbsent(ctx, entryKey(sh.opts.Prefix, e.N), data)
	if errors.Is(err, storage.ErrPrecondition) {
		// Ours, if a retry of a write that succeeded was refused.
		if got, rerr := sh.readEntry(ctx, e.N); rerr == nil && got.Nonce == e.Nonce {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("append log entry %d: %w", e.N, err)
	}
	return nil
}

// latestCheckpoint returns the number of the newest checkpoint (0: none).
func (sh *shared) latestCheckpoint(ctx context.Context) (uint64, error) {
	var newest uint64
	err := sh.b.List(ctx, sh.opts.Prefix+"checkpoint/", func(oi storage.ObjectInfo) error {
		if n, ok := numberOf(oi.Key); ok && n > newest {
			newest = n
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("list checkpoints: %w", err)
	}
	return newest, nil
}

func (sh *shared) readCheckpoint(ctx context.Context, n uint64) (*checkpointData, error) {
	rc, err := sh.b.Get(ctx, checkpointKey(sh.opts.Prefix, n))
	if err != nil {
		return nil, fmt.Errorf("read checkpoint %d: %w", n, err)
	}
	defer rc.Close() // read-only
	zr, err := zstd.NewReader(rc, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("read checkpoint %d: %w", n, err)
	}
	defer zr.Close()
	c := &checkpointData{}
	if err := json.NewDecoder(zr).Decode(c); err != nil {
		return nil, fmt.Errorf("decode checkpoint %d: %w", n, err)
	}
	if c.N != n {
		return nil, fmt.Errorf("decode checkpoint %d: it says it is checkpoint %d", n, c.N)
	}
	for _, t := range c.Tables {
		if err := t.prepare(); err != nil {
			return nil, fmt.Errorf("decode checkpoint %d: %w", n, err)
		}
	}
	return c, nil
}

func (sh *shared) writeCheckpoint(ctx context.Context, c *checkpointData) error {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("write checkpoint %d: %w", c.N, err)
	}
	if err := json.NewEncoder(zw).Encode(c); err != nil {
		return errors.Join(fmt.Errorf("encode checkpoint %d: %w", c.N, err), zw.Close())
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("encode checkpoint %d: %w", c.N, err)
	}
	// Unconditional: a checkpoint's content follows from the log up to N.
	if _, err := sh.b.Put(ctx, checkpointKey(sh.opts.Prefix, c.N), &buf); err != nil {
		return fmt.Errorf("write checkpoint %d: %w", c.N, err)
	}
	return nil
}

// readSharedMeta reads what the state directory records of shared staging.
func readSharedMeta(db *pebble.DB) (sharedMeta, error) {
	var m sharedMeta
	v, closer, err := db.Get([]byte(keyShared))
	if errors.Is(err, pebble.ErrNotFound) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("read shared staging state: %w", err)
	}
	err = json.Unmarshal(v, &m)
	_ = closer.Close() // releases memory only
	if err != nil {
		return m, fmt.Errorf("decode shared staging state: %w", err)
	}
	return m, nil
}

// manifest is the content of one version being read from the bucket.
type manifest struct {
	n       uint64
	state   stateMeta
	tables  map[uint32]*tableMeta
	segs    map[uint64]*segMeta
	bases   map[string]*baseMeta
	pending []obsoleteRec
}

func manifestFromCheckpoint(c *checkpointData) *manifest {
	m := &manifest{n: c.N, state: c.State, tables: make(map[uint32]*tableMeta, len(c.Tables)),
		segs: make(map[uint64]*segMeta, len(c.Segs)), bases: make(map[string]*baseMeta, len(c.Bases)),
		pending: slices.Clone(c.Obsolete)}
	for _, t := range c.Tables {
		m.tables[t.ID] = t
	}
	for _, sg := range c.Segs {
		m.segs[sg.Num] = sg
	}
	for _, b := range c.Bases {
		m.bases[ttKey(b.Table, b.Tenant)] = b
	}
	return m
}

// apply applies entry e to m.
func (m *manifest) apply(e *logEntry) {
	m.n = e.N
	m.state = e.State
	if e.Replace {
		m.tables = make(map[uint32]*tableMeta, len(e.Tables))
		m.segs = make(map[uint64]*segMeta, len(e.AddSegs))
		m.bases = make(map[string]*baseMeta)
	}
	for _, t := range e.Tables {
		m.tables[t.ID] = t
	}
	for _, n := range e.DelSegs {
		delete(m.segs, n)
	}
	for _, sg := range e.AddSegs {
		m.segs[sg.Num] = sg
	}
	for _, r := range e.DelBases {
		delete(m.bases, ttKey(r.Table, r.Tenant))
	}
	for _, b := range e.SetBases {
		m.bases[ttKey(b.Table, b.Tenant)] = b
	}
	for _, name := range e.Obsolete {
		m.pending = append(m.pending, obsoleteRec{Name: name, At: e.Time})
	}
}

// hasIndexEffects reports whether e changes the key-to-tenant index.
func (e *logEntry) hasIndexEffects() bool {
	return e.Replace || (e.Kind == entryBatch && (len(e.AddSegs) > 0 || len(e.Tables) > 0))
}

// loadShared reads the newest version from the bucket: the newest
// checkpoint and the entries after it.
func (sh *shared) loadShared(ctx context.Context) (*manifest, []*logEntry, error) {
	c, err := sh.latestCheckpoint(ctx)
	if err != nil {
		return nil, nil, err
	}
	m := &manifest{state: stateMeta{NextSeq: 1, NextFile: 1, NextTable: 1}, tables: map[uint32]*tableMeta{},
		segs: map[uint64]*segMeta{}, bases: map[string]*baseMeta{}}
	if c > 0 {
		cd, err := sh.readCheckpoint(ctx, c)
		if err != nil {
			return nil, nil, err
		}
		m = manifestFromCheckpoint(cd)
	}
	var entries []*logEntry
	for n := m.n + 1; ; n++ {
		e, err := sh.readEntry(ctx, n)
		if errors.Is(err, storage.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		m.apply(e)
		entries = append(entries, e)
	}
	sh.lastCkpt = c
	return m, entries, nil
}

// recoverShared opens the store's version from the bucket, and prepares the
// local key-to-tenant index to catch up with it.
func (s *Store) recoverShared(ctx context.Context) error {
	sh := s.sh
	if err := recoverIndex(s.db); err != nil {
		return err
	}
	// A state directory that held local staging: its manifest is not this one.
	if err := s.db.DeleteRange([]byte(prefixManif), []byte(manifestStop), pebble.Sync); err != nil {
		return fmt.Errorf("clear local manifest: %w", err)
	}
	meta, err := readSharedMeta(s.db)
	if err != nil {
		return err
	}
	m, entries, err := sh.loadShared(ctx)
	if err != nil {
		return fmt.Errorf("open shared staging: %w", err)
	}
	sh.next = m.n + 1
	sh.idxPos = meta.IdxPos
	switch {
	case meta.StoreID != m.state.ID || meta.IdxPos > m.n:
		// Another staging's index, or one ahead of the bucket (the bucket
		// was replaced): start over.
		sh.idxGap = true
	case meta.IdxPos < m.n:
		// Replay the entries the index misses, from the log.
		items, err := s.sharedIndexBacklog(ctx, meta.IdxPos, m.n, entries)
		if err != nil {
			s.log.Warn("rebuilding the key-to-tenant index: the log no longer holds what it missed", "err", err, "index_at", meta.IdxPos, "log_at", m.n)
			sh.idxGap = true
		} else {
			sh.idxQueue = items
		}
	}
	if sh.idxGap {
		sh.idxQueue = nil
	}
	if err := s.cleanIndex(m.tables); err != nil {
		return err
	}
	dv := m.dataVer()
	// Cached files no version uses.
	referenced := make(map[string]bool, len(dv.segs)+len(dv.bases))
	for _, sg := range dv.segs {
		referenced[sg.name()] = true
	}
	for _, b := range dv.bases {
		referenced[b.name()] = true
	}
	names, err := s.objs.List("")
	if err != nil {
		return err
	}
	for _, name := range names {
		if !referenced[name] {
			if err := sh.objs.dropLocal(name); err != nil {
				return err
			}
		}
	}
	s.nextVerID = 1
	s.installLocked(dv, nil)
	s.setStateLocked(m.n, m.state)
	s.persistedLSN = m.state.LSN
	s.lastPersist = time.Now()
	sh.pending = m.pending
	sh.lastPoll = time.Now()
	s.idxBehind = sh.indexBehind()
	s.updateGauges()
	return nil
}

// indexBehind counts the entries whose index effects are pending (one for
// a rebuild). Callers hold writeMu.
func (sh *shared) indexBehind() int {
	if sh.idxGap {
		return 1 + len(sh.idxQueue)
	}
	return len(sh.idxQueue)
}

// sharedIndexBacklog returns the entries after from up to to whose index
// effects are to be applied, reading from the log those before entries[0]
// (which follow the checkpoint).
func (s *Store) sharedIndexBacklog(ctx context.Context, from, to uint64, entries []*logEntry) ([]*logEntry, error) {
	first := to + 1
	if len(entries) > 0 {
		first = entries[0].N
	}
	var items []*logEntry
	for n := from + 1; n < first; n++ {
		e, err := s.sh.readEntry(ctx, n)
		if err != nil {
			return nil, err
		}
		if e.hasIndexEffects() {
			items = append(items, e)
		}
	}
	for _, e := range entries {
		if e.N > from && e.hasIndexEffects() {
			items = append(items, e)
		}
	}
	return items, nil
}

// dataVer builds the version m describes.
func (m *manifest) dataVer() *dataVer {
	dv := &dataVer{epoch: m.state.Epoch}
	dv.setTables(m.tables)
	segs := make([]*segMeta, 0, len(m.segs))
	for _, sg := range m.segs {
		segs = append(segs, sg)
	}
	dv.setSegs(segs)
	dv.setBases(m.bases)
	return dv
}

// setStateLocked takes the store-wide state of entry n.
func (s *Store) setStateLocked(n uint64, st stateMeta) {
	s.setLSNLocked(st.LSN)
	s.snapshotDone, s.slot = st.SnapshotDone, st.Slot
	s.nextSeq, s.nextTable = st.NextSeq, st.NextTable
	s.nextFile.Store(st.NextFile)
	s.id = st.ID
	s.term, s.writerID = st.Term, st.Writer
	s.entryN = n
}

// applyEntryLocked installs the version entry e makes (a follower's).
// Callers hold writeMu.
func (s *Store) applyEntryLocked(e *logEntry) {
	sh := s.sh
	s.mu.Lock()
	cur := s.cur
	nd := cur.derive()
	nd.epoch = e.State.Epoch
	if e.Replace {
		nd.setTables(map[uint32]*tableMeta{})
		nd.setBases(map[string]*baseMeta{})
		nd.segs = nil
	}
	if len(e.Tables) > 0 {
		tables := make(map[uint32]*tableMeta, len(nd.tables)+len(e.Tables))
		for id, t := range nd.tables {
			tables[id] = t
		}
		for _, t := range e.Tables {
			tables[t.ID] = t
		}
		nd.setTables(tables)
	}
	if len(e.DelSegs) > 0 || len(e.AddSegs) > 0 || e.Replace {
		del := make(map[uint64]bool, len(e.DelSegs))
		for _, n := range e.DelSegs {
			del[n] = true
		}
		segs := make([]*segMeta, 0, len(nd.segs)+len(e.AddSegs))
		for _, sg := range nd.segs {
			if !del[sg.Num] {
				segs = append(segs, sg)
			}
		}
		nd.setSegs(append(segs, e.AddSegs...))
	}
	if len(e.SetBases) > 0 || len(e.DelBases) > 0 {
		bases := make(map[string]*baseMeta, len(nd.bases)+len(e.SetBases))
		for k, b := range nd.bases {
			bases[k] = b
		}
		for _, r := range e.DelBases {
			delete(bases, ttKey(r.Table, r.Tenant))
		}
		for _, b := range e.SetBases {
			bases[ttKey(b.Table, b.Tenant)] = b
		}
		nd.setBases(bases)
	}
	del := s.installLocked(nd, slices.Clone(e.Obsolete))
	s.setStateLocked(e.N, e.State)
	s.persistedLSN = e.State.LSN
	for _, name := range e.Obsolete {
		sh.pending = append(sh.pending, obsoleteRec{Name: name, At: e.Time})
	}
	if e.hasIndexEffects() && !sh.idxGap {
		sh.idxQueue = append(sh.idxQueue, e)
	}
	s.idxBehind = sh.indexBehind()
	s.commits++
	s.updateGauges()
	s.mu.Unlock()
	sh.next = e.N + 1
	s.removeFiles(del)
}

// follow reads the log entries that appeared since the last call and
// installs their versions, then applies their index effects. It does
// nothing on the writer.
func (s *Store) follow(ctx context.Context) error {
	sh := s.sh
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.isWriter() {
		return nil
	}
	n := 0
	for {
		e, err := sh.readEntry(ctx, sh.next)
		if errors.Is(err, storage.ErrNotExist) {
			break
		}
		if err != nil {
			return err
		}
		s.applyEntryLocked(e)
		n++
	}
	s.mu.Lock()
	sh.lastPoll = time.Now()
	s.mu.Unlock()
	if n == 0 && time.Since(sh.lastReloadCheck) > reloadCheckInterval {
		sh.lastReloadCheck = time.Now()
		if err := s.reloadIfOvertakenLocked(ctx); err != nil {
			return err
		}
	}
	return s.catchUpIndexLocked(ctx)
}

// reloadIfOvertakenLocked reloads the whole version from the newest
// checkpoint if that is past the entry this follower waits for: the
// entries it missed were deleted (it was stopped or cut off for longer
// than the log keeps them).
func (s *Store) reloadIfOvertakenLocked(ctx context.Context) error {
	sh := s.sh
	c, err := sh.latestCheckpoint(ctx)
	if err != nil || c < sh.next {
		return err
	}
	m, _, err := sh.loadShared(ctx)
	if err != nil {
		return err
	}
	s.log.Warn("follower fell behind the log's retention: reloading staging from a checkpoint", "entry", sh.next, "checkpoint", c)
	s.mu.Lock()
	old := s.cur
	removed := make([]string, 0, len(old.segs)+len(old.bases))
	for _, sg := range old.segs {
		removed = append(removed, sg.name())
	}
	for _, b := range old.bases {
		removed = append(removed, b.name())
	}
	del := s.installLocked(m.dataVer(), removed)
	s.setStateLocked(m.n, m.state)
	sh.pending = m.pending
	sh.idxGap, sh.idxQueue = true, nil
	s.idxBehind = sh.indexBehind()
	s.updateGauges()
	s.mu.Unlock()
	sh.next = m.n + 1
	s.removeFiles(del)
	return nil
}

// catchUpIndexLocked applies the pending entries' effects to the
// key-to-tenant index, or rebuilds it from the current version. Callers
// hold writeMu.
func (s *Store) catchUpIndexLocked(ctx context.Context) error {
	sh := s.sh
	if sh.idxGap {
		if err := s.rebuildIndexLocked(ctx); err != nil {
			return err
		}
		return nil
	}
	for len(sh.idxQueue) > 0 {
		e := sh.idxQueue[0]
		if err := s.indexEntry(ctx, e); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				s.log.Warn("rebuilding the key-to-tenant index: a file an entry names is gone", "entry", e.N, "err", err)
				sh.idxGap, sh.idxQueue = true, nil
				return s.rebuildIndexLocked(ctx)
			}
			return err
		}
		sh.idxQueue = sh.idxQueue[1:]
		sh.idxPos = e.N
		s.mu.Lock()
		s.idxBehind = sh.indexBehind()
		s.mu.Unlock()
	}
	// Nothing pending: the index is current as of the newest entry.
	if sh.idxPos < sh.next-1 {
		if err := s.writeSharedMeta(sh.next - 1); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) writeSharedMeta(idxPos uint64) error {
	s.mu.Lock()
	id := s.id
	s.mu.Unlock()
	if err := s.db.Set([]byte(keyShared), mustJSON(sharedMeta{StoreID: id, IdxPos: idxPos}), pebble.NoSync); err != nil {
		return fmt.Errorf("record index position: %w", err)
	}
	s.sh.idxPos = idxPos
	return nil
}

// Acquire makes this store the writer of shared staging (it does nothing in
// local staging, where the store always is). It reads the log to its end,
// refuses while the current writer is alive (ErrWriterAlive, see
// SharedOptions.WriterAlive), brings the key-to-tenant index up to date, and
// appends an entry that starts a new term: from then on a writer of an
// earlier term cannot commit. The caller then streams from State().LSN.
func (s *Store) Acquire(ctx context.Context) error {
	if s.sh == nil {
		return nil
	}
	sh := s.sh
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	closed, writer := s.closed, sh.writer
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if writer {
		return nil
	}
	for attempt := 1; ; attempt++ {
		for {
			e, err := sh.readEntry(ctx, sh.next)
			if errors.Is(err, storage.ErrNotExist) {
				break
			}
			if err != nil {
				return fmt.Errorf("acquire staging: %w", err)
			}
			s.applyEntryLocked(e)
		}
		if err := s.reloadIfOvertakenLocked(ctx); err != nil {
			return fmt.Errorf("acquire staging: %w", err)
		}
		s.mu.Lock()
		st := s.stateLocked()
		s.mu.Unlock()
		if w := st.Writer; w != "" && w != sh.opts.ReplicaID && sh.opts.WriterAlive != nil && sh.opts.WriterAlive(w) {
			return fmt.Errorf("acquire staging from %s (term %d): %w", w, st.Term, ErrWriterAlive)
		}
		if err := s.catchUpIndexLocked(ctx); err != nil {
			return fmt.Errorf("acquire staging: %w", err)
		}
		st.Term++
		st.Writer = sh.opts.ReplicaID
		if st.ID == "" {
			var b [12]byte
			if _, err := rand.Read(b[:]); err != nil {
				return fmt.Errorf("choose store id: %w", err)
			}
			st.ID = hex.EncodeToString(b[:])
		}
		st.NextFile = max(st.NextFile, st.Term<<fileTermShift)
		e := &logEntry{N: sh.next, Kind: entryAcquire, Time: time.Now().UnixMilli(), State: st}
		err := sh.appendEntry(ctx, e)
		if errors.Is(err, storage.ErrPrecondition) && attempt < acquireAttempts {
			continue // another writer appended meanwhile: read it and try again
		}
		if err != nil {
			return fmt.Errorf("acquire staging: %w", err)
		}
		s.mu.Lock()
		s.setStateLocked(e.N, e.State)
		sh.writer, sh.myTerm = true, st.Term
		s.mu.Unlock()
		sh.next = e.N + 1
		sh.orphansDone = false
		if err := s.writeSharedMeta(e.N); err != nil {
			return err
		}
		s.log.Info("acquired staging: this replica is the writer", "term", st.Term, "entry", e.N, "lsn", st.LSN)
		s.kickCompactor()
		return nil
	}
}

// Release gives up the writer role without writing anything: the store
// follows the log again, and another replica's Acquire fences it. It must
// not run while a Batch or Load is open.
func (s *Store) Release() {
	if s.sh == nil {
		return
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if s.sh.writer {
		s.log.Info("released staging: following the writer")
	}
	s.sh.writer = false
	s.mu.Unlock()
}

// discardFile removes a data file that no committed version names (an
// aborted batch's, load's or compaction's). In shared staging only the
// cached copy: a commit whose outcome is unknown (its request timed out)
// may still land and name the file, so the bucket's copy is left to the
// writer's orphan collection, which deletes it once it is older than
// DeleteDelay and no version names it.
func (s *Store) discardFile(name string) error {
	if s.sh != nil {
		return s.sh.objs.dropLocal(name)
	}
	return s.objs.Remove(name)
}

// fencedLocked records that another replica took over; callers hold writeMu.
func (s *Store) fencedLocked(err error) error {
	s.mu.Lock()
	s.sh.writer = false
	s.mu.Unlock()
	s.log.Warn("staging writer fenced: another replica took over", "err", err)
	return fmt.Errorf("%w: %w", ErrFenced, err)
}

// commitManifest makes e the next committed version. In local staging its
// manifest keys go into pb, which is committed synced. In shared staging e
// is appended to the log, which commits it, and pb, holding only local
// index updates, is committed after. hookPoint names the crash point just
// before the commit. Callers hold writeMu.
func (s *Store) commitManifest(ctx context.Context, pb *pebble.Batch, e *logEntry, hookPoint string) error {
	e.Time = time.Now().UnixMilli()
	if s.sh == nil {
		if err := manifestOps(pb, e); err != nil {
			return err
		}
		if hookPoint != "" {
			if err := s.hook(hookPoint); err != nil {
				return err
			}
		}
		if err := pb.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("write manifest: %w", err)
		}
		return nil
	}
	sh := s.sh
	s.mu.Lock()
	writer, term, mine := sh.writer, s.term, sh.myTerm
	s.mu.Unlock()
	if !writer {
		return ErrNotWriter
	}
	if term != mine || e.State.Term != mine {
		// The log has a newer term than the one this store acquired.
		return s.fencedLocked(fmt.Errorf("term %d, the log's is %d", mine, term))
	}
	e.N = sh.next
	if hookPoint != "" {
		if err := s.hook(hookPoint); err != nil {
			return err
		}
	}
	if err := sh.appendEntry(ctx, e); err != nil {
		if errors.Is(err, storage.ErrPrecondition) {
			return s.fencedLocked(err)
		}
		return fmt.Errorf("write manifest: %w", err)
	}
	sh.next = e.N + 1
	s.mu.Lock()
	s.entryN = e.N
	for _, name := range e.Obsolete {
		sh.pending = append(sh.pending, obsoleteRec{Name: name, At: e.Time})
	}
	id := s.id
	if e.State.ID != "" {
		id = e.State.ID
	}
	s.mu.Unlock()
	// The index position only moves with the index updates pb holds; it
	// need not be durable: a lost write replays the entry from the log.
	if err := pb.Set([]byte(keyShared), mustJSON(sharedMeta{StoreID: id, IdxPos: e.N}), nil); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := pb.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("committed entry %d, but not the local index (reopen to repair): %w", e.N, err)
	}
	sh.idxPos = e.N
	return nil
}

// manifestOps writes e's manifest keys into pb (local staging).
func manifestOps(pb *pebble.Batch, e *logEntry) error {
	var err error
	if e.Replace {
		for _, p := range []string{prefixTable, prefixSeg, prefixBase} {
			err = errors.Join(err, pb.DeleteRange([]byte(p), prefixEnd([]byte(p)), nil))
		}
	}
	for _, t := range e.Tables {
		err = errors.Join(err, pb.Set(tableKey(t.ID), mustJSON(t), nil))
	}
	for _, n := range e.DelSegs {
		err = errors.Join(err, pb.Delete(segKey(n), nil))
	}
	for _, sg := range e.AddSegs {
		err = errors.Join(err, pb.Set(segKey(sg.Num), mustJSON(sg), nil))
	}
	for _, r := range e.DelBases {
		err = errors.Join(err, pb.Delete(baseKey(r.Table, r.Tenant), nil))
	}
	for _, b := range e.SetBases {
		err = errors.Join(err, pb.Set(baseKey(b.Table, b.Tenant), mustJSON(b), nil))
	}
	err = errors.Join(err, pb.Set([]byte(keyState), mustJSON(e.State), nil))
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// sharedLoop follows the log while the store is not the writer, and does
// the writer's upkeep while it is.
func (s *Store) sharedLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.sh.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.isWriter() {
			if err := s.maintain(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("shared staging upkeep", "err", err)
			}
			continue
		}
		if err := s.follow(ctx); err != nil && ctx.Err() == nil && !s.dead.Load() {
			s.log.Warn("follow shared staging", "err", err)
		}
	}
}

// maintain is the writer's upkeep: a checkpoint when one is due, deleting
// files and log entries past DeleteDelay, and, once per term, the files
// earlier terms' writers left without committing them.
func (s *Store) maintain(ctx context.Context) error {
	sh := s.sh
	s.writeMu.Lock()
	if time.Since(sh.lastMaintain) < maintainInterval && sh.orphansDone {
		s.writeMu.Unlock()
		return nil
	}
	sh.lastMaintain = time.Now()
	s.mu.Lock()
	writer := sh.writer
	dv := s.cur
	st := s.stateLocked()
	pending := slices.Clone(sh.pending)
	s.mu.Unlock()
	if !writer {
		s.writeMu.Unlock()
		return nil
	}
	last := sh.next - 1
	var ckpt *checkpointData
	if last-sh.lastCkpt >= uint64(sh.opts.CheckpointEvery) {
		ckpt = &checkpointData{N: last, State: st, Obsolete: pending}
		for _, t := range dv.tables {
			ckpt.Tables = append(ckpt.Tables, t)
		}
		slices.SortFunc(ckpt.Tables, func(a, b *tableMeta) int { return int(a.ID) - int(b.ID) })
		ckpt.Segs = slices.Clone(dv.segs)
		for _, b := range dv.bases {
			ckpt.Bases = append(ckpt.Bases, b)
		}
		slices.SortFunc(ckpt.Bases, func(a, b *baseMeta) int {
			return strings.Compare(ttKey(a.Table, a.Tenant), ttKey(b.Table, b.Tenant))
		})
	}
	orphans := !sh.orphansDone || time.Since(sh.lastOrphanScan) > orphanScanInterval
	if orphans {
		sh.orphansDone, sh.lastOrphanScan = true, time.Now()
	}
	s.writeMu.Unlock()

	var errs []error
	if ckpt != nil {
		if err := sh.writeCheckpoint(ctx, ckpt); err != nil {
			errs = append(errs, err)
		} else {
			s.writeMu.Lock()
			sh.lastCkpt = max(sh.lastCkpt, ckpt.N)
			s.writeMu.Unlock()
		}
	}
	errs = append(errs, s.deleteExpired(ctx))
	if orphans {
		errs = append(errs, s.deleteOrphans(ctx, dv, pending, st.Term))
	}
	return errors.Join(errs...)
}

// deleteExpired deletes the files that have been obsolete for DeleteDelay,
// and log entries and checkpoints older than DeleteDelay that the newest
// checkpoint makes unnecessary.
func (s *Store) deleteExpired(ctx context.Context) error {
	sh := s.sh
	cutoff := time.Now().Add(-sh.opts.DeleteDelay)
	s.mu.Lock()
	var due []obsoleteRec
	for _, o := range sh.pending {
		if o.At < cutoff.UnixMilli() {
			due = append(due, o)
		}
	}
	s.mu.Unlock()
	deleted := make(map[string]bool, len(due))
	var errs []error
	for _, o := range due {
		if err := sh.b.Delete(ctx, sh.objs.key(o.Name)); err != nil {
			errs = append(errs, fmt.Errorf("delete obsolete file %s: %w", o.Name, err))
			continue
		}
		deleted[o.Name] = true
	}
	if len(deleted) > 0 {
		s.mu.Lock()
		sh.pending = slices.DeleteFunc(sh.pending, func(o obsoleteRec) bool { return deleted[o.Name] })
		s.mu.Unlock()
	}
	s.writeMu.Lock()
	ckpt := sh.lastCkpt
	s.writeMu.Unlock()
	if ckpt == 0 {
		return errors.Join(errs...)
	}
	for _, p := range []string{"log/", "checkpoint/"} {
		var old []string
		err := sh.b.List(ctx, sh.opts.Prefix+p, func(oi storage.ObjectInfo) error {
			if n, ok := numberOf(oi.Key); ok && n < ckpt && oi.ModTime.Before(cutoff) {
				old = append(old, oi.Key)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s: %w", p, err))
			continue
		}
		for _, k := range old {
			if err := sh.b.Delete(ctx, k); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", k, err))
			}
		}
	}
	return errors.Join(errs...)
}

// deleteOrphans deletes data files that no version names: of earlier terms
// (a writer that crashed or was fenced wrote them but never committed
// them), and of this term once older than DeleteDelay (an aborted commit's).
func (s *Store) deleteOrphans(ctx context.Context, dv *dataVer, pending []obsoleteRec, term uint64) error {
	sh := s.sh
	keep := make(map[string]bool, len(dv.segs)+len(dv.bases)+len(pending))
	for _, sg := range dv.segs {
		keep[sg.name()] = true
	}
	for _, b := range dv.bases {
		keep[b.name()] = true
	}
	for _, o := range pending {
		keep[o.Name] = true
	}
	prefix := sh.objs.key("")
	old := time.Now().Add(-sh.opts.DeleteDelay)
	var orphans []string
	err := sh.b.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		name := strings.TrimPrefix(oi.Key, prefix)
		if keep[name] {
			return nil
		}
		if num, ok := fileNum(name); ok && (num>>fileTermShift < term || oi.ModTime.Before(old)) {
			orphans = append(orphans, name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list data files: %w", err)
	}
	for _, name := range orphans {
		if err := sh.b.Delete(ctx, sh.objs.key(name)); err != nil {
			return fmt.Errorf("delete orphan data file %s: %w", name, err)
		}
	}
	if len(orphans) > 0 {
		s.log.Info("removed data files earlier writers left uncommitted", "count", len(orphans))
	}
	return nil
}
