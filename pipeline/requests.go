package pipeline

import (
	"errors"
	"time"
)

// Requests is where request records live: a RequestStore on one replica's
// disk, or a SharedRequestStore in the bucket several replicas share.
type Requests interface {
	// Get returns the record of a request id, and whether there is one.
	Get(id string) (RequestRecord, bool, error)
	// Create inserts rec if there is no record of its request id yet (also
	// across replicas: of concurrent Creates one wins), and reports
	// whether it did; otherwise it returns the existing record.
	Create(rec *RequestRecord) (existing RequestRecord, created bool, err error)
	// Put writes rec. In a shared store the write is refused, with an
	// error wrapping ErrConflict, if another replica wrote the record since
	// rec was read or created.
	Put(rec *RequestRecord) error
	ByState(state RequestState) ([]RequestRecord, error)
	ByTenant(tenant string) ([]RequestRecord, error)
	// Open returns every record whose request is not finished.
	Open() ([]RequestRecord, error)
	Close() error
}

// ErrConflict is wrapped by Put when the record changed since it was read
// (another replica wrote it) or vanished.
var ErrConflict = errors.New("request record changed by another replica")

// Peers tells the request service of the other replicas it shares requests
// with (internal/cluster.Members is one). Each request is processed by its
// owner; a replica takes over the requests of a replica that is not alive.
type Peers interface {
	// ID is this replica's id.
	ID() string
	// Alive reports whether replica id is alive.
	Alive(id string) bool
	// Lease reports whether this replica may still act alone for margin:
	// no other replica takes over its requests before then.
	Lease(margin time.Duration) bool
}

// finished reports whether rec's request needs nothing more.
func finished(rec RequestRecord) bool {
	if len(rec.Outbox) > 0 {
		return false
	}
	switch rec.State {
	case StateCompleted:
		return rec.CompletedEventSent
	case StateRejected, StateFailed, StateExpired:
		return true
	}
	return false
}
