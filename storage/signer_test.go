package storage

import (
	"bytes"
	"mime"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// clock is a settable clock for Signer.
type clock struct{ unixNano atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.set(t)
	return c
}

func (c *clock) now() time.Time      { return time.Unix(0, c.unixNano.Load()) }
func (c *clock) set(t time.Time)     { c.unixNano.Store(t.UnixNano()) }
func (c *clock) add(d time.Duration) { c.unixNano.Add(int64(d)) }

var testSecret = bytes.Repeat([]byte("k"), MinSignerSecretLen)

func newSigner(t *testing.T, base string, c *clock) *Signer {
	t.Helper()
	s, err := NewSigner(testSecret, base, c.now)
	require.NoError(t, err)
	return s
}

func TestNewSignerInvalid(t *testing.T) {
	for _, tc := range []struct {
		name   string
		secret []byte
		base   string
		want   string
	}{
		{"short secret", testSecret[1:], "https://x.example", "at least 32"},
		{"no secret", nil, "https://x.example", "at least 32"},
		{"scheme", testSecret, "ftp://x.example", "scheme"},
		{"relative", testSecret, "/download", "scheme"},
		{"no host", testSecret, "https://", "no host"},
		{"query", testSecret, "https://x.example/?a=b", "query"},
		{"fragment", testSecret, "https://x.example/#a", "fragment"},
		{"user", testSecret, "https://u:p@x.example/", "user"},
		{"unparsable", testSecret, "https://x.example/%zz", "base URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewSigner(tc.secret, tc.base, nil)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// verifyURL verifies a signed URL as DownloadHandler does.
func verifyURL(t *testing.T, s *Signer, rawURL string) (SignedLink, error) {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	key, ok := strings.CutPrefix(u.Path, DownloadPath)
	require.True(t, ok, u.Path)
	return s.Verify(key, u.Query())
}

func TestSignerURL(t *testing.T) {
	c := newClock(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC))
	exp := c.now().Add(time.Hour)
	for _, tc := range []struct {
		name, base, key, want string
	}{
		{"plain", "https://x.example", "a/b.zip", "https://x.example/download/a/b.zip?"},
		{"trailing slash", "https://x.example/", "a", "https://x.example/download/a?"},
		{"base path", "http://127.0.0.1:8080/exportd/", "a", "http://127.0.0.1:8080/exportd/download/a?"},
		{"escaped", "https://x.example", "t/ü €/a?b#c%d+e.zip", "https://x.example/download/t/%C3%BC%20%E2%82%AC/a%3Fb%23c%25d+e.zip?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSigner(t, tc.base, c)
			want := SignedLink{Key: tc.key, Expires: exp, FileName: "ü.zip", ContentType: "application/zip"}
			u := s.URL(want)
			require.True(t, strings.HasPrefix(u, tc.want), u)
			parsed, err := url.Parse(u)
			require.NoError(t, err)
			require.ElementsMatch(t, []string{"ct", "exp", "fn", "sig"}, keys(parsed.Query()))

			// As the handler sees it, with the base URL's path stripped.
			got, err := verifyURL(t, s, strings.Replace(u, strings.TrimSuffix(tc.base, "/"), "https://other.example", 1))
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
	}
}

func keys(q url.Values) []string {
	var ks []string
	for k := range q {
		ks = append(ks, k)
	}
	return ks
}

func TestSignerRefusesTampering(t *testing.T) {
	c := newClock(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC))
	s := newSigner(t, "https://x.example", c)
	link := SignedLink{Key: "t/1/bundle.zip", Expires: c.now().Add(time.Hour), FileName: "bundle.zip", ContentType: "application/zip"}
	u, err := url.Parse(s.URL(link))
	require.NoError(t, err)
	_, err = s.Verify(link.Key, u.Query())
	require.NoError(t, err)

	tampered := func(param, value string) url.Values {
		q := u.Query()
		q.Set(param, value)
		return q
	}
	later := c.now().Add(7 * 24 * time.Hour).Unix()
	for _, tc := range []struct {
		name  string
		key   string
		query url.Values
	}{
		{"key", "t/2/bundle.zip", u.Query()},
		{"key prefix", "t/1/bundle.zi", u.Query()},
		{"expiry extended", link.Key, tampered("exp", strconv.FormatInt(later, 10))},
		{"expiry shortened", link.Key, tampered("exp", strconv.FormatInt(link.Expires.Unix()-1, 10))},
		{"expiry with a leading zero", link.Key, tampered("exp", "0"+u.Query().Get("exp"))},
		{"file name", link.Key, tampered("fn", "evil.exe")},
		{"content type", link.Key, tampered("ct", "text/html")},
		{"signature", link.Key, tampered("sig", flip(u.Query().Get("sig")))},
		{"signature truncated", link.Key, tampered("sig", u.Query().Get("sig")[1:])},
		{"signature malformed", link.Key, tampered("sig", "!!!")},
		{"no signature", link.Key, tampered("sig", "")},
		{"fields shifted", link.Key, tampered("fn", "bundle.zipapplication/zip")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Verify(tc.key, tc.query)
			require.ErrorIs(t, err, ErrBadSignature)
			require.NotErrorIs(t, err, ErrLinkExpired)
		})
	}
	t.Run("other secret", func(t *testing.T) {
		other, err := NewSigner(bytes.Repeat([]byte("j"), MinSignerSecretLen), "https://x.example", c.now)
		require.NoError(t, err)
		_, err = other.Verify(link.Key, u.Query())
		require.ErrorIs(t, err, ErrBadSignature)
	})
}

// flip changes the first character of s.
func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

func TestSignerExpiry(t *testing.T) {
	start := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	c := newClock(start)
	s := newSigner(t, "https://x.example", c)
	u := s.URL(SignedLink{Key: "k", Expires: start.Add(time.Minute), FileName: "k", ContentType: "text/csv"})

	c.set(start.Add(time.Minute - time.Nanosecond))
	_, err := verifyURL(t, s, u)
	require.NoError(t, err, "valid until the second it expires")

	c.set(start.Add(time.Minute))
	got, err := verifyURL(t, s, u)
	require.ErrorIs(t, err, ErrLinkExpired)
	require.ErrorContains(t, err, "2024-05-01T12:01:00Z")
	require.Equal(t, start.Add(time.Minute), got.Expires.UTC())

	c.add(365 * 24 * time.Hour)
	_, err = verifyURL(t, s, u)
	require.ErrorIs(t, err, ErrLinkExpired)
}

func TestFSLinker(t *testing.T) {
	start := time.Date(2024, 5, 1, 12, 0, 0, 500_000_000, time.UTC)
	c := newClock(start)
	fs := newFS(t)
	l := FSLinker{FS: fs, Signer: newSigner(t, "https://x.example", c)}
	put(t, fs, "t/1/master.csv", []byte("a,b\n"))

	link, err := l.Link(t.Context(), "t/1/master.csv", LinkOptions{})
	require.NoError(t, err)
	require.Equal(t, start.Add(DefaultLinkTTL).Truncate(time.Second), link.Expires.UTC())
	got, err := verifyURL(t, l.Signer, link.URL)
	require.NoError(t, err)
	require.Equal(t, SignedLink{Key: "t/1/master.csv", Expires: link.Expires, FileName: "master.csv", ContentType: "application/octet-stream"}, got)

	link, err = l.Link(t.Context(), "t/1/master.csv", LinkOptions{TTL: time.Minute, FileName: "Übersicht.csv", ContentType: "text/csv; charset=utf-8"})
	require.NoError(t, err)
	require.Equal(t, start.Add(time.Minute).Truncate(time.Second), link.Expires.UTC())
	got, err = verifyURL(t, l.Signer, link.URL)
	require.NoError(t, err)
	require.Equal(t, "Übersicht.csv", got.FileName)
	require.Equal(t, "text/csv; charset=utf-8", got.ContentType)

	_, err = l.Link(t.Context(), "t/1/missing.csv", LinkOptions{})
	require.ErrorIs(t, err, ErrNotExist)
	_, err = l.Link(t.Context(), "t/1/master.csv", LinkOptions{TTL: MaxLinkTTL + time.Second})
	require.ErrorContains(t, err, "above the maximum")
	_, err = l.Link(t.Context(), "t/1/master.csv", LinkOptions{TTL: MaxLinkTTL})
	require.NoError(t, err)
	_, err = l.Link(t.Context(), "../master.csv", LinkOptions{})
	require.ErrorContains(t, err, "invalid key")
}

func TestContentDisposition(t *testing.T) {
	for _, tc := range []struct {
		name, want string
	}{
		{"bundle.zip", `attachment; filename=bundle.zip`},
		{"bundle 1.zip", `attachment; filename="bundle 1.zip"`},
		{`a "quoted" name.csv`, `attachment; filename="a \"quoted\" name.csv"`},
		{"50%.csv", `attachment; filename=50%.csv`},
		{"Übersicht 2024.csv", `attachment; filename="_bersicht 2024.csv"; filename*=utf-8''%C3%9Cbersicht%202024.csv`},
		{"数据.zip", `attachment; filename=__.zip; filename*=utf-8''%E6%95%B0%E6%8D%AE.zip`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := contentDisposition(tc.name)
			require.Equal(t, tc.want, got)
			typ, params, err := mime.ParseMediaType(got)
			require.NoError(t, err)
			require.Equal(t, "attachment", typ)
			require.Equal(t, tc.name, params["filename"], "a parser that knows filename* gets the exact name")
		})
	}
}
