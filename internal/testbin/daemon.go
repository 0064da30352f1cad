package testbin

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/exportd/exportd/snapshot"
)

// Daemon is an `exportd run` process.
type Daemon struct {
	URL  string // base URL of its HTTP server
	Log  string // path of its log
	cmd  *exec.Cmd
	done chan error
	err  error
	exit bool
}

// FreeAddr returns a free loopback TCP address.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// StartDaemon starts `exportd run` with env (see DaemonEnv) and its HTTP
// server on a free port, logging to a file in logDir. It is killed when t
// ends if it still runs.
func StartDaemon(t testing.TB, env []string, logDir string) *Daemon {
	t.Helper()
	addr := FreeAddr(t)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(logDir, "exportd-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Exportd(t), "run")
	cmd.Env = append(env, "EXPORTD_HTTP_ADDR="+addr)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &Daemon{URL: "http://" + addr, Log: logPath, cmd: cmd, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		if !d.exit {
			cmd.Process.Kill()
			d.wait()
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			s := string(b)
			if len(s) > 4000 {
				s = s[len(s)-4000:]
			}
			t.Logf("exportd log %s (end):\n%s", logPath, s)
		}
	})
	return d
}

func (d *Daemon) wait() error {
	if !d.exit {
		d.err = <-d.done
		d.exit = true
	}
	return d.err
}

// Exited reports whether the process has ended, and how.
func (d *Daemon) Exited() (bool, error) {
	if d.exit {
		return true, d.err
	}
	select {
	case err := <-d.done:
		d.exit, d.err = true, err
		return true, err
	default:
		return false, nil
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (d *Daemon) Kill(t testing.TB) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.wait()
}

// Terminate sends SIGTERM and returns the exit error (nil: exit 0) and how
// long the process took to exit; it fails t if that is more than within.
func (d *Daemon) Terminate(t testing.TB, within time.Duration) (error, time.Duration) {
	t.Helper()
	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.exit, d.err = true, err
		return err, time.Since(start)
	case <-time.After(within):
		t.Fatalf("exportd did not exit within %s of SIGTERM", within)
		return nil, 0
	}
}

// Status fetches /api/status into v; false if the daemon does not answer.
func (d *Daemon) Status(ctx context.Context, v any) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.URL+"/api/status", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(v) == nil
}

// WaitApplied waits until the daemon's staging has applied lsn (text, as
// PostgreSQL prints it), failing t after timeout or if the daemon exits.
func (d *Daemon) WaitApplied(t testing.TB, lsn string, timeout time.Duration) {
	t.Helper()
	want, err := snapshot.ParseLSN(lsn)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(timeout)
	for {
		var st struct {
			Replication struct {
				SnapshotDone bool   `json:"snapshot_done"`
				AppliedLSN   string `json:"applied_lsn"`
			} `json:"replication"`
		}
		if d.Status(t.Context(), &st) && st.Replication.SnapshotDone {
			if got, err := snapshot.ParseLSN(st.Replication.AppliedLSN); err == nil && got >= want {
				return
			}
		}
		if done, err := d.Exited(); done {
			t.Fatalf("exportd exited: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("exportd did not apply %s within %s", lsn, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PeakRSS returns the process's peak resident set size so far (VmHWM), 0
// if it cannot be read (the process ended).
func (d *Daemon) PeakRSS() int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}
