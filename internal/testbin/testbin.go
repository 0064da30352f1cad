// Package testbin builds exportd's binaries for tests that run them as
// separate processes, the way they run in production (so without -race).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// build is shared by every test of a test binary: the command is built once.
var build = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "exportd-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "exportd")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/exportd/exportd/cmd/exportd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/exportd: %w\n%s", err, out)
	}
	return bin, nil
})

// Exportd returns the path of a freshly built cmd/exportd binary.
func Exportd(t testing.TB) string {
	t.Helper()
	bin, err := build()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// DaemonEnv returns the environment of an `exportd run` for tests: the
// parent's environment plus a configuration through EXPORTD_* variables with
// its state, files and published exports under stateDir, replicating the
// reference tables from pgURL with short intervals, HTTP on a free loopback
// port. extra ("EXPORTD_X=v") is appended and overrides.
func DaemonEnv(stateDir, pgURL string, extra ...string) []string {
	env := append(os.Environ(),
		"EXPORTD_STATE_DIR="+stateDir,
		"EXPORTD_LOG_LEVEL=info",
		"EXPORTD_HTTP_ADDR=127.0.0.1:0",
		"EXPORTD_HTTP_PUBLIC_URL=http://127.0.0.1:1",
		"EXPORTD_POSTGRES_URL="+pgURL,
		"EXPORTD_POSTGRES_HEARTBEAT=200ms",
		"EXPORTD_POSTGRES_FLUSH_INTERVAL=50ms",
		"EXPORTD_FILES_TYPE=fs",
		"EXPORTD_FILES_FS_DIR="+filepath.Join(stateDir+"-files"),
		"EXPORTD_PUBLISH_TYPE=fs",
		"EXPORTD_PUBLISH_FS_DIR="+filepath.Join(stateDir+"-published"),
		"EXPORTD_PUBLISH_LINK_SECRET=test-link-secret-0123456789abcdef0123",
	)
	return append(env, extra...)
}
