package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/snapshot"
)

// BuildExportd builds ./cmd/exportd of this module into dir with the go
// command (run from anywhere inside the module) and returns its path.
func BuildExportd(ctx context.Context, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build exportd: %w", err)
	}
	bin := filepath.Join(dir, "exportd")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/exportd/exportd/cmd/exportd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build exportd: go build: %w\n%s", err, out)
	}
	return bin, nil
}

// linkSecret signs the links of the bench's exports; nobody follows them.
const linkSecret = "exportd-bench-link-secret-0123456789abcdef"

// runProc is an `exportd run` process with production defaults but for its
// directories and HTTP address.
type runProc struct {
	url   string
	log   string
	cmd   *exec.Cmd
	start time.Time
	// exited is closed once the process has exited; err is then its exit.
	exited chan struct{}
	err    error
}

// daemonStatus is the part of /api/status the bench reads.
type daemonStatus struct {
	Replication struct {
		Connected    bool   `json:"connected"`
		SnapshotDone bool   `json:"snapshot_done"`
		AppliedLSN   string `json:"applied_lsn"`
	} `json:"replication"`
	Staging snapshot.Stats `json:"staging"`
	Cluster *struct {
		Role        string `json:"role"`
		Entry       uint64 `json:"entry"`
		IndexBehind int    `json:"index_behind"`
	} `json:"cluster"`
	Ready bool `json:"ready"`
}

func (s daemonStatus) applied() pglogrepl.LSN {
	l, _ := pglogrepl.ParseLSN(s.Replication.AppliedLSN)
	return l
}

// startDaemon starts `exportd run` on stateDir, replicating from pgURL,
// logging to logPath; args are more flags of run.
func startDaemon(ctx context.Context, bin, stateDir, pgURL, logPath string, args ...string) (*runProc, error) {
	return startDaemonEnv(ctx, bin, stateDir, pgURL, logPath, nil, args...)
}

// startDaemonEnv is startDaemon with more environment variables
// ("EXPORTD_X=v"), which override.
func startDaemonEnv(ctx context.Context, bin, stateDir, pgURL, logPath string, env []string, args ...string) (*runProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("daemon log: %w", err)
	}
	cmd := exec.Command(bin, append([]string{"run"}, args...)...)
	cmd.Env = append(environWithout("EXPORTD_"),
		"EXPORTD_STATE_DIR="+stateDir,
		"EXPORTD_LOG_LEVEL=info",
		"EXPORTD_HTTP_ADDR="+addr,
		"EXPORTD_POSTGRES_URL="+pgURL,
		"EXPORTD_FILES_TYPE=fs",
		"EXPORTD_FILES_FS_DIR="+stateDir+"-files",
		"EXPORTD_PUBLISH_TYPE=fs",
		"EXPORTD_PUBLISH_FS_DIR="+stateDir+"-published",
		"EXPORTD_PUBLISH_LINK_SECRET="+linkSecret,
	)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	for _, d := range []string{stateDir + "-files", stateDir + "-published"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			logf.Close()
			return nil, fmt.Errorf("daemon dirs: %w", err)
		}
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start exportd run: %w", err)
	}
	d := &runProc{url: "http://" + addr, log: logPath, cmd: cmd, start: start, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		logf.Close()
		close(d.exited)
	}()
	return d, nil
}

// status fetches /api/status; ok is false while the daemon does not answer.
func (d *runProc) status(ctx context.Context) (st daemonStatus, ok bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url+"/api/status", nil)
	if err != nil {
		return st, false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	return st, resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&st) == nil
}

// metric sums the samples of a counter or gauge on /metrics.
func (d *runProc) metric(ctx context.Context, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, sc.Err()
}

// waitUntil polls the status every interval until ok returns true, the
// daemon exits or timeout passes.
func (d *runProc) waitUntil(ctx context.Context, what string, interval, timeout time.Duration, ok func(daemonStatus) bool) (daemonStatus, error) {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if st, live := d.status(ctx); live && ok(st) {
			return st, nil
		}
		select {
		case <-d.exited:
			return daemonStatus{}, fmt.Errorf("%s: exportd exited: %v; log %s:\n%s", what, d.err, d.log, tail(d.log, 30))
		case <-ctx.Done():
			return daemonStatus{}, fmt.Errorf("%s: %w", what, ctx.Err())
		case <-t.C:
		}
		if time.Now().After(deadline) {
			return daemonStatus{}, fmt.Errorf("%s: not within %s; log %s:\n%s", what, timeout, d.log, tail(d.log, 30))
		}
	}
}

// waitApplied waits until staging has applied lsn.
func (d *runProc) waitApplied(ctx context.Context, lsn pglogrepl.LSN, interval, timeout time.Duration) (daemonStatus, error) {
	return d.waitUntil(ctx, "apply up to "+lsn.String(), interval, timeout, func(st daemonStatus) bool {
		return st.Replication.SnapshotDone && st.applied() >= lsn
	})
}

// peakRSS is the process's resident set high-water mark now.
func (d *runProc) peakRSS() int64 {
	_, peak, _ := benchutil.RSS(d.cmd.Process.Pid)
	return peak
}

// cpu is the CPU time the process has used so far.
func (d *runProc) cpu() time.Duration {
	c, _ := benchutil.CPUTime(d.cmd.Process.Pid)
	return c
}

// resetPeakRSS starts a new high-water mark (for the next phase).
func (d *runProc) resetPeakRSS() error { return benchutil.ResetPeakRSS(d.cmd.Process.Pid) }

// stop sends SIGTERM and waits for a clean exit.
func (d *runProc) stop() error {
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop exportd: %w", err)
	}
	select {
	case <-d.exited:
		if d.err != nil {
			return fmt.Errorf("exportd run exited: %w; log %s:\n%s", d.err, d.log, tail(d.log, 30))
		}
		return nil
	case <-time.After(2 * time.Minute):
		d.cmd.Process.Kill()
		return fmt.Errorf("exportd run did not exit within 2 minutes of SIGTERM; log %s", d.log)
	}
}

// kill ends the process if it still runs (cleanup after an error).
func (d *runProc) kill() {
	select {
	case <-d.exited:
	default:
		d.cmd.Process.Kill()
		<-d.exited
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// environWithout is the environment less the variables starting with prefix.
func environWithout(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
