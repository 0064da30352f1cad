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
