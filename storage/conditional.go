package storage

import (
	"context"
	"errors"
)

// ErrPrecondition is wrapped by the error of a conditional write whose
// condition did not hold.
var ErrPrecondition = errors.New("precondition failed")

// Conditional is implemented by stores that write small objects
// conditionally: compare-and-swap on an object's ETag. Both FS and S3
// implement it.
//
// An ETag is an opaque string: compare ETags only with ETags of the same
// store, and pass them back exactly as returned. Conditional writes of a
// key are atomic with respect to each other, also across processes that
// share the store. A plain Put or Delete of the same key is not ordered
// with them on FS (it may be lost, or lose the conditional write): keep
// keys written conditionally for conditional writes.
//
// A conditional request that the S3 client retries after a lost answer
// can fail with ErrPrecondition although its first attempt wrote: callers
// that must tell put something unique in data (a random token) and compare
// it with GetETag's.
type Conditional interface {
	// PutIfAbsent writes data at key only if no object is there; if one is,
	// the error wraps ErrPrecondition and nothing is written. It returns the
	// new object's ETag.
	PutIfAbsent(ctx context.Context, key string, data []byte) (etag string, err error)
	// PutIfMatch replaces the object at key only if its current ETag is
	// etag. If the object changed the error wraps ErrPrecondition; if it is
	// missing, ErrNotExist. It returns the new ETag.
	PutIfMatch(ctx context.Context, key string, data []byte, etag string) (newETag string, err error)
	// GetETag reads a whole (small) object and its ETag; the error wraps
	// ErrNotExist if there is none.
	GetETag(ctx context.Context, key string) (data []byte, etag string, err error)
}
