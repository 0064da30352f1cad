// Package s3test runs a real S3-compatible server for tests: versitygw
// with its posix backend, which checks request signatures, presigned URLs'
// expiry and multipart uploads as S3 does.
//
// The server binary is built from the Go module proxy with `go install`
// once per machine into the user cache directory
// (<cache>/exportd-test/versitygw-<Version>/versitygw; about a minute on
// two cores), or taken from $EXPORTD_VERSITYGW if that is set.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/exportd/exportd/storage"
)

// Version is the versitygw release the tests run.
const Version = "v1.8.0"

// BinaryEnv names the environment variable that, if set, is the path of a
// versitygw binary to use instead of building one.
const BinaryEnv = "EXPORTD_VERSITYGW"

const (
	pkg          = "github.com/versity/versitygw/cmd/versitygw"
	buildTimeout = 10 * time.Minute
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
	startTries   = 3
)

// Server is a running versitygw with one empty bucket.
type Server struct {
	// Endpoint is the server's URL, "http://127.0.0.1:<port>". Address
	// buckets path-style.
	Endpoint  string
	Region    string
	AccessKey string
	SecretKey string
	Bucket    string
	// Dir is the posix backend's root: the bucket's objects are the files
	// under Dir/Bucket.
	Dir string

	stop    func()
	logPath string
}

// S3Config returns the configuration of a storage.S3 in the server's
// bucket, under prefix.
func (s *Server) S3Config(prefix string) storage.S3Config {
	return storage.S3Config{
		Bucket:          s.Bucket,
		Prefix:          prefix,
		Region:          s.Region,
		Endpoint:        s.Endpoint,
		PathStyle:       true,
		AccessKeyID:     s.AccessKey,
		SecretAccessKey: s.SecretKey,
	}
}

// Client returns an S3 client of the server, for inspecting what a test
// did. Its connections are closed when the test ends.
func (s *Server) Client(t testing.TB) *s3.Client {
	return newClient(t, s.Endpoint, s.Region, s.AccessKey, s.SecretKey)
}

func newClient(t testing.TB, endpoint, region, access, secret string) *s3.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return s3.New(s3.Options{
		Region:       region,
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(access, secret, ""),
		HTTPClient:   &http.Client{Transport: tr},
	})
}

// Start starts a server with an empty bucket and stops it when the test
// ends. It fails the test if the server cannot be built or started.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	s, err := StartIn(context.Background(), bin, t.TempDir(), t.Logf)
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("s3test: versitygw log:\n%s", tail(s.logPath))
		}
	})
	return s
}

// StartIn starts the versitygw binary bin serving an empty bucket whose
// objects are files under dir, outside a test (the benchmarks); logf
// receives retries. Stop it with Stop.
func StartIn(ctx context.Context, bin, dir string, logf func(format string, args ...any)) (*Server, error) {
	secret := make([]byte, 20)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	s := &Server{
		Region:    "us-east-1",
		AccessKey: "exportd-test",
		SecretKey: hex.EncodeToString(secret),
		Bucket:    "exportd-test",
		Dir:       filepath.Join(dir, "root"),
	}
	if err := os.Mkdir(s.Dir, 0o700); err != nil {
		return nil, err
	}
	var err error
	for try := 1; try <= startTries; try++ {
		if err = s.start(bin, try); err == nil {
			break
		}
		// Most likely another process took the port between our probe and
		// versitygw's listen: try another.
		logf("s3test: start versitygw (try %d of %d): %v", try, startTries, err)
	}
	if err != nil {
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	client := s3.New(s3.Options{
		Region: s.Region, BaseEndpoint: aws.String(s.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		HTTPClient:  &http.Client{Transport: tr},
	})
	if _, err := client.CreateBucket(cctx, &s3.CreateBucketInput{Bucket: aws.String(s.Bucket)}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("create bucket: %w", err)
	}
	return s, nil
}

// Stop stops the server.
func (s *Server) Stop() {
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// start runs versitygw on a free port and waits until it serves.
func (s *Server) start(bin string, try int) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	logPath := filepath.Join(filepath.Dir(s.Dir), fmt.Sprintf("versitygw-%d.log", try))
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(bin,
		"--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region,
		"--port", addr, "posix", s.Dir)
	cmd.Dir = filepath.Dir(s.Dir)
	cmd.Env = childEnv()
	cmd.Stdout = logFile // an *os.File: no copying goroutines
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
	}

	s.Endpoint = "http://" + addr
	if err := waitReady(s.Endpoint, exited); err != nil {
		stop()
		if errors.Is(err, errExited) {
			err = fmt.Errorf("%w (%v): %s", err, waitErr, tail(logPath))
		}
		return err
	}
	s.stop, s.logPath = stop, logPath
	return nil
}

var errExited = errors.New("versitygw exited")

// waitReady polls the server until it answers HTTP, it exits, or
// startTimeout passes. Any answer will do: without credentials, S3 says
// 403.
func waitReady(endpoint string, exited <-chan struct{}) error {
	client := &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true},
		Timeout:   time.Second,
	}
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := client.Get(endpoint + "/")
		if err == nil {
			_ = resp.Body.Close()
			return nil
		}
		select {
		case <-exited:
			return errExited
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw not serving at %s after %v: %w", endpoint, startTimeout, err)
		}
	}
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// childEnv is the environment without versitygw's own variables, which
// would change its configuration.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VGW_") || strings.HasPrefix(kv, "ROOT_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// tail returns the end of a log file.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	const limit = 8 << 10
	if len(b) > limit {
		b = b[len(b)-limit:]
	}
	return string(b)
}

var binary struct {
	sync.Mutex
	path string
}

// Binary returns the path of a versitygw binary: $EXPORTD_VERSITYGW if
// set, else the one in the user cache directory, built first if missing.
func Binary(t testing.TB) string {
	t.Helper()
	binary.Lock()
	defer binary.Unlock()
	if binary.path != "" {
		return binary.path
	}
	path, err := findOrBuild()
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	binary.path = path
	return path
}

// BinaryPath is Binary outside a test: the path of a versitygw binary,
// built first if missing.
func BinaryPath() (string, error) {
	binary.Lock()
	defer binary.Unlock()
	if binary.path != "" {
		return binary.path, nil
	}
	path, err := findOrBuild()
	if err != nil {
		return "", err
	}
	binary.path = path
	return path, nil
}

func findOrBuild() (string, error) {
	if path := os.Getenv(BinaryEnv); path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("$%s: %w", BinaryEnv, err)
		}
		return path, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "exportd-test", "versitygw-"+Version)
	path := filepath.Join(dir, "versitygw")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(filepath.Join(dir, "build.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil // built while we waited for the lock
	}
	return path, build(dir, path)
}

// build installs versitygw into a temporary directory beside path and
// renames it into place, so that a binary at path is always whole.
func build(dir, path string) error {
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("build versitygw: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goCmd, "install", pkg+"@"+Version)
	cmd.Dir = tmp // outside any module
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOWORK=off", "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build versitygw: go install %s@%s: %w\n%s", pkg, Version, err, out.String())
	}
	if err := os.Rename(filepath.Join(tmp, "versitygw"), path); err != nil {
		return fmt.Errorf("build versitygw: %w", err)
	}
	fmt.Fprintf(os.Stderr, "s3test: built versitygw %s into %s in %v\n", Version, path, time.Since(start).Round(time.Second))
	return nil
}
