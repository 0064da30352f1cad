package cdc_test

import (
	"bufio"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"

	exportd "github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/refschema"
	"github.com/exportd/exportd/internal/testbin"
	"github.com/exportd/exportd/snapshot"
)

// daemon is one exportd process.
type daemon struct {
	cmd  *exec.Cmd
	done chan error
	log  string
}

func startDaemon(t *testing.T, e *env, stateDir string, n int) *daemon {
	t.Helper()
	logPath := filepath.Join(stateDir+"-logs", "run-"+strconv.Itoa(n)+".log")
	require.NoError(t, os.MkdirAll(filepath.Dir(logPath), 0o755))
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	cmd := exec.Command(testbin.Exportd(t), "run")
	cmd.Env = testbin.DaemonEnv(stateDir, e.url, "EXPORTD_POSTGRES_TABLES="+strings.Join(replicatedTables(), ","))
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	d := &daemon{cmd: cmd, done: make(chan error, 1), log: logPath}
	go func() { d.done <- cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("daemon log %s (last 3000 bytes):\n%s", logPath, tail(string(b), 3000))
		}
	})
	return d
}

func (d *daemon) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, d.cmd.Process.Signal(syscall.SIGKILL))
	<-d.done
	d.done <- nil // let Cleanup's receive return
}

// terminate sends SIGTERM and requires a clean exit.
func (d *daemon) terminate(t *testing.T) {
	t.Helper()
	require.NoError(t, d.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-d.done:
		require.NoError(t, err, "exportd exit status after SIGTERM")
		d.done <- nil
	case <-time.After(30 * time.Second):
		t.Fatal("exportd did not exit within 30s of SIGTERM")
	}
}

// peakRSS reads the process's peak resident set size (VmHWM) in bytes.
func (d *daemon) peakRSS(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/status")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("VmHWM not found")
	return 0
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitConfirmed waits until the slot confirms target: exportd confirms only
// what is durable in staging.
func waitConfirmed(t *testing.T, ctx context.Context, e *env, target snapshot.LSN, d time.Duration) {
	t.Helper()
	waitFor(t, d, "slot to confirm "+pglogrepl.LSN(target).String(), func() bool { return e.slotConfirmed(t, ctx) >= target })
}

// openStaging opens the state directory a stopped daemon left.
func openStaging(t *testing.T, ctx context.Context, dir string) *snapshot.Store {
	t.Helper()
	store, err := snapshot.Open(ctx, filepath.Join(dir, exportd.StagingDir), snapshot.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	return store
}

// TestCrashRecovery kills the daemon with SIGKILL at random moments (the
// first during its initial snapshot) at least 10 times during a concurrent
// workload, restarting it each time; staging then still matches production.
func TestCrashRecovery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, 50, 150_000)
	stateDir := filepath.Join(tempDir(t), "state")

	stats, stop := runWorkload(ctx, t, e, gen.Workload{
		Seed: 23, Tenants: e.tenantIDs(), Workers: 3,
		TruncateTable: refschema.Tasks, AddColumn: refschema.Candidates, DropColumn: true,
	})
	rng := rand.New(rand.NewPCG(42, 99))
	const kills = 12
	for i := 0; i < kills; i++ {
		d := startDaemon(t, e, stateDir, i)
		wait := time.Duration(300+rng.IntN(2700)) * time.Millisecond
		if i == 0 {
			wait = 400 * time.Millisecond // during the initial snapshot
		}
		select {
		case err := <-d.done:
			t.Fatalf("exportd exited on its own before kill %d: %v", i, err)
		case <-time.After(wait):
		}
		d.kill(t)
		t.Logf("kill %d after %s; slot confirmed %s", i+1, wait, pglogrepl.LSN(e.slotConfirmed(t, ctx)))
	}
	stop()
	st := <-stats
	t.Logf("workload: %+v", st)

	d := startDaemon(t, e, stateDir, kills)
	// The slot streams only once staging holds a snapshot: a slot created
	// by a snapshot under way already confirms its consistent point.
	waitFor(t, 3*time.Minute, "the slot to stream", func() bool {
		var active bool
		err := e.admin.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 'exportd'").Scan(&active)
		return err == nil && active
	})
	target := e.currentLSN(t, ctx)
	waitConfirmed(t, ctx, e, target, 3*time.Minute)
	d.terminate(t)

	store := openStaging(t, ctx, stateDir)
	require.GreaterOrEqual(t, store.State().LSN, target)
	checkOracle(t, ctx, e, store)
}

// TestLargeTransaction applies one transaction of 1 million row changes (about
// 200 MB of rows, three times the 64 MiB a batch holds before it spills) on a
// table whose key lacks the tenant id, with the daemon's peak RSS under 512 MiB.
func TestLargeTransaction(t *testing.T) {
	if testing.Short() {
		t.Skip("large transaction test skipped in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, 5, 5_000)
	stateDir := filepath.Join(tempDir(t), "state")
	d := startDaemon(t, e, stateDir, 0)
	waitConfirmed(t, ctx, e, e.currentLSN(t, ctx), time.Minute)

	tenant := e.tenantIDs()[0]
	require.NoError(t, gen.BigTransaction(ctx, e.admin, tenant, 1_000_000))
	target := e.currentLSN(t, ctx)
	waitConfirmed(t, ctx, e, target, 8*time.Minute)
	peak := d.peakRSS(t)
	t.Logf("1,000,000-change transaction applied; daemon peak RSS %.1f MiB", float64(peak)/(1<<20))
	require.Less(t, peak, int64(512<<20), "peak RSS")
	d.terminate(t)

	store := openStaging(t, ctx, stateDir)
	v, err := store.Pin(ctx)
	require.NoError(t, err)
	defer v.Close()
	n, err := oracleCompare(ctx, e, v, refschema.AuditLogs, strconv.FormatInt(tenant, 10))
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, 1_000_000)
}
