package pipeline_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/refschema"
	"github.com/exportd/exportd/internal/stagetest"
	"github.com/exportd/exportd/internal/testbin"
	"github.com/exportd/exportd/pipeline"
)

// memTestRows is the size of the tenant of TestExportMemory:
// $EXPORTD_MEMTEST_ROWS or 5,050,000.
func memTestRows(t *testing.T) int {
	if s := os.Getenv("EXPORTD_MEMTEST_ROWS"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err, "EXPORTD_MEMTEST_ROWS")
		return n
	}
	return 5_050_000
}

// TestExportMemory exports one tenant of over 5 million rows with the exportd
// binary, as its own process, and checks its peak RSS stays under 256 MiB.
func TestExportMemory(t *testing.T) {
	ctx := t.Context()
	bin := testbin.Exportd(t)
	env := stagetest.StartPG(t)
	files := newFS(t)
	rows := memTestRows(t)
	// Generated rows for a fifth of the size, then audit log rows copied in
	// SQL up to the full size: much faster than generating them all.
	sum, err := gen.Load(ctx, env.Admin, nil, gen.Config{Seed: 99, Tenants: 1, Rows: rows / 5, CreateSchema: true, BigNoteFraction: 0.001})
	require.NoError(t, err)
	genStart := time.Now()
	var have, audit int64
	require.NoError(t, env.Admin.QueryRow(ctx, "SELECT (SELECT count(*) FROM audit_logs), "+
		"(SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM companies) + (SELECT count(*) FROM contacts) + "+
		"(SELECT count(*) FROM candidates) + (SELECT count(*) FROM jobs) + (SELECT count(*) FROM job_pipelines) + (SELECT count(*) FROM tasks) + "+
		"(SELECT count(*) FROM folder_records) + (SELECT count(*) FROM attachments) + (SELECT count(*) FROM audit_logs))").Scan(&audit, &have))
	if copies := (int64(rows) - have + audit - 1) / audit; copies > 0 {
		_, err := env.Admin.Exec(ctx, fmt.Sprintf(`INSERT INTO audit_logs (tenant_id, actor_id, action, entity_type, entity_id, changes, ip_address, user_agent, duration, occurred_at)
			SELECT tenant_id, actor_id, action, entity_type, entity_id, changes, ip_address, user_agent, duration, occurred_at + g * interval '1 second'
			FROM audit_logs, generate_series(1, %d) g`, copies))
		require.NoError(t, err)
	}
	t.Logf("generated %d rows in %s, then copied audit logs in %s", sum.TotalRows, sum.Duration.Round(time.Millisecond), time.Since(genStart).Round(time.Millisecond))
	// Staging is built by the daemon binary, as in production (and without
	// the race detector's overhead on five million rows).
	stateDir, err := os.MkdirTemp("", "exportd-memtest-")
	require.NoError(t, err)
	t.Cleanup(func() {
		os.RemoveAll(stateDir)
		os.RemoveAll(stateDir + "-files")
		os.RemoveAll(stateDir + "-published")
	})
	d := testbin.StartDaemon(t, testbin.DaemonEnv(stateDir, env.URL), stateDir+"-logs")
	d.WaitApplied(t, env.InsertLSN(t, ctx).String(), 10*time.Minute)
	exitErr, _ := d.Terminate(t, time.Minute)
	require.NoError(t, exitErr, "exportd run exit")

	outDir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"export", "-staging-dir", filepath.Join(stateDir, daemon.StagingDir), "-tenant", "1", "-request-id", "memory",
		"-files-dir", files.Root(), "-out-dir", outDir}
	if p := os.Getenv("EXPORTD_MEMTEST_PROFILE"); p != "" {
		args = append(args, "-cpuprofile", p+".cpu", "-memprofile", p+".mem")
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "EXPORTD_PUBLISH_LINK_SECRET=memory-test-secret-0123456789abcdef")
	if os.Getenv("EXPORTD_MEMTEST_GCTRACE") != "" {
		cmd.Env = append(cmd.Env, "GODEBUG=gctrace=1")
		defer func() { t.Logf("exportd export stderr:\n%s", stderr.String()) }()
	}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	require.NoError(t, cmd.Run(), "exportd export: %s", stderr.String())
	wall := time.Since(start)
	// The child's own VmHWM: getrusage's ru_maxrss of a child also counts
	// the parent's memory, which the child shares between fork and exec.
	m := regexp.MustCompile(`peak_rss_bytes=(\d+)`).FindStringSubmatch(stderr.String())
	require.NotNil(t, m, "exportd export did not report its peak RSS: %s", stderr.String())
	peak, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(t, err)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	t.Logf("getrusage ru_maxrss of the child (includes the parent's RSS at fork): %.1f MiB", float64(ru.Maxrss)/1024)

	var man pipeline.Manifest
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &man))
	var exported, want int64
	for _, n := range man.Rows {
		exported += n
	}
	for _, tb := range refschema.Tables() {
		if tb == refschema.Invoices || tb == refschema.Folders { // not among the ten CSVs
			continue
		}
		var n int64
		require.NoError(t, env.Admin.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE tenant_id = 1", tb)).Scan(&n))
		want += n
	}
	t.Logf("exported %d rows of tenant 1 (data bundle %.1f MB, %d missing files listed) in %s; peak RSS %.1f MiB",
		exported, float64(man.Parts[0].SizeBytes)/1e6, man.MissingFiles(), wall.Round(time.Millisecond), float64(peak)/(1<<20))
	require.Equal(t, want, exported, "rows exported")
	require.GreaterOrEqual(t, exported, int64(5_000_000), "the tenant must have at least 5 million rows")
	require.Less(t, peak, int64(256<<20), "peak RSS of exportd export")
}
