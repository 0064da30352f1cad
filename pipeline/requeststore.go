package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// RequestStoreDir is the conventional directory of the request store under
// the state directory.
const RequestStoreDir = "requests"

// RequestState is where a request is in its life.
type RequestState string

// Request states. A request is received, then accepted (or rejected), may
// be blocked_unpaid for a while, is rendering, and ends completed or failed;
// a completed export's links, or a parked request, eventually expire.
const (
	StateReceived      RequestState = "received"
	StateAccepted      RequestState = "accepted"
	StateBlockedUnpaid RequestState = "blocked_unpaid"
	StateRendering     RequestState = "rendering"
	StateCompleted     RequestState = "completed"
	StateFailed        RequestState = "failed"
	StateRejected      RequestState = "rejected"
	StateExpired       RequestState = "expired"
)

// Valid reports whether s is one of the Request states.
func (s RequestState) Valid() bool {
	switch s {
	case StateReceived, StateAccepted, StateBlockedUnpaid, StateRendering,
		StateCompleted, StateFailed, StateRejected, StateExpired:
		return true
	}
	return false
}

// RequestRecord is the durable state of one request.
type RequestRecord struct {
	Request   Request      `json:"request"`
	State     RequestState `json:"state"`
	Reason    string       `json:"reason,omitempty"`
	Retryable bool         `json:"retryable,omitempty"`
	// Fence is the snapshot LSN (text) the export is, or was, rendered at.
	Fence     string    `json:"fence,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// UpdatedAt is when the record was last written (set by the store).
	UpdatedAt time.Time `json:"updated_at"`
	Attempts  int       `json:"attempts,omitempty"`
	// Result is the completed or failed event.
	Result *Event `json:"result,omitempty"`
	// CompletedEventSent is set once the completed event is published, so
	// that it is published exactly once.
	CompletedEventSent bool `json:"completed_event_sent,omitempty"`
	// ResultOffsets are the end offsets of the results topic's partitions
	// recorded just before the completed event is first published: a run
	// that finds CompletedEventSent unset looks there for the event before
	// publishing it again.
	ResultOffsets map[int]int64 `json:"result_offsets,omitempty"`
	// Outbox holds events recorded with a state change but not yet
	// published (see Service.transition).
	Outbox []Event `json:"outbox,omitempty"`
	// Owner is the replica that processes the request (shared request store); "" in a single replica's store.
	Owner string `json:"owner,omitempty"`
	// etag is the version of the record as read from or written to the shared store (compare-and-swap); not stored.
	etag string
}

// Keys in pebble:
//
//	r/<request id>                    -> RequestRecord JSON
//	t/<tenant id> 0x00 <request id>   -> empty (tenant index)
//	s/<state> 0x00 <request id>       -> empty (state index)
//
// Request ids (ParseRequest's alphabet) and normalised ids hold no 0x00.
const (
	prefixRecord      = "r/"
	prefixTenantIndex = "t/"
	prefixStateIndex  = "s/"
)

// RequestStore keeps request records durably in pebble, indexed by tenant
// and by state. It is safe for concurrent use; writes are serialised and
// synced.
type RequestStore struct {
	db  *pebble.DB
	now func() time.Time

	mu sync.Mutex // serialises writes: each reads the old record to fix the indexes

	// life is held shared by every operation and exclusively by Close.
	life   sync.RWMutex
	closed bool
}

// OpenRequestStore opens, creating if needed, the request store in dir (by
// convention <state-dir>/requests, see RequestStoreDir).
func OpenRequestStore(dir string) (*RequestStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create request store directory: %w", err)
	}
	db, err := pebble.Open(dir, &pebble.Options{
		Logger: pebbleSlog{log: slog.Default().With("component", "requests")},
	})
	if err != nil {
		return nil, fmt.Errorf("open request store: %w", err)
	}
	return &RequestStore{db: db, now: time.Now}, nil
}

// Close closes the store. It is safe to call more than once.
func (s *RequestStore) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close request store: %w", err)
	}
	return nil
}

// Get returns the record of a request id, and whether there is one.
func (s *RequestStore) Get(id string) (RequestRecord, bool, error) {
	if err := s.acquire(); err != nil {
		return RequestRecord{}, false, err
	}
	defer s.life.RUnlock()
	return getRecord(s.db, id)
}

// acquire holds life shared, failing if the store is closed.
func (s *RequestStore) acquire() error {
	s.life.RLock()
	if s.closed {
		s.life.RUnlock()
		return errStoreClosed
	}
	return nil
}

func getRecord(r pebble.Reader, id string) (RequestRecord, bool, error) {
	v, closer, err := r.Get(recordKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return RequestRecord{}, false, nil
	}
	if err != nil {
		return RequestRecord{}, false, fmt.Errorf("read request %s: %w", id, err)
	}
	var rec RequestRecord
	err = json.Unmarshal(v, &rec)
	_ = closer.Close() // Get's closer only releases memory
	if err != nil {
		return RequestRecord{}, false, fmt.Errorf("decode request %s: %w", id, err)
	}
	return rec, true, nil
}

// Put writes rec, inserting or replacing the record of rec.Request.RequestID,
// and keeps the indexes in step. UpdatedAt is set to the current time, and
// CreatedAt too if it is zero. The write is synced before Put returns.
func (s *RequestStore) Put(rec RequestRecord) error {
	if err := checkRecord(&rec); err != nil {
		return err
	}
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.life.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok, err := getRecord(s.db, rec.Request.RequestID)
	if err != nil {
		return err
	}
	var prev *RequestRecord
	if ok {
		prev = &old
	}
	return s.writeLocked(prev, rec)
}

// Create inserts rec if there is no record of its request id yet, and
// reports whether it did; otherwise it returns the existing record and
// writes nothing. This is the idempotency check on request ids: concurrent
// Creates of one id create it once.
func (s *RequestStore) Create(rec RequestRecord) (existing RequestRecord, created bool, err error) {
	if err := checkRecord(&rec); err != nil {
		return RequestRecord{}, false, err
	}
	if err := s.acquire(); err != nil {
		return RequestRecord{}, false, err
	}
	defer s.life.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok, err := getRecord(s.db, rec.Request.RequestID)
	if err != nil {
		return RequestRecord{}, false, err
	}
	if ok {
		return old, false, nil
	}
	if err := s.writeLocked(nil, rec); err != nil {
		return RequestRecord{}, false, err
	}
	return RequestRecord{}, true, nil
}

var errStoreClosed = errors.New("request store is closed")

func checkRecord(rec *RequestRecord) error {
	id := rec.Request.RequestID
	if id == "" || strings.IndexByte(id, 0) >= 0 {
		return fmt.Errorf("store request: invalid request id %q", id)
	}
	if strings.IndexByte(rec.Request.TenantID, 0) >= 0 {
		return fmt.Errorf("store request %s: invalid tenant id %q", id, rec.Request.TenantID)
	}
	if !rec.State.Valid() {
		return fmt.Errorf("store request %s: unknown state %q", id, rec.State)
	}
	return nil
}

// writeLocked writes rec over prev (nil if none) in one synced batch.
func (s *RequestStore) writeLocked(prev *RequestRecord, rec RequestRecord) error {
	id := rec.Request.RequestID
	rec.UpdatedAt = s.now().UTC()
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = rec.UpdatedAt
	}
	v, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode request %s: %w", id, err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	if prev != nil {
		if prev.Request.TenantID != rec.Request.TenantID {
			if err := b.Delete(indexKey(prefixTenantIndex, prev.Request.TenantID, id), nil); err != nil {
				return fmt.Errorf("write request %s: %w", id, err)
			}
		}
		if prev.State != rec.State {
			if err := b.Delete(indexKey(prefixStateIndex, string(prev.State), id), nil); err != nil {
				return fmt.Errorf("write request %s: %w", id, err)
			}
		}
	}
	for _, kv := range [][2][]byte{
		{recordKey(id), v},
		{indexKey(prefixTenantIndex, rec.Request.TenantID, id), nil},
		{indexKey(prefixStateIndex, string(rec.State), id), nil},
	} {
		if err := b.Set(kv[0], kv[1], nil); err != nil {
			return fmt.Errorf("write request %s: %w", id, err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("write request %s: %w", id, err)
	}
	return nil
}

// ByTenant returns the records of a tenant's requests, in request id order.
func (s *RequestStore) ByTenant(tenant string) ([]RequestRecord, error) {
	return s.byIndex(prefixTenantIndex, tenant)
}

// ByState returns the records of the requests in a state, in request id
// order: on start, the daemon resumes parked and in-flight requests from
// these.
func (s *RequestStore) ByState(state RequestState) ([]RequestRecord, error) {
	return s.byIndex(prefixStateIndex, string(state))
}

// byIndex reads an index and its records from one pebble snapshot, so the
// result is consistent with concurrent writes.
func (s *RequestStore) byIndex(prefix, value string) (_ []RequestRecord, err error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.life.RUnlock()
	snap := s.db.NewSnapshot()
	defer func() { err = errors.Join(err, snap.Close()) }()
	lo := indexKey(prefix, value, "")
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: requestKeyEnd(lo)})
	if err != nil {
		return nil, fmt.Errorf("read %s index: %w", strings.TrimSuffix(prefix, "/"), err)
	}
	defer func() { err = errors.Join(err, it.Close()) }()
	var recs []RequestRecord
	for ok := it.First(); ok; ok = it.Next() {
		id := string(it.Key()[len(lo):])
		rec, found, err := getRecord(snap, id)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, fmt.Errorf("index %q names missing request %s", it.Key(), id)
		}
		recs = append(recs, rec)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("read %s index: %w", strings.TrimSuffix(prefix, "/"), err)
	}
	return recs, nil
}

func recordKey(id string) []byte { return []byte(prefixRecord + id) }

func indexKey(prefix, value, id string) []byte {
	k := make([]byte, 0, len(prefix)+len(value)+1+len(id))
	k = append(k, prefix...)
	k = append(k, value...)
	k = append(k, 0)
	return append(k, id...)
}

// requestKeyEnd returns the smallest key greater than every key with prefix p.
func requestKeyEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

// pebbleSlog routes pebble's log lines to slog.
type pebbleSlog struct{ log *slog.Logger }

func (l pebbleSlog) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleSlog) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l pebbleSlog) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error(msg, "source", "pebble")
	panic(msg)
}
