package storage

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DownloadPath is the path under which DownloadHandler serves objects: the
// object at key "a/b" is served at DownloadPath + "a/b".
const DownloadPath = "/download/"

// MinSignerSecretLen is the shortest secret NewSigner accepts, in bytes.
const MinSignerSecretLen = 32

// ErrBadSignature is wrapped by Signer.Verify's error for a URL it did not
// sign, or one changed since.
var ErrBadSignature = errors.New("bad download link signature")

// ErrLinkExpired is wrapped by Signer.Verify's error for a URL it signed
// whose expiry has passed.
var ErrLinkExpired = errors.New("download link expired")

// Signer signs and verifies the download URLs of FS objects with
// HMAC-SHA256. A URL is
//
//	<baseURL>/download/<key>?ct=<content type>&exp=<unix seconds>&fn=<file name>&sig=<signature>
//
// and the signature covers the key, the expiry, the file name and the
// content type, so none can be changed. Anyone holding the secret can issue
// links: keep it secret, and share it only between the processes that issue
// links and the one that serves them.
type Signer struct {
	secret []byte
	base   string
	now    func() time.Time
}

// NewSigner returns a Signer that signs with secret, at least
// MinSignerSecretLen random bytes, URLs that start with baseURL, where
// DownloadHandler is reachable ("https://exports.example.com"; a path is
// kept: with "https://example.com/exportd", the handler must see requests
// with that path stripped). now is the clock that expiry is checked
// against; nil means time.Now.
func NewSigner(secret []byte, baseURL string, now func() time.Time) (*Signer, error) {
	if len(secret) < MinSignerSecretLen {
		return nil, fmt.Errorf("new signer: secret is %d bytes, want at least %d", len(secret), MinSignerSecretLen)
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("new signer: base URL: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("new signer: base URL %q: scheme is not http or https", baseURL)
	case u.Host == "":
		return nil, fmt.Errorf("new signer: base URL %q: no host", baseURL)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return nil, fmt.Errorf("new signer: base URL %q: has user info, a query or a fragment", baseURL)
	}
	if now == nil {
		now = time.Now
	}
	return &Signer{
		secret: append([]byte(nil), secret...),
		base:   strings.TrimSuffix(u.String(), "/"),
		now:    now,
	}, nil
}

// SignedLink is what a verified download URL asks for.
type SignedLink struct {
	Key         string
	Expires     time.Time
	FileName    string
	ContentType string
}

// URL returns the signed download URL of l. l.Expires is truncated to the
// second. URL does not validate l: FSLinker does.
func (s *Signer) URL(l SignedLink) string {
	exp := strconv.FormatInt(l.Expires.Unix(), 10)
	q := url.Values{
		"exp": {exp},
		"fn":  {l.FileName},
		"ct":  {l.ContentType},
		"sig": {s.sign(l.Key, exp, l.FileName, l.ContentType)},
	}
	return s.base + DownloadPath + escapeKey(l.Key) + "?" + q.Encode()
}

// Verify checks the query of a request for the download URL of key. It
// returns what the URL asks for, and an error wrapping ErrBadSignature if
// the signature does not match, or ErrLinkExpired if the link has expired.
// The signature is checked first, in constant time, so an expired link is
// reported only for a URL that s signed.
func (s *Signer) Verify(key string, query url.Values) (SignedLink, error) {
	exp, fn, ct := query.Get("exp"), query.Get("fn"), query.Get("ct")
	sig, err := base64.RawURLEncoding.DecodeString(query.Get("sig"))
	if err != nil {
		return SignedLink{}, fmt.Errorf("%w: malformed", ErrBadSignature)
	}
	if !hmac.Equal(sig, s.mac(key, exp, fn, ct)) {
		return SignedLink{}, ErrBadSignature
	}
	unix, err := strconv.ParseInt(exp, 10, 64)
	if err != nil {
		// Signed, so only a Signer bug gets here.
		return SignedLink{}, fmt.Errorf("%w: malformed expiry", ErrBadSignature)
	}
	l := SignedLink{Key: key, Expires: time.Unix(unix, 0), FileName: fn, ContentType: ct}
	if !s.now().Before(l.Expires) {
		return l, fmt.Errorf("%w at %s", ErrLinkExpired, l.Expires.UTC().Format(time.RFC3339))
	}
	return l, nil
}

func (s *Signer) sign(key, exp, fn, ct string) string {
	return base64.RawURLEncoding.EncodeToString(s.mac(key, exp, fn, ct))
}

// mac is the HMAC of the fields, each preceded by its length so that no
// two field lists share an encoding.
func (s *Signer) mac(fields ...string) []byte {
	h := hmac.New(sha256.New, s.secret)
	writeField(h, "exportd download link v1")
	for _, f := range fields {
		writeField(h, f)
	}
	return h.Sum(nil)
}

func writeField(h hash.Hash, f string) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(f)))
	h.Write(n[:])
	h.Write([]byte(f))
}

// escapeKey escapes each segment of key for use in a URL path.
func escapeKey(key string) string {
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return strings.Join(segs, "/")
}

// FSLinker issues links to FS objects, signed by Signer and served by
// DownloadHandler. It embeds the FS, so it is a store that links.
type FSLinker struct {
	*FS
	Signer *Signer
}

var _ Linker = FSLinker{}

// Link checks that the object exists and signs a URL for it.
func (l FSLinker) Link(ctx context.Context, key string, o LinkOptions) (Link, error) {
	o, err := linkParams(key, o)
	if err != nil {
		return Link{}, fmt.Errorf("link object: %w", err)
	}
	if _, err := l.FS.Stat(ctx, key); err != nil {
		return Link{}, fmt.Errorf("link object: %w", err)
	}
	expires := time.Unix(l.Signer.now().Add(o.TTL).Unix(), 0)
	u := l.Signer.URL(SignedLink{Key: key, Expires: expires, FileName: o.FileName, ContentType: o.ContentType})
	return Link{URL: u, Expires: expires}, nil
}
