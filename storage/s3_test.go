package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/s3test"
	"github.com/exportd/exportd/storage"
)

// recorder is an HTTP transport that records the requests an S3 client
// sends, and can fail some.
type recorder struct {
	base http.RoundTripper

	mu   sync.Mutex
	reqs []recorded
	oks  []recorded // requests answered 2xx
	fail func(recorded) error
	// answer, if it returns a response, answers the request in the
	// server's place.
	answer func(recorded) *http.Response
}

type recorded struct {
	Method string
	Path   string
	Query  url.Values
	Header http.Header
}

// op names the S3 operation of a request.
func (r recorded) op() string {
	switch {
	case r.Method == http.MethodPost && r.Query.Has("uploads"):
		return "CreateMultipartUpload"
	case r.Method == http.MethodPut && r.Query.Has("partNumber"):
		return "UploadPart"
	case r.Method == http.MethodPost && r.Query.Has("uploadId"):
		return "CompleteMultipartUpload"
	case r.Method == http.MethodDelete && r.Query.Has("uploadId"):
		return "AbortMultipartUpload"
	case r.Method == http.MethodPut:
		return "PutObject"
	}
	return r.Method
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	rec := recorded{Method: req.Method, Path: req.URL.Path, Query: req.URL.Query(), Header: req.Header.Clone()}
	r.mu.Lock()
	r.reqs = append(r.reqs, rec)
	fail, answer := r.fail, r.answer
	r.mu.Unlock()
	if answer != nil {
		if resp := answer(rec); resp != nil {
			if req.Body != nil {
				_ = req.Body.Close()
			}
			resp.Request = req
			return resp, nil
		}
	}
	if fail != nil {
		if err := fail(rec); err != nil {
			if req.Body != nil {
				_ = req.Body.Close()
			}
			return nil, err
		}
	}
	resp, err := r.base.RoundTrip(req)
	if err == nil && resp.StatusCode/100 == 2 {
		r.mu.Lock()
		r.oks = append(r.oks, rec)
		r.mu.Unlock()
	}
	return resp, err
}

// waitOK waits until a request of operation op has succeeded.
func (r *recorder) waitOK(t *testing.T, op string) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, rec := range r.oks {
			if rec.op() == op {
				r.mu.Unlock()
				return
			}
		}
		r.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("no %s succeeded in 30s", op)
}

// requests returns the recorded requests of operation op.
func (r *recorder) requests(op string) []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	var got []recorded
	for _, rec := range r.reqs {
		if rec.op() == op {
			got = append(got, rec)
		}
	}
	return got
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs, r.oks = nil, nil
}

// newS3 returns an S3 store of cfg whose requests are recorded.
func newS3(t *testing.T, cfg storage.S3Config, optFns ...func(*s3.Options)) (*storage.S3, *recorder) {
	t.Helper()
	return newS3Logger(t, cfg, slog.New(slog.NewTextHandler(t.Output(), nil)), optFns...)
}

func newS3Logger(t *testing.T, cfg storage.S3Config, logger *slog.Logger, optFns ...func(*s3.Options)) (*storage.S3, *recorder) {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	rec := &recorder{base: tr}
	optFns = append([]func(*s3.Options){func(o *s3.Options) {
		o.HTTPClient = &http.Client{Transport: rec}
	}}, optFns...)
	s, err := storage.NewS3WithOptions(t.Context(), cfg, logger, optFns...)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s, rec
}

func TestS3Conformance(t *testing.T) {
	srv := s3test.Start(t)
	s, _ := newS3(t, srv.S3Config("tenants/conformance"))
	storage.RunStoreConformance(t, s)
}

// stream hides the Seek of a bytes.Reader: Put sees an io.Reader of
// unknown length.
func stream(b []byte) io.Reader { return io.MultiReader(bytes.NewReader(b)) }

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func getBytes(t *testing.T, s storage.Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(t.Context(), key)
	require.NoError(t, err)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	require.NoError(t, err)
	return b
}

func TestS3Prefix(t *testing.T) {
	srv := s3test.Start(t)
	bare, _ := newS3(t, srv.S3Config(""))
	prefixed, _ := newS3(t, srv.S3Config("tenants/7/"))
	_, err := prefixed.Put(t.Context(), "a", strings.NewReader("under the prefix"))
	require.NoError(t, err)
	require.Equal(t, "under the prefix", string(getBytes(t, bare, "tenants/7/a")))
	_, err = bare.Stat(t.Context(), "a")
	require.ErrorIs(t, err, storage.ErrNotExist)

	var keys []string
	require.NoError(t, prefixed.List(t.Context(), "", func(o storage.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}))
	require.Equal(t, []string{"a"}, keys)
}

func TestS3MultipartUpload(t *testing.T) {
	srv := s3test.Start(t)
	cfg := srv.S3Config("mp")
	cfg.PartSize = storage.MinS3PartSize
	cfg.Concurrency = 2
	s, rec := newS3(t, cfg)

	data := randomBytes(t, 12<<20+12345)
	n, err := s.Put(t.Context(), "big.zip", stream(data))
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), n)
	require.Len(t, rec.requests("CreateMultipartUpload"), 1)
	require.Len(t, rec.requests("UploadPart"), 3)
	require.Len(t, rec.requests("CompleteMultipartUpload"), 1)
	require.Empty(t, rec.requests("PutObject"))

	require.True(t, bytes.Equal(data, getBytes(t, s, "big.zip")), "content")
	info, err := s.Stat(t.Context(), "big.zip")
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), info.Size)

	t.Run("at most a part is one PutObject", func(t *testing.T) {
		rec.reset()
		small := data[:storage.MinS3PartSize-1]
		n, err := s.Put(t.Context(), "small", stream(small))
		require.NoError(t, err)
		require.Equal(t, int64(len(small)), n)
		require.Len(t, rec.requests("PutObject"), 1)
		require.Empty(t, rec.requests("CreateMultipartUpload"))
		require.True(t, bytes.Equal(small, getBytes(t, s, "small")))
	})
}

// failingReader returns data, then err, after calling before.
type failingReader struct {
	data   []byte
	err    error
	before func()
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		if r.before != nil {
			r.before()
			r.before = nil
		}
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// cancelingReader calls before and cancels a context, then returns zeros
// for ever.
type cancelingReader struct {
	before func()
	cancel context.CancelFunc
}

func (r cancelingReader) Read(p []byte) (int, error) {
	r.before()
	r.cancel()
	clear(p)
	return len(p), nil
}

// noUploads checks that the bucket has no multipart uploads in progress.
func noUploads(t *testing.T, srv *s3test.Server) {
	t.Helper()
	out, err := srv.Client(t).ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: aws.String(srv.Bucket)})
	require.NoError(t, err)
	require.Empty(t, out.Uploads, "multipart uploads left behind")
}

func TestS3FailedMultipartUpload(t *testing.T) {
	srv := s3test.Start(t)
	errBroken := errors.New("broken source")
	errNetwork := errors.New("network down")
	for _, tc := range []struct {
		name string
		// setup returns the context and reader of the Put, and the error it
		// must wrap.
		setup func(t *testing.T, data []byte, rec *recorder) (context.Context, io.Reader, error)
	}{
		{"reader fails", func(t *testing.T, data []byte, rec *recorder) (context.Context, io.Reader, error) {
			return t.Context(), &failingReader{data: data, err: errBroken, before: func() { rec.waitOK(t, "UploadPart") }}, errBroken
		}},
		{"context canceled mid-stream", func(t *testing.T, data []byte, rec *recorder) (context.Context, io.Reader, error) {
			ctx, cancel := context.WithCancel(t.Context())
			r := cancelingReader{before: func() { rec.waitOK(t, "UploadPart") }, cancel: cancel}
			return ctx, io.MultiReader(bytes.NewReader(data), r), context.Canceled
		}},
		{"transfer manager's abort fails", func(t *testing.T, data []byte, rec *recorder) (context.Context, io.Reader, error) {
			failed := false
			rec.fail = func(req recorded) error {
				if req.op() == "AbortMultipartUpload" && !failed {
					failed = true
					return errNetwork
				}
				return nil
			}
			return t.Context(), &failingReader{data: data, err: errBroken, before: func() { rec.waitOK(t, "UploadPart") }}, errBroken
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := srv.S3Config("failed")
			cfg.PartSize = storage.MinS3PartSize
			s, rec := newS3(t, cfg, func(o *s3.Options) { o.RetryMaxAttempts = 1 })
			ctx, r, wantErr := tc.setup(t, randomBytes(t, 11<<20), rec)

			key := strings.ReplaceAll(tc.name, " ", "-")
			_, err := s.Put(ctx, key, r)
			require.ErrorIs(t, err, wantErr)
			require.NotEmpty(t, rec.requests("UploadPart"), "parts were uploaded")
			require.NotEmpty(t, rec.requests("AbortMultipartUpload"), "and the upload aborted")
			_, err = s.Stat(t.Context(), key)
			require.ErrorIs(t, err, storage.ErrNotExist)
			noUploads(t, srv)
		})
	}
	noUploads(t, srv) // nor after the requests of the last one
}

// download GETs url with a client of its own and returns the response with
// its body read.
func download(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	resp, err := client.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

// curl downloads url with curl into a file and returns its content.
func curl(t *testing.T, url string) []byte {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is not installed")
		}
		t.Skip("curl is not installed")
	}
	out := filepath.Join(t.TempDir(), "download")
	cmdOut, err := exec.CommandContext(t.Context(), path, "--fail", "--silent", "--show-error", "--output", out, url).CombinedOutput()
	require.NoError(t, err, string(cmdOut))
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	return b
}

// awsCLI runs the AWS CLI against srv with its credentials and no others.
func awsCLI(t *testing.T, srv *s3test.Server, args ...string) {
	t.Helper()
	path, err := exec.LookPath("aws")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("the AWS CLI is not installed")
		}
		t.Skip("the AWS CLI is not installed")
	}
	dir := t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"AWS_ACCESS_KEY_ID="+srv.AccessKey,
		"AWS_SECRET_ACCESS_KEY="+srv.SecretKey,
		"AWS_DEFAULT_REGION="+srv.Region,
		"AWS_CONFIG_FILE="+filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(dir, "credentials"),
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_PAGER=", // AWS CLI v2 pipes output through less otherwise
	)
	cmd := exec.CommandContext(t.Context(), path, append([]string{"--endpoint-url", srv.Endpoint}, args...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "aws %s:\n%s", strings.Join(args, " "), out)
}

// tamper flips a character of the query parameter param of rawURL.
func tamper(t *testing.T, rawURL, param string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	q := u.Query()
	v := []byte(q.Get(param))
	require.NotEmpty(t, v, param)
	switch {
	case v[0] == '1':
		v[0] = '2'
	case v[0] >= '0' && v[0] <= '9':
		v[0] = '1'
	case v[0] == 'a':
		v[0] = 'b'
	default:
		v[0] = 'a'
	}
	q.Set(param, string(v))
	u.RawQuery = q.Encode()
	return u.String()
}

func TestS3Link(t *testing.T) {
	srv := s3test.Start(t)
	s, _ := newS3(t, srv.S3Config("links"))
	data := randomBytes(t, 1<<20+3)
	const key = "tenants/42/exports/2024-05-01/bundle 1.zip"
	_, err := s.Put(t.Context(), key, stream(data))
	require.NoError(t, err)

	before := time.Now()
	link, err := s.Link(t.Context(), key, storage.LinkOptions{FileName: "Bündel 1.zip", ContentType: "application/zip"})
	require.NoError(t, err)
	require.WithinRange(t, link.Expires, before.Add(storage.DefaultLinkTTL-time.Second), time.Now().Add(storage.DefaultLinkTTL))
	u, err := url.Parse(link.URL)
	require.NoError(t, err)
	require.Equal(t, "host", u.Query().Get("X-Amz-SignedHeaders"), "a plain GET can follow the link")
	require.Equal(t, "604800", u.Query().Get("X-Amz-Expires"))

	t.Run("net/http", func(t *testing.T) {
		resp, body := download(t, link.URL)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.True(t, bytes.Equal(data, body), "content")
		require.Equal(t, "application/zip", resp.Header.Get("Content-Type"))
		require.Equal(t, `attachment; filename="B_ndel 1.zip"; filename*=utf-8''B%C3%BCndel%201.zip`, resp.Header.Get("Content-Disposition"))
		require.Equal(t, int64(len(data)), resp.ContentLength)
	})
	t.Run("curl", func(t *testing.T) {
		require.True(t, bytes.Equal(data, curl(t, link.URL)), "content")
	})
	t.Run("AWS CLI", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "bundle.zip")
		awsCLI(t, srv, "s3api", "get-object", "--bucket", srv.Bucket, "--key", "links/"+key, out)
		got, err := os.ReadFile(out)
		require.NoError(t, err)
		require.True(t, bytes.Equal(data, got), "content")
	})
	t.Run("tampered", func(t *testing.T) {
		for _, param := range []string{"X-Amz-Signature", "X-Amz-Expires", "response-content-type"} {
			resp, body := download(t, tamper(t, link.URL, param))
			require.Equal(t, http.StatusForbidden, resp.StatusCode, "%s: %s", param, body)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		link, err := s.Link(t.Context(), key, storage.LinkOptions{TTL: time.Hour})
		require.NoError(t, err)
		resp, body := download(t, link.URL)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.Equal(t, "application/octet-stream", resp.Header.Get("Content-Type"))
		require.Equal(t, `attachment; filename="bundle 1.zip"`, resp.Header.Get("Content-Disposition"))
	})
	t.Run("invalid", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			key  string
			o    storage.LinkOptions
			want string
		}{
			{"TTL above 7 days", key, storage.LinkOptions{TTL: storage.MaxLinkTTL + time.Second}, "above the maximum"},
			{"TTL below a second", key, storage.LinkOptions{TTL: time.Millisecond}, "below the minimum"},
			{"negative TTL", key, storage.LinkOptions{TTL: -time.Hour}, "below the minimum"},
			{"file name with a slash", key, storage.LinkOptions{FileName: "a/b"}, "invalid file name"},
			{"file name with a newline", key, storage.LinkOptions{FileName: "a\nb"}, "invalid file name"},
			{"content type", key, storage.LinkOptions{ContentType: "text/plain\r\nX-Evil: 1"}, "invalid content type"},
			{"key", "../x", storage.LinkOptions{}, "invalid key"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := s.Link(t.Context(), tc.key, tc.o)
				require.ErrorContains(t, err, tc.want)
			})
		}
		_, err := s.Link(t.Context(), key, storage.LinkOptions{TTL: storage.MaxLinkTTL})
		require.NoError(t, err, "exactly the maximum")
	})
	t.Run("missing object", func(t *testing.T) {
		_, err := s.Link(t.Context(), "missing", storage.LinkOptions{})
		require.ErrorIs(t, err, storage.ErrNotExist)
	})
}

func TestS3LinkExpires(t *testing.T) {
	srv := s3test.Start(t)
	s, _ := newS3(t, srv.S3Config(""))
	_, err := s.Put(t.Context(), "obj", strings.NewReader("soon gone"))
	require.NoError(t, err)
	// X-Amz-Date has whole seconds: a TTL of 3s leaves at least 2.
	link, err := s.Link(t.Context(), "obj", storage.LinkOptions{TTL: 3 * time.Second})
	require.NoError(t, err)
	resp, body := download(t, link.URL)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.Equal(t, "soon gone", string(body))

	deadline := time.Now().Add(30 * time.Second)
	for resp.StatusCode == http.StatusOK {
		require.True(t, time.Now().Before(deadline), "link still works 30s after it should have expired")
		time.Sleep(100 * time.Millisecond)
		resp, body = download(t, link.URL)
	}
	require.Equal(t, http.StatusForbidden, resp.StatusCode, string(body))
	require.Contains(t, string(body), "expired")
	require.False(t, time.Now().Before(link.Expires), "refused at %v, before Link.Expires %v", time.Now(), link.Expires)
}

// TestS3ServerSideEncryption checks the SSE headers that uploads send.
// versitygw accepts and ignores them (it reports no encryption back), so
// this is all that can be tested here.
func TestS3ServerSideEncryption(t *testing.T) {
	srv := s3test.Start(t)
	for _, tc := range []struct {
		sse, kmsKey string
	}{
		{"AES256", ""},
		{"aws:kms", "arn:aws:kms:us-east-1:111122223333:key/exportd-test"},
	} {
		t.Run(tc.sse, func(t *testing.T) {
			cfg := srv.S3Config("sse")
			cfg.SSE, cfg.SSEKMSKeyID = tc.sse, tc.kmsKey
			cfg.PartSize = storage.MinS3PartSize
			s, rec := newS3(t, cfg)
			small := randomBytes(t, 1000)
			big := randomBytes(t, storage.MinS3PartSize+1)
			_, err := s.Put(t.Context(), "small", stream(small))
			require.NoError(t, err)
			_, err = s.Put(t.Context(), "big", stream(big))
			require.NoError(t, err)

			for _, op := range []string{"PutObject", "CreateMultipartUpload"} {
				reqs := rec.requests(op)
				require.Len(t, reqs, 1, op)
				require.Equal(t, tc.sse, reqs[0].Header.Get("X-Amz-Server-Side-Encryption"), op)
				require.Equal(t, tc.kmsKey, reqs[0].Header.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"), op)
			}
			require.True(t, bytes.Equal(small, getBytes(t, s, "small")))
			require.True(t, bytes.Equal(big, getBytes(t, s, "big")))
		})
	}
}

func TestS3RequestChecksum(t *testing.T) {
	srv := s3test.Start(t)
	for _, tc := range []struct {
		setting      string
		wantChecksum bool
	}{
		{"", true},
		{storage.RequestChecksumWhenSupported, true},
		{storage.RequestChecksumWhenRequired, false},
	} {
		t.Run("setting "+tc.setting, func(t *testing.T) {
			cfg := srv.S3Config("checksum")
			cfg.RequestChecksum = tc.setting
			cfg.PartSize = storage.MinS3PartSize
			s, rec := newS3(t, cfg)
			small := randomBytes(t, 1000)
			big := randomBytes(t, storage.MinS3PartSize+1)
			_, err := s.Put(t.Context(), "small", stream(small))
			require.NoError(t, err)
			_, err = s.Put(t.Context(), "big", stream(big))
			require.NoError(t, err)
			require.True(t, bytes.Equal(small, getBytes(t, s, "small")))
			require.True(t, bytes.Equal(big, getBytes(t, s, "big")))

			for _, op := range []string{"PutObject", "UploadPart"} {
				for _, req := range rec.requests(op) {
					sent := req.Header.Get("X-Amz-Sdk-Checksum-Algorithm") != "" ||
						req.Header.Get("X-Amz-Trailer") != "" ||
						req.Header.Get("X-Amz-Checksum-Crc32") != ""
					require.Equal(t, tc.wantChecksum, sent, "%s headers %v", op, req.Header)
				}
			}
		})
	}
}

// expiringCredentials are srv's credentials, said to expire at expires.
type expiringCredentials struct {
	srv     *s3test.Server
	expires time.Time
}

func (c expiringCredentials) Retrieve(context.Context) (aws.Credentials, error) {
	return aws.Credentials{
		AccessKeyID:     c.srv.AccessKey,
		SecretAccessKey: c.srv.SecretKey,
		CanExpire:       true,
		Expires:         c.expires,
		Source:          "test",
	}, nil
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestS3LinkOutlivesCredentials(t *testing.T) {
	srv := s3test.Start(t)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), nil))
	creds := expiringCredentials{srv: srv, expires: time.Now().Add(time.Hour)}
	s, _ := newS3Logger(t, srv.S3Config(""), logger, func(o *s3.Options) { o.Credentials = creds })
	_, err := s.Put(t.Context(), "obj", strings.NewReader("x"))
	require.NoError(t, err)

	_, err = s.Link(t.Context(), "obj", storage.LinkOptions{TTL: 30 * time.Minute})
	require.NoError(t, err)
	require.NotContains(t, logs.String(), "outlives")

	link, err := s.Link(t.Context(), "obj", storage.LinkOptions{TTL: 2 * time.Hour})
	require.NoError(t, err)
	require.Contains(t, logs.String(), "level=WARN msg=\"download link outlives the credentials")
	require.Contains(t, logs.String(), "key=obj")
	resp, body := download(t, link.URL)
	require.Equal(t, http.StatusOK, resp.StatusCode, "the link works until the credentials expire: %s", body)
}

func TestNewS3Invalid(t *testing.T) {
	valid := storage.S3Config{Bucket: "b", Region: "us-east-1", AccessKeyID: "k", SecretAccessKey: "s"}
	for _, tc := range []struct {
		name   string
		modify func(*storage.S3Config)
		want   string
	}{
		{"no bucket", func(c *storage.S3Config) { c.Bucket = "" }, "no bucket"},
		{"prefix", func(c *storage.S3Config) { c.Prefix = "a//b" }, "prefix"},
		{"endpoint", func(c *storage.S3Config) { c.Endpoint = "127.0.0.1:9000" }, "endpoint"},
		{"access key without secret", func(c *storage.S3Config) { c.SecretAccessKey = "" }, "static credentials"},
		{"session token alone", func(c *storage.S3Config) {
			c.AccessKeyID, c.SecretAccessKey, c.SessionToken = "", "", "t"
		}, "session token"},
		{"SSE", func(c *storage.S3Config) { c.SSE = "aws:kms:dsse" }, "SSE"},
		{"KMS key without KMS", func(c *storage.S3Config) { c.SSEKMSKeyID = "k" }, "KMS key"},
		{"request checksum", func(c *storage.S3Config) { c.RequestChecksum = "never" }, "request checksum"},
		{"part size", func(c *storage.S3Config) { c.PartSize = 1 << 20 }, "part size"},
		{"concurrency", func(c *storage.S3Config) { c.Concurrency = -1 }, "concurrency"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.modify(&cfg)
			_, err := storage.NewS3(t.Context(), cfg, slog.New(slog.DiscardHandler))
			require.ErrorContains(t, err, tc.want)
		})
	}
	s, err := storage.NewS3(t.Context(), valid, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.NoError(t, s.Close())
}

// TestS3Conditional checks the requests of conditional writes: one
// PutObject each, with the condition, the store's prefix and its
// encryption settings.
func TestS3Conditional(t *testing.T) {
	srv := s3test.Start(t)
	cfg := srv.S3Config("cas")
	cfg.SSE = "AES256"
	s, rec := newS3(t, cfg)
	bare, _ := newS3(t, srv.S3Config(""))
	ctx := t.Context()

	etag, err := s.PutIfAbsent(ctx, "k", []byte("one"))
	require.NoError(t, err)
	require.Equal(t, "one", string(getBytes(t, bare, "cas/k")), "under the prefix")
	reqs := rec.requests("PutObject")
	require.Len(t, reqs, 1)
	require.Equal(t, "*", reqs[0].Header.Get("If-None-Match"))
	require.Empty(t, reqs[0].Header.Get("If-Match"))
	require.Equal(t, "AES256", reqs[0].Header.Get("X-Amz-Server-Side-Encryption"))

	rec.reset()
	data, got, err := s.GetETag(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "one", string(data))
	require.Equal(t, etag, got)
	_, err = s.PutIfMatch(ctx, "k", []byte("two"), got)
	require.NoError(t, err)
	reqs = rec.requests("PutObject")
	require.Len(t, reqs, 1)
	require.Equal(t, got, reqs[0].Header.Get("If-Match"), "the ETag is sent as given")
	require.Empty(t, reqs[0].Header.Get("If-None-Match"))
	require.Equal(t, "AES256", reqs[0].Header.Get("X-Amz-Server-Side-Encryption"))
	require.Equal(t, "two", string(getBytes(t, bare, "cas/k")))

	_, _, err = bare.GetETag(ctx, "k")
	require.ErrorIs(t, err, storage.ErrNotExist, "the prefix applies to GetETag")
	_, err = bare.PutIfAbsent(ctx, "cas/k", []byte("three"))
	require.ErrorIs(t, err, storage.ErrPrecondition)
}

// conflict is S3's answer to a conditional write that races another.
func conflict() *http.Response {
	body := `<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>ConditionalRequestConflict</Code><Message>A conflicting conditional operation is currently in progress against this resource. Please try again.</Message></Error>`
	return &http.Response{
		Status:        "409 Conflict",
		StatusCode:    http.StatusConflict,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"application/xml"}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
	}
}

// TestS3ConditionalConflict checks that conditional writes are retried
// when AWS S3 answers 409 ConditionalRequestConflict, which versitygw does
// not: the test's transport answers in its place.
func TestS3ConditionalConflict(t *testing.T) {
	srv := s3test.Start(t)
	s, rec := newS3(t, srv.S3Config("conflict"))
	ctx := t.Context()
	conflicts := func(n int) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		left := n
		rec.answer = func(req recorded) *http.Response {
			if req.op() != "PutObject" || left == 0 {
				return nil
			}
			left--
			return conflict()
		}
	}

	conflicts(2)
	etag, err := s.PutIfAbsent(ctx, "k", []byte("one"))
	require.NoError(t, err, "retried past two conflicts")
	require.Len(t, rec.requests("PutObject"), 3)
	require.Equal(t, "one", string(getBytes(t, s, "k")))

	rec.reset()
	conflicts(2)
	_, err = s.PutIfMatch(ctx, "k", []byte("two"), etag)
	require.NoError(t, err)
	require.Len(t, rec.requests("PutObject"), 3)
	require.Equal(t, "two", string(getBytes(t, s, "k")))

	rec.reset()
	conflicts(100)
	_, err = s.PutIfAbsent(ctx, "other", []byte("x"))
	require.ErrorContains(t, err, "ConditionalRequestConflict", "conflicts without end give up")
	require.NotErrorIs(t, err, storage.ErrPrecondition)
	require.Len(t, rec.requests("PutObject"), 5)

	rec.reset()
	conflicts(100)
	canceled, cancel := context.WithCancel(ctx)
	rec.mu.Lock()
	inner := rec.answer
	rec.answer = func(req recorded) *http.Response {
		cancel() // during the first attempt: Put must not wait out its retries
		return inner(req)
	}
	rec.mu.Unlock()
	_, err = s.PutIfAbsent(canceled, "other", []byte("x"))
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, rec.requests("PutObject"), 1)
}
