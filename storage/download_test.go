package storage

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// downloadFixture is an FS served by DownloadHandler on an httptest server.
type downloadFixture struct {
	fs     *FS
	clock  *clock
	linker FSLinker
	logs   *lockedBuffer
	server *httptest.Server
	client *http.Client
	// handler is the DownloadHandler, for requests that the server's mux
	// would not pass on.
	handler http.Handler
}

func newDownloadFixture(t *testing.T) *downloadFixture {
	t.Helper()
	f := &downloadFixture{
		fs:    newFS(t),
		clock: newClock(time.Now()),
		logs:  &lockedBuffer{},
	}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(f.logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	mux := http.NewServeMux()
	mux.Handle(DownloadPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { f.handler.ServeHTTP(w, r) }))
	f.server = httptest.NewServer(mux)
	t.Cleanup(f.server.Close)
	f.linker = FSLinker{FS: f.fs, Signer: newSigner(t, f.server.URL, f.clock)}
	f.handler = DownloadHandler(f.fs, f.linker.Signer, logger)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	f.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return f
}

func (f *downloadFixture) link(t *testing.T, key string, o LinkOptions) string {
	t.Helper()
	l, err := f.linker.Link(t.Context(), key, o)
	require.NoError(t, err)
	return l.URL
}

// do sends a request and returns the response with its body read.
func (f *downloadFixture) do(t *testing.T, method, url string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := f.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

func TestDownload(t *testing.T) {
	f := newDownloadFixture(t)
	data := randomBytes(t, 300_000)
	const key = "tenants/42/exports/2024-05-01/bundle 1.zip"
	put(t, f.fs, key, data)
	info, err := f.fs.Stat(t.Context(), key)
	require.NoError(t, err)
	link := f.link(t, key, LinkOptions{FileName: "Bündel 1.zip", ContentType: "application/zip"})

	t.Run("GET", func(t *testing.T) {
		resp, body := f.do(t, http.MethodGet, link, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.True(t, bytes.Equal(data, body), "content")
		require.Equal(t, int64(len(data)), resp.ContentLength)
		require.Equal(t, strconv.Itoa(len(data)), resp.Header.Get("Content-Length"))
		require.Equal(t, "application/zip", resp.Header.Get("Content-Type"))
		require.Equal(t, `attachment; filename="B_ndel 1.zip"; filename*=utf-8''B%C3%BCndel%201.zip`, resp.Header.Get("Content-Disposition"))
		require.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
		require.Equal(t, info.ModTime.UTC().Format(http.TimeFormat), resp.Header.Get("Last-Modified"))
		require.NotEmpty(t, resp.Header.Get("ETag"))
		require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
	})
	t.Run("HEAD", func(t *testing.T) {
		resp, body := f.do(t, http.MethodHead, link, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Empty(t, body)
		require.Equal(t, strconv.Itoa(len(data)), resp.Header.Get("Content-Length"))
		require.Equal(t, "application/zip", resp.Header.Get("Content-Type"))
		require.Contains(t, resp.Header.Get("Content-Disposition"), "attachment")
	})
	t.Run("Range", func(t *testing.T) {
		for _, tc := range []struct {
			rng        string
			start, end int // inclusive
		}{
			{"bytes=100-199", 100, 199},
			{"bytes=-10", len(data) - 10, len(data) - 1},
			{"bytes=299990-", len(data) - 10, len(data) - 1},
		} {
			t.Run(tc.rng, func(t *testing.T) {
				resp, body := f.do(t, http.MethodGet, link, map[string]string{"Range": tc.rng})
				require.Equal(t, http.StatusPartialContent, resp.StatusCode, string(body))
				require.Equal(t, fmt.Sprintf("bytes %d-%d/%d", tc.start, tc.end, len(data)), resp.Header.Get("Content-Range"))
				require.Equal(t, strconv.Itoa(tc.end-tc.start+1), resp.Header.Get("Content-Length"))
				require.True(t, bytes.Equal(data[tc.start:tc.end+1], body), "content")
				require.Equal(t, "application/zip", resp.Header.Get("Content-Type"))
			})
		}
		t.Run("unsatisfiable", func(t *testing.T) {
			resp, _ := f.do(t, http.MethodGet, link, map[string]string{"Range": "bytes=300000-"})
			require.Equal(t, http.StatusRequestedRangeNotSatisfiable, resp.StatusCode)
		})
		t.Run("If-Range", func(t *testing.T) {
			resp, _ := f.do(t, http.MethodHead, link, nil)
			etag := resp.Header.Get("ETag")
			resp, body := f.do(t, http.MethodGet, link, map[string]string{"Range": "bytes=0-9", "If-Range": etag})
			require.Equal(t, http.StatusPartialContent, resp.StatusCode, "unchanged: the range")
			require.Equal(t, data[:10], body)
			resp, body = f.do(t, http.MethodGet, link, map[string]string{"Range": "bytes=0-9", "If-Range": `"changed"`})
			require.Equal(t, http.StatusOK, resp.StatusCode, "changed: the whole object")
			require.True(t, bytes.Equal(data, body))
		})
	})
	t.Run("defaults", func(t *testing.T) {
		resp, body := f.do(t, http.MethodGet, f.link(t, key, LinkOptions{}), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.Equal(t, "application/octet-stream", resp.Header.Get("Content-Type"), "not sniffed")
		require.Equal(t, `attachment; filename="bundle 1.zip"`, resp.Header.Get("Content-Disposition"))
	})
}

func TestDownloadRefused(t *testing.T) {
	f := newDownloadFixture(t)
	put(t, f.fs, "t/1/master.csv", []byte("a,b\n"))
	put(t, f.fs, "t/1/other.csv", []byte("secret\n"))
	link := f.link(t, "t/1/master.csv", LinkOptions{TTL: time.Hour, ContentType: "text/csv"})
	u, err := url.Parse(link)
	require.NoError(t, err)
	sig := u.Query().Get("sig")

	withQuery := func(param, value string) string {
		v := *u
		q := v.Query()
		q.Set(param, value)
		v.RawQuery = q.Encode()
		return v.String()
	}
	otherKey := strings.Replace(link, "master.csv", "other.csv", 1)
	for _, tc := range []struct {
		name   string
		method string
		url    string
		want   int
	}{
		{"tampered signature", http.MethodGet, withQuery("sig", flip(sig)), http.StatusForbidden},
		{"tampered expiry", http.MethodGet, withQuery("exp", strconv.FormatInt(time.Now().Add(24*time.Hour).Unix(), 10)), http.StatusForbidden},
		{"tampered file name", http.MethodGet, withQuery("fn", "evil.html"), http.StatusForbidden},
		{"tampered content type", http.MethodGet, withQuery("ct", "text/html"), http.StatusForbidden},
		{"other key", http.MethodGet, otherKey, http.StatusForbidden},
		{"no query", http.MethodGet, strings.Split(link, "?")[0], http.StatusForbidden},
		{"HEAD tampered", http.MethodHead, withQuery("sig", flip(sig)), http.StatusForbidden},
		{"POST", http.MethodPost, link, http.StatusMethodNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := f.do(t, tc.method, tc.url, nil)
			require.Equal(t, tc.want, resp.StatusCode, string(body))
			require.NotEqual(t, "text/csv", resp.Header.Get("Content-Type"))
			require.NotContains(t, string(body), "secret")
		})
	}

	t.Run("invalid paths", func(t *testing.T) {
		for _, path := range []string{"/download/a//b", "/download/../t/1/master.csv", "/download/", "/other/t/1/master.csv"} {
			rec := httptest.NewRecorder()
			f.handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path+"?"+u.RawQuery, nil))
			require.Equal(t, http.StatusNotFound, rec.Code, path)
		}
	})
	t.Run("expired", func(t *testing.T) {
		f.clock.add(time.Hour)
		resp, body := f.do(t, http.MethodGet, link, nil)
		require.Equal(t, http.StatusGone, resp.StatusCode)
		require.Contains(t, string(body), "expired")
		resp, _ = f.do(t, http.MethodGet, withQuery("sig", flip(sig)), nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode, "tampered and expired: tampered")
		f.clock.add(-time.Hour)
	})
	t.Run("deleted", func(t *testing.T) {
		del(t, f.fs, "t/1/master.csv")
		resp, body := f.do(t, http.MethodGet, link, nil)
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
		require.Contains(t, string(body), "no longer exists")
	})

	logs := f.logs.String()
	require.Contains(t, logs, "refused download link with a bad signature")
	require.Contains(t, logs, "refused expired download link")
	require.NotContains(t, logs, sig, "the logs never hold a signature")
	require.NotContains(t, logs, "sig=")
}

func TestDownloadCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is not installed")
		}
		t.Skip("curl is not installed")
	}
	f := newDownloadFixture(t)
	data := randomBytes(t, 1<<20+1)
	put(t, f.fs, "t/1/bundle.zip", data)
	link := f.link(t, "t/1/bundle.zip", LinkOptions{FileName: "export-2024-05-01.zip", ContentType: "application/zip"})

	// --remote-name --remote-header-name: save under the Content-Disposition name.
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), curl, "--fail", "--silent", "--show-error", "--remote-name", "--remote-header-name", link)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	got, err := os.ReadFile(filepath.Join(dir, "export-2024-05-01.zip"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "content")

	// A resumed download: the second half only.
	half := filepath.Join(dir, "half")
	require.NoError(t, os.WriteFile(half, data[:len(data)/2], 0o600))
	out, err = exec.CommandContext(t.Context(), curl, "--fail", "--silent", "--show-error", "--continue-at", "-", "--output", half, link).CombinedOutput()
	require.NoError(t, err, string(out))
	got, err = os.ReadFile(half)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "resumed content")

	out, err = exec.CommandContext(t.Context(), curl, "--silent", "--output", os.DevNull, "--write-out", "%{http_code}", strings.Replace(link, "sig=", "sig=A", 1)).Output()
	require.NoError(t, err)
	require.Equal(t, "403", string(out))
}
