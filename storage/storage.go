// Package storage owns exportd's object stores: the places where the
// platform's files live and where published export bundles are written. An
// object is a byte string under a key. Store is the contract every
// implementation meets, and Linker the one for handing out download links;
// consumers should depend on the one or two methods they use.
//
// There are two implementations. FS keeps objects in a local directory, the
// default for local runs; its links (FSLinker) are HMAC-signed URLs (Signer)
// served by exportd's own download endpoint (DownloadHandler). S3 keeps them
// in an S3 bucket or an S3-compatible store; its links are presigned GET
// URLs.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"path"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
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

// DefaultLinkTTL is how long a link is valid when LinkOptions.TTL is 0.
const DefaultLinkTTL = 7 * 24 * time.Hour

// MaxLinkTTL is the longest validity a link can have: the limit of AWS
// Signature Version 4 presigned URLs, applied to every Linker so that links
// behave the same whatever the backend.
const MaxLinkTTL = 7 * 24 * time.Hour

// Linker issues download links for stored objects.
type Linker interface {
	// Link returns a URL from which anyone holding it can download the object
	// at key with a plain HTTP GET until Link.Expires, and no longer. The
	// error wraps ErrNotExist if there is no object at key. A TTL above
	// MaxLinkTTL is an error, not shortened.
	Link(ctx context.Context, key string, o LinkOptions) (Link, error)
}

// LinkOptions tunes a link.
type LinkOptions struct {
	// TTL is how long the link is valid, at least a second and at most
	// MaxLinkTTL; 0 means DefaultLinkTTL.
	TTL time.Duration
	// FileName is the name a browser saves the download as (the filename of
	// a Content-Disposition: attachment header); "" means the key's last
	// segment. It must not contain slashes, backslashes or control
	// characters.
	FileName string
	// ContentType is the download's Content-Type; "" means
	// application/octet-stream.
	ContentType string
}

// Link is a download link.
type Link struct {
	URL string
	// Expires is when the link stops working.
	Expires time.Time
}

// defaultContentType is the Content-Type of downloads that do not set one.
const defaultContentType = "application/octet-stream"

// linkParams validates o for key and fills in its defaults.
func linkParams(key string, o LinkOptions) (LinkOptions, error) {
	if err := ValidateKey(key); err != nil {
		return o, err
	}
	switch {
	case o.TTL == 0:
		o.TTL = DefaultLinkTTL
	case o.TTL < time.Second:
		return o, fmt.Errorf("invalid link TTL %v: below the minimum of 1s", o.TTL)
	case o.TTL > MaxLinkTTL:
		return o, fmt.Errorf("invalid link TTL %v: above the maximum of %v", o.TTL, MaxLinkTTL)
	}
	if o.FileName == "" {
		o.FileName = path.Base(key)
	}
	if err := checkFileName(o.FileName); err != nil {
		return o, err
	}
	if o.ContentType == "" {
		o.ContentType = defaultContentType
	}
	if _, _, err := mime.ParseMediaType(o.ContentType); err != nil {
		return o, fmt.Errorf("invalid content type %q: %w", o.ContentType, err)
	}
	return o, nil
}

func checkFileName(name string) error {
	if name == "." || name == ".." {
		return fmt.Errorf("invalid file name %q", name)
	}
	for _, r := range name {
		if r == '/' || r == '\\' || unicode.IsControl(r) || r == utf8.RuneError {
			return fmt.Errorf("invalid file name %q: contains %q", name, r)
		}
	}
	return nil
}

// contentDisposition returns the Content-Disposition of a download saved as
// name: RFC 6266's attachment with a plain ASCII filename for old clients
// and, if name is not plain ASCII, the exact name as RFC 8187's filename*.
func contentDisposition(name string) string {
	ascii := []rune(name)
	plain := true
	for i, r := range ascii {
		if r < 0x20 || r > 0x7e {
			ascii[i] = '_'
			plain = false
		}
	}
	v := mime.FormatMediaType("attachment", map[string]string{"filename": string(ascii)})
	if plain {
		return v
	}
	// FormatMediaType writes a non-ASCII value as filename*=utf-8''...
	ext := mime.FormatMediaType("attachment", map[string]string{"filename": name})
	if _, star, ok := strings.Cut(ext, "; "); ok && strings.HasPrefix(star, "filename*=") {
		return v + "; " + star
	}
	return v
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
