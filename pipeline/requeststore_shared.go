package pipeline

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/storage"
)

// RequestBucket is what the shared request store needs of a bucket:
// *storage.FS and *storage.S3 are ones.
type RequestBucket interface {
	storage.Store
	storage.Conditional
}

// Tuning of the shared request store.
const (
	// sharedOpTimeout bounds each step of a call: a read or write of a
	// record, a listing of an index.
	sharedOpTimeout = 30 * time.Second
	// sharedReadConcurrency bounds the records ByState, ByTenant and Open
	// read at once.
	sharedReadConcurrency = 8
	// sharedLayoutVersion is the version of the layout in the bucket,
	// written once under <prefix>layout.json by the first store to open it.
	sharedLayoutVersion = 1
)

// SharedRequestStore keeps request records in a bucket shared by exportd
// replicas, so that every replica sees every request and none is lost with
// a replica. It is safe for concurrent use, also by several processes on
// one bucket and prefix.
//
// Each record is one object, written only conditionally: Create with
// PutIfAbsent, Put with PutIfMatch on the ETag the record was read with, so
// that of two writers of one version exactly one succeeds and the other
// gets ErrConflict. Each write stores a revision (1 on creation, one more
// per Put) and a random token, by which a writer whose retried request was
// refused finds its own write.
//
// Layout under prefix:
//
//	layout.json                        {"version": 1}
//	records/<id>.json                  the record (the truth)
//	tenants/<tenant>/<id>              empty: tenant index
//	states/<state>/<id>@<revision>     empty: state index
//	open/<id>@<revision>               empty: unfinished records (see Open)
//
// with ids and tenants escaped (see escapeSegment). Index entries are
// hints: every write puts the entries of its new version before the record
// and deletes the old version's after, so that a crash leaves extra
// entries, never a missing one; readers read the record of each entry and
// skip, and delete, entries that it contradicts. An entry names the
// revision it was written for because an entry of revision r is wrong
// forever once the record is past revision r, or at revision r and not in
// the entry's state: deleting it cannot remove an entry that a concurrent
// write puts for a later revision.
//
// A Create costs a read, up to three index writes and the record's write;
// a Put a read, up to two index writes, the record's write and up to two
// deletes; ByState, ByTenant and Open a listing and a read per record.
// Each of these steps has its own 30-second timeout.
type SharedRequestStore struct {
	b    RequestBucket
	keys sharedKeys
	now  func() time.Time

	// life is held shared by every operation and exclusively by Close.
	life   sync.RWMutex
	closed bool
}

// OpenSharedRequestStore opens the request store under prefix (such as
// "requests/"; a missing final '/' is added) in b, writing its layout
// version there if it is the first. The store does not own b: Close leaves
// it open.
func OpenSharedRequestStore(ctx context.Context, b RequestBucket, prefix string) (*SharedRequestStore, error) {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	keys := sharedKeys{prefix: prefix}
	if err := storage.ValidateKey(keys.layout()); err != nil {
		return nil, fmt.Errorf("open shared request store: prefix %q: %w", prefix, err)
	}
	s := &SharedRequestStore{b: b, keys: keys, now: time.Now}
	if err := s.checkLayout(ctx); err != nil {
		return nil, fmt.Errorf("open shared request store %q: %w", prefix, err)
	}
	return s, nil
}

// sharedLayout is the content of layout.json.
type sharedLayout struct {
	Version int `json:"version"`
}

// checkLayout writes the layout version if there is none yet, and checks
// the one there.
func (s *SharedRequestStore) checkLayout(ctx context.Context) error {
	key := s.keys.layout()
	data, _, err := s.b.GetETag(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		data, err = json.Marshal(sharedLayout{Version: sharedLayoutVersion})
		if err != nil {
			return fmt.Errorf("encode layout: %w", err)
		}
		_, err = s.b.PutIfAbsent(ctx, key, data)
		if errors.Is(err, storage.ErrPrecondition) {
			// Another store wrote it meanwhile, or a retry of ours was refused.
			data, _, err = s.b.GetETag(ctx, key)
		}
	}
	if err != nil {
		return fmt.Errorf("layout version: %w", err)
	}
	var l sharedLayout
	if err := json.Unmarshal(data, &l); err != nil {
		return fmt.Errorf("decode layout version: %w", err)
	}
	if l.Version != sharedLayoutVersion {
		return fmt.Errorf("layout version %d, this exportd reads version %d", l.Version, sharedLayoutVersion)
	}
	return nil
}

// Close closes the store, waiting for the calls in progress. It is safe to
// call more than once; later calls of other methods fail.
func (s *SharedRequestStore) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	s.closed = true
	return nil
}

// acquire holds life shared, failing if the store is closed.
func (s *SharedRequestStore) acquire() error {
	s.life.RLock()
	if s.closed {
		s.life.RUnlock()
		return errStoreClosed
	}
	return nil
}

// Get returns the record of a request id, and whether there is one. The
// record carries its version, so that it can be Put.
func (s *SharedRequestStore) Get(id string) (RequestRecord, bool, error) {
	if err := checkSharedID(id); err != nil {
		return RequestRecord{}, false, fmt.Errorf("read request: %w", err)
	}
	if err := s.acquire(); err != nil {
		return RequestRecord{}, false, err
	}
	defer s.life.RUnlock()
	ctx, cancel := opContext()
	defer cancel()
	cur, err := s.read(ctx, id)
	if err != nil || cur == nil {
		return RequestRecord{}, false, err
	}
	return cur.record(), true, nil
}

// Create inserts rec if no record of its request id exists, and reports
// whether it did: of concurrent Creates of one id, on any replicas, exactly
// one creates it. On success rec's version, UpdatedAt (and CreatedAt if it
// is zero) are set, so that rec can be Put next. Otherwise Create returns
// the existing record, with its version, and writes nothing.
func (s *SharedRequestStore) Create(rec *RequestRecord) (existing RequestRecord, created bool, err error) {
	if err := checkSharedRecord(rec); err != nil {
		return RequestRecord{}, false, err
	}
	if err := s.acquire(); err != nil {
		return RequestRecord{}, false, err
	}
	defer s.life.RUnlock()
	ctx, cancel := opContext()
	defer cancel()
	id := rec.Request.RequestID
	cur, err := s.read(ctx, id)
	switch {
	case err != nil:
		return RequestRecord{}, false, fmt.Errorf("create request %s: %w", id, err)
	case cur != nil:
		return cur.record(), false, nil
	}
	next, err := s.nextVersion(rec, nil)
	if err != nil {
		return RequestRecord{}, false, fmt.Errorf("create request %s: %w", id, err)
	}
	cur, err = s.commit(ctx, next, nil)
	switch {
	case err == nil:
		next.applyTo(rec)
		return RequestRecord{}, true, nil
	case cur != nil && cur.Shared.CreateToken == next.Shared.CreateToken:
		// Ours, and already rewritten by another writer by the time we
		// learnt that it was written: rec is not the version in the
		// bucket, so it gets no version and a Put of it conflicts.
		next.applyTo(rec)
		rec.etag = ""
		return RequestRecord{}, true, nil
	case cur != nil:
		// Only one PutIfAbsent of a key succeeds, and this is another's.
		return cur.record(), false, nil
	}
	return RequestRecord{}, false, fmt.Errorf("create request %s: %w", id, err)
}

// Put replaces the record of rec.Request.RequestID only if it is unchanged
// since rec was read or created (rec's version); a record that was never
// read (no version) is written only if there is none. On success rec's
// version and UpdatedAt (and CreatedAt if it is zero) are updated. If
// another writer changed the record in between, or it vanished, the error
// wraps ErrConflict and the record is not written: read it again and redo
// the change. A record's tenant cannot change.
func (s *SharedRequestStore) Put(rec *RequestRecord) error {
	if err := checkSharedRecord(rec); err != nil {
		return err
	}
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.life.RUnlock()
	ctx, cancel := opContext()
	defer cancel()
	id := rec.Request.RequestID
	base, err := s.read(ctx, id)
	if err != nil {
		return fmt.Errorf("write request %s: %w", id, err)
	}
	if err := checkBase(rec, base); err != nil {
		return fmt.Errorf("write request %s: %w", id, err)
	}
	next, err := s.nextVersion(rec, base)
	if err != nil {
		return fmt.Errorf("write request %s: %w", id, err)
	}
	cur, err := s.commit(ctx, next, base)
	switch {
	case err == nil:
		next.applyTo(rec)
		return nil
	case errors.Is(err, storage.ErrPrecondition) || errors.Is(err, storage.ErrNotExist),
		cur != nil && cur.Shared.Revision >= next.Shared.Revision:
		// Another version is there, or none.
		return fmt.Errorf("write request %s: %w", id, ErrConflict)
	}
	// Not written, or not yet: a request in flight may still land, and a
	// Put of rec then conflicts.
	return fmt.Errorf("write request %s: %w", id, err)
}

// checkBase checks that base, the version in the bucket (nil: none), is
// the one rec was read as.
func checkBase(rec *RequestRecord, base *storedRecord) error {
	switch {
	case base == nil && rec.etag != "":
		return fmt.Errorf("record vanished: %w", ErrConflict)
	case base == nil:
		return nil
	case rec.etag == "":
		return fmt.Errorf("record exists and was not read: %w", ErrConflict)
	case strings.Trim(base.etag, `"`) != strings.Trim(rec.etag, `"`):
		return ErrConflict
	case base.Request.TenantID != rec.Request.TenantID:
		return fmt.Errorf("tenant %q differs from the record's %q: a record's tenant cannot change",
			rec.Request.TenantID, base.Request.TenantID)
	}
	return nil
}

// storedRecord is a record as stored in the bucket: its own fields and the
// store's.
type storedRecord struct {
	RequestRecord
	Shared sharedMeta `json:"shared"`
}

// sharedMeta is what the shared store keeps beside a record.
type sharedMeta struct {
	// Revision counts the record's writes: 1 when created, one more per
	// Put. Index entries name the revision they are for.
	Revision uint64 `json:"revision"`
	// Token is random, unique to the write that stored this version: a
	// writer whose conditional write was refused finds its own write by it.
	Token string `json:"token"`
	// CreateToken is the token of the write that created the record, kept
	// by every Put: a creator that finds another's write on top of its own
	// still knows that it created the record.
	CreateToken string `json:"create_token"`
}

// record returns the record with its version.
func (r *storedRecord) record() RequestRecord { return r.RequestRecord }

// applyTo updates rec after r, its next version, was written.
func (r *storedRecord) applyTo(rec *RequestRecord) {
	rec.etag = r.etag
	rec.UpdatedAt = r.UpdatedAt
	rec.CreatedAt = r.CreatedAt
}

// nextVersion returns the version of rec that follows base (nil: a new
// record).
func (s *SharedRequestStore) nextVersion(rec *RequestRecord, base *storedRecord) (*storedRecord, error) {
	token, err := newToken()
	if err != nil {
		return nil, err
	}
	next := &storedRecord{RequestRecord: *rec, Shared: sharedMeta{Revision: 1, Token: token, CreateToken: token}}
	if base != nil {
		next.Shared.Revision = base.Shared.Revision + 1
		next.Shared.CreateToken = base.Shared.CreateToken
	}
	next.etag = ""
	next.UpdatedAt = s.now().UTC()
	if next.CreatedAt.IsZero() {
		next.CreatedAt = next.UpdatedAt
	}
	return next, nil
}

// newToken returns a random write token.
func newToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("write token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// commit writes next over base (nil: a new record): the index entries of
// next first, then the record, conditionally, then it deletes base's
// entries. On success next's etag is set. If the record was not written,
// the error is the write's, and cur is the version in the bucket if it
// could be read (nil: none, or unknown); the entries of next and base that
// cur contradicts are deleted.
func (s *SharedRequestStore) commit(ctx context.Context, next, base *storedRecord) (cur *storedRecord, err error) {
	added := s.keys.entries(next, base == nil)
	for _, key := range added {
		if _, err := s.b.Put(ctx, key, bytes.NewReader(nil)); err != nil {
			return nil, fmt.Errorf("write index entry: %w", err)
		}
	}
	data, err := json.Marshal(next)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	key := s.keys.record(next.Request.RequestID)
	if base == nil {
		next.etag, err = s.b.PutIfAbsent(ctx, key, data)
	} else {
		next.etag, err = s.b.PutIfMatch(ctx, key, data, base.etag)
	}
	if err != nil {
		if cur, err = s.settle(next, err); err != nil {
			if cur != nil {
				// Those contradicted by the version that won, if any:
				// ours, and base's if it is past base.
				if base != nil {
					added = append(added, s.keys.entries(base, false)...)
				}
				s.deleteStale(cur, added)
			}
			return cur, err
		}
		next.etag = cur.etag
	}
	if base != nil {
		// Past base's revision: contradicted by next, deletable by anyone.
		s.deleteEntries(s.keys.entries(base, false))
	}
	return nil, nil
}

// settle finds out whether next is in the bucket although its conditional
// write failed with werr: a retried request refused because its first
// attempt wrote, a lost answer, or an FS write in place whose directory
// sync failed. It returns the version in the bucket (nil if none or
// unreadable), and nil if that is next, werr otherwise.
func (s *SharedRequestStore) settle(next *storedRecord, werr error) (*storedRecord, error) {
	// A fresh context: werr may be the call's deadline.
	ctx, cancel := opContext()
	defer cancel()
	cur, err := s.read(ctx, next.Request.RequestID)
	switch {
	case err != nil:
		return nil, werr
	case cur != nil && cur.Shared.Token == next.Shared.Token:
		return cur, nil
	}
	return cur, werr
}

// read reads the version of a record in the bucket, nil if there is none.
func (s *SharedRequestStore) read(ctx context.Context, id string) (*storedRecord, error) {
	data, etag, err := s.b.GetETag(ctx, s.keys.record(id))
	if errors.Is(err, storage.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read request %s: %w", id, err)
	}
	r := &storedRecord{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("decode request %s: %w", id, err)
	}
	if r.Request.RequestID != id {
		// Two ids on one object: a store that folds case, for one.
		return nil, fmt.Errorf("decode request %s: the object holds request %q", id, r.Request.RequestID)
	}
	if r.Shared.Revision == 0 || r.Shared.Token == "" {
		return nil, fmt.Errorf("decode request %s: no revision or token: not written by the shared request store", id)
	}
	r.etag = etag
	return r, nil
}

// deleteStale deletes those of keys, index entries of cur's record, that
// cur contradicts.
func (s *SharedRequestStore) deleteStale(cur *storedRecord, keys []string) {
	var stale []string
	for _, key := range keys {
		if e, ok := s.keys.parseEntry(key); ok && e.id == cur.Request.RequestID && e.stale(cur) {
			stale = append(stale, key)
		}
	}
	s.deleteEntries(stale)
}

// deleteEntries deletes index entries, best effort: one left behind is
// only extra work for readers, who delete it in turn.
func (s *SharedRequestStore) deleteEntries(keys []string) {
	if len(keys) == 0 {
		return
	}
	ctx, cancel := opContext()
	defer cancel()
	for _, key := range keys {
		_ = s.b.Delete(ctx, key)
	}
}

// ByTenant returns the records of a tenant's requests, of all replicas, in
// request id order.
func (s *SharedRequestStore) ByTenant(tenant string) ([]RequestRecord, error) {
	if err := checkSharedTenant(tenant); err != nil {
		return nil, fmt.Errorf("list requests of tenant: %w", err)
	}
	return s.byIndex(s.keys.tenantIndex(tenant))
}

// ByState returns the records of the requests in a state, of all
// replicas, in request id order.
func (s *SharedRequestStore) ByState(state RequestState) ([]RequestRecord, error) {
	if !state.Valid() {
		return nil, fmt.Errorf("list requests in state: unknown state %q", state)
	}
	return s.byIndex(s.keys.stateIndex(state))
}

// Open returns every unfinished record, of all replicas, in request id
// order: records in any state but completed with CompletedEventSent,
// rejected, failed and expired, and those too while their Outbox is not
// empty. Replicas find there the requests whose owner died.
func (s *SharedRequestStore) Open() ([]RequestRecord, error) {
	return s.byIndex(s.keys.openIndex())
}

// unfinished reports whether rec belongs in Open.
func unfinished(rec *RequestRecord) bool {
	if len(rec.Outbox) > 0 {
		return true
	}
	switch rec.State {
	case StateCompleted:
		return !rec.CompletedEventSent
	case StateRejected, StateFailed, StateExpired:
		return false
	}
	return true
}

// byIndex lists an index and returns the records it names that belong in
// it, in request id order, deleting the entries their record contradicts.
func (s *SharedRequestStore) byIndex(ix sharedIndex) ([]RequestRecord, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.life.RUnlock()
	byID, err := s.listIndex(ix)
	if err != nil {
		return nil, err
	}
	ids := slices.Sorted(maps.Keys(byID))
	found := make([]*storedRecord, len(ids))
	g, gctx := errgroup.WithContext(context.Background())
	g.SetLimit(sharedReadConcurrency)
	for i, id := range ids {
		g.Go(func() error {
			rec, err := s.checkEntries(gctx, ix, id, byID[id])
			found[i] = rec
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("list requests %s: %w", ix.name, err)
	}
	var recs []RequestRecord
	for _, r := range found {
		if r != nil {
			recs = append(recs, r.record())
		}
	}
	return recs, nil
}

// listIndex lists an index's entries by request id.
func (s *SharedRequestStore) listIndex(ix sharedIndex) (map[string][]indexEntry, error) {
	ctx, cancel := opContext()
	defer cancel()
	byID := make(map[string][]indexEntry)
	err := s.b.List(ctx, ix.dir, func(oi storage.ObjectInfo) error {
		// Names that do not parse are not the store's: ignore them.
		if e, ok := s.keys.parseEntry(oi.Key); ok && e.ix.dir == ix.dir {
			byID[e.id] = append(byID[e.id], e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list requests %s: %w", ix.name, err)
	}
	return byID, nil
}

// checkEntries reads the record that entries name and returns it if it
// belongs in their index (nil otherwise), deleting the entries it
// contradicts. A missing record may be being created: its entries stay.
func (s *SharedRequestStore) checkEntries(ctx context.Context, ix sharedIndex, id string, entries []indexEntry) (*storedRecord, error) {
	ctx, cancel := context.WithTimeout(ctx, sharedOpTimeout)
	defer cancel()
	cur, err := s.read(ctx, id)
	if err != nil || cur == nil {
		return nil, err
	}
	var stale []string
	for _, e := range entries {
		if e.stale(cur) {
			stale = append(stale, e.key)
		}
	}
	s.deleteEntries(stale)
	if !ix.holds(&cur.RequestRecord) {
		return nil, nil
	}
	return cur, nil
}

func opContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), sharedOpTimeout)
}

// sharedKeys names the objects of the store under its prefix.
type sharedKeys struct{ prefix string }

func (k sharedKeys) layout() string { return k.prefix + "layout.json" }

func (k sharedKeys) record(id string) string {
	return k.prefix + "records/" + escapeSegment(id) + ".json"
}

// sharedIndex is one index: the records in a state, of a tenant, or
// unfinished.
type sharedIndex struct {
	// name names the index in errors.
	name string
	// dir is the prefix of the index's entries.
	dir string
	// versioned entries are named <id>@<revision>, others <id>.
	versioned bool
	// holds reports whether a record belongs in the index.
	holds func(*RequestRecord) bool
}

func (k sharedKeys) tenantIndex(tenant string) sharedIndex {
	return sharedIndex{
		name:  "of tenant " + tenant,
		dir:   k.prefix + "tenants/" + escapeSegment(tenant) + "/",
		holds: func(r *RequestRecord) bool { return r.Request.TenantID == tenant },
	}
}

func (k sharedKeys) stateIndex(state RequestState) sharedIndex {
	return sharedIndex{
		name:      "in state " + string(state),
		dir:       k.prefix + "states/" + string(state) + "/",
		versioned: true,
		holds:     func(r *RequestRecord) bool { return r.State == state },
	}
}

func (k sharedKeys) openIndex() sharedIndex {
	return sharedIndex{name: "unfinished", dir: k.prefix + "open/", versioned: true, holds: unfinished}
}

// entries returns the keys of the index entries of r, with its tenant's
// if tenant is set (a record's tenant index entry is written once, when
// it is created).
func (k sharedKeys) entries(r *storedRecord, tenant bool) []string {
	id, rev := r.Request.RequestID, r.Shared.Revision
	var keys []string
	if tenant {
		keys = append(keys, k.tenantIndex(r.Request.TenantID).entry(id, rev))
	}
	keys = append(keys, k.stateIndex(r.State).entry(id, rev))
	if unfinished(&r.RequestRecord) {
		keys = append(keys, k.openIndex().entry(id, rev))
	}
	return keys
}

// entry returns the key of the index entry of a record's revision.
func (ix sharedIndex) entry(id string, rev uint64) string {
	if !ix.versioned {
		return ix.dir + escapeSegment(id)
	}
	return ix.dir + escapeSegment(id) + "@" + strconv.FormatUint(rev, 10)
}

// indexEntry is an index entry as listed.
type indexEntry struct {
	key string
	ix  sharedIndex
	id  string
	rev uint64 // 0 if unversioned
}

// parseEntry parses the key of an index entry; ok is false if it is not
// one, or not as the store writes it.
func (k sharedKeys) parseEntry(key string) (e indexEntry, ok bool) {
	rest, ok := strings.CutPrefix(key, k.prefix)
	if !ok {
		return e, false
	}
	kind, rest, _ := strings.Cut(rest, "/")
	value, name, ok := strings.Cut(rest, "/")
	switch {
	case kind == "open":
		e.ix, name = k.openIndex(), rest
	case !ok || strings.Contains(name, "/"):
		return e, false
	case kind == "states" && RequestState(value).Valid():
		e.ix = k.stateIndex(RequestState(value))
	case kind == "tenants":
		tenant, err := unescapeSegment(value)
		if err != nil {
			return e, false
		}
		e.ix = k.tenantIndex(tenant)
	default:
		return e, false
	}
	if e.ix.versioned {
		var rev string
		if name, rev, ok = strings.Cut(name, "@"); !ok {
			return e, false
		}
		n, err := strconv.ParseUint(rev, 10, 64)
		if err != nil || n == 0 || strconv.FormatUint(n, 10) != rev {
			return e, false
		}
		e.rev = n
	}
	id, err := unescapeSegment(name)
	if err != nil || checkSharedID(id) != nil {
		return e, false
	}
	e.key, e.id = key, id
	return e, e.ix.entry(e.id, e.rev) == key
}

// stale reports whether cur, the record's version in the bucket,
// contradicts the entry: cur is past the entry's revision, or at it and
// not in the entry's index. The answer never changes back, so the entry
// can be deleted. Unversioned (tenant) entries are contradicted by a
// record of another tenant, which a record cannot change.
func (e indexEntry) stale(cur *storedRecord) bool {
	if e.ix.versioned && cur.Shared.Revision != e.rev {
		return cur.Shared.Revision > e.rev // below: a write in progress
	}
	return !e.ix.holds(&cur.RequestRecord)
}

// escapeSegment makes s (not empty) a key segment that names s alone:
// every byte but ASCII letters, digits, '-', '_', ':' and non-leading '.'
// becomes %XX, so that the segment is never ".", "..", empty of meaning or
// hidden (FS reserves names that start with ".tmp-"), and '@' and '/' are
// free to separate. A request id (ParseRequest's alphabet) is unchanged
// unless it starts with '.'.
func escapeSegment(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if segmentSafe(c) && (c != '.' || i > 0) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// unescapeSegment inverts escapeSegment, and fails for what it does not
// write.
func unescapeSegment(seg string) (string, error) {
	s, err := url.PathUnescape(seg)
	if err != nil {
		return "", err
	}
	if s == "" || escapeSegment(s) != seg {
		return "", fmt.Errorf("key segment %q is not escaped as the request store escapes", seg)
	}
	return s, nil
}

func segmentSafe(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == ':' || c == '.'
}

// checkSharedRecord is checkRecord, and a tenant is required: it names
// the record's tenant index entry.
func checkSharedRecord(rec *RequestRecord) error {
	if err := checkRecord(rec); err != nil {
		return err
	}
	if err := checkSharedTenant(rec.Request.TenantID); err != nil {
		return fmt.Errorf("store request %s: %w", rec.Request.RequestID, err)
	}
	return nil
}

func checkSharedID(id string) error {
	if id == "" || strings.IndexByte(id, 0) >= 0 {
		return fmt.Errorf("invalid request id %q", id)
	}
	return nil
}

func checkSharedTenant(tenant string) error {
	if tenant == "" || strings.IndexByte(tenant, 0) >= 0 {
		return fmt.Errorf("invalid tenant id %q", tenant)
	}
	return nil
}

var _ Requests = (*SharedRequestStore)(nil)
