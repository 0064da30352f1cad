package demo_test

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/csv"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/testbin"
)

// TestDemo runs `exportd demo` as the README says and follows its last line:
// master_url= downloads master.csv, whose three links download the zips of
// the ten CSVs, the attachments and the CVs. Ctrl-C (SIGINT) then stops it
// and removes what it made.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	runDemo(t)
}

// TestDemoReplicas runs `exportd demo -replicas 3`: three replicas share
// staging; after the first exports the demo stops the staging writer,
// another replica takes over, and an export requested then completes.
func TestDemoReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	out := strings.Join(runDemo(t, "-replicas", "3"), "\n")
	require.Contains(t, out, "3 replicas share staging")
	require.Regexp(t, `stopped replica demo-\d, the staging writer`, out)
	require.Regexp(t, `replica demo-\d took over as the staging writer after \d+\.\ds`, out)
	require.Regexp(t, `completed again after the takeover .*, served by replica demo-\d`, out)
}

// runDemo runs `exportd demo` with args, follows master_url= to the three
// bundles, stops the demo with SIGINT, checks it removed what it made, and
// returns the lines it printed up to master_url=.
func runDemo(t *testing.T, args ...string) []string {
	t.Helper()
	// The demo's temporary directory, to check it is emptied; the postgres
	// OS user must be able to reach its cluster inside.
	tmp, err := os.MkdirTemp("", "exportd-demotest-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(tmp) })
	require.NoError(t, os.Chmod(tmp, 0o755))
	cmd := exec.Command(testbin.Exportd(t), append([]string{"demo", "-http-addr", testbin.FreeAddr(t)}, args...)...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	start := time.Now()
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var master string
	var printed []string
	timeout := time.After(2 * time.Minute)
	for master == "" {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "demo ended before master_url=: %s", stderr.String())
			t.Log(l)
			printed = append(printed, l)
			if u, ok := strings.CutPrefix(l, "master_url="); ok {
				master = u
			}
		case <-timeout:
			t.Fatalf("no master_url= within 2 minutes: %s", stderr.String())
		}
	}
	t.Logf("master_url= after %s", time.Since(start).Round(time.Millisecond))

	recs, err := csv.NewReader(bytes.NewReader(get(t, master))).ReadAll()
	require.NoError(t, err)
	require.Len(t, recs, 4)
	entries := map[string][]string{}
	for _, r := range recs[1:] {
		body := get(t, r[2])
		zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
		require.NoError(t, err, r[0])
		for _, f := range zr.File {
			entries[r[0]] = append(entries[r[0]], f.Name)
		}
	}
	require.ElementsMatch(t, []string{"Attachments.csv", "Audit_Logs.csv", "Candidates.csv", "Companies.csv", "Contacts.csv",
		"Folder_Records.csv", "Job_Pipelines.csv", "Jobs.csv", "Tasks.csv", "Users.csv", "README.txt"}, entries["data_files"])
	require.Greater(t, len(entries["attachments"]), 10)
	require.Greater(t, len(entries["internal_cvs"]), 10)

	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	done := make(chan error, 1)
	go func() {
		for range lines {
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		require.NoError(t, err, "demo exit after Ctrl-C: %s", stderr.String())
	case <-time.After(time.Minute):
		t.Fatal("demo did not stop within a minute of SIGINT")
	}
	left, err := os.ReadDir(tmp)
	require.NoError(t, err)
	require.Empty(t, left, "the demo left files behind")
	return printed
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", url, body)
	return body
}

// syncBuffer is a bytes.Buffer safe for the writer goroutine of exec and the
// test reading it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
