// Package storage owns exportd's object stores: the places where the
// platform's files live and where published export bundles are written. An
// object is a byte string under a key; FS keeps objects in a local
// directory. Store is the contract every implementation meets; consumers
// should depend on the one or two methods they use.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// ErrNotExist is wrapped by the errors of Get and Stat for a missing object.
var ErrNotExist = errors.New("object does not exist")

// ObjectInfo describes an object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Store is an object store. Keys are '/'-separated paths relative to the
// store's root (see ValidateKey). All methods are safe for concurrent use.
type Store interface {
	// Put writes r to key, replacing any object there, and returns the number
	// of bytes written. Readers see the old object or the whole new one,
	// never part of it; if Put fails, key is unchanged.
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	// Get opens the object at key. The error wraps ErrNotExist if there is none.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes the object at key. The error wraps ErrNotExist if there is none.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// Delete removes the object at key. Deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// List calls fn for every object whose key starts with prefix, in
	// ascending byte order of keys, and returns the first error fn returns,
	// unwrapped. prefix is a plain string prefix ("a/b" matches "a/b/c" and
	// "a/bc"); "" lists everything.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
}

// ValidateKey reports why key cannot name an object, or nil. A key is a
// non-empty, relative, '/'-separated path without empty, "." or ".."
// segments, backslashes or NUL bytes.
func ValidateKey(key string) error {
	if key == "" {
		return errors.New("invalid key: empty")
	}
	if err := checkChars(key); err != nil {
		return err
	}
	if strings.HasPrefix(key, "/") {
		return fmt.Errorf("invalid key %q: absolute", key)
	}
	for seg := range strings.SplitSeq(key, "/") {
		if err := checkSegment(key, seg); err != nil {
			return err
		}
	}
	return nil
}

// validatePrefix is ValidateKey for List prefixes: "" is allowed, and the
// last segment, a partial name, may be empty.
func validatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := checkChars(prefix); err != nil {
		return err
	}
	if strings.HasPrefix(prefix, "/") {
		return fmt.Errorf("invalid prefix %q: absolute", prefix)
	}
	dir, _ := splitPrefix(prefix)
	if dir == "" {
		return nil
	}
	for seg := range strings.SplitSeq(dir, "/") {
		if err := checkSegment(prefix, seg); err != nil {
			return err
		}
	}
	return nil
}

// splitPrefix splits a prefix into the whole segments before its last '/'
// and the partial last segment.
func splitPrefix(prefix string) (dir, partial string) {
	i := strings.LastIndexByte(prefix, '/')
	if i < 0 {
		return "", prefix
	}
	return prefix[:i], prefix[i+1:]
}

func checkChars(key string) error {
	switch {
	case strings.ContainsRune(key, 0):
		return fmt.Errorf("invalid key %q: contains NUL", key)
	case strings.ContainsRune(key, '\\'):
		return fmt.Errorf("invalid key %q: contains a backslash; separate segments with '/'", key)
	}
	return nil
}

func checkSegment(key, seg string) error {
	switch {
	case seg == "":
		return fmt.Errorf("invalid key %q: empty segment (leading, trailing or double '/')", key)
	case seg == "." || seg == "..":
		return fmt.Errorf("invalid key %q: %q segment", key, seg)
	}
	return nil
}

// ctxReader makes a long copy stop when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
