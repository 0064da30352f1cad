package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/exportd/exportd/internal/benchutil"
	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/s3test"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
)

// failoverKills is how many times the failover phase kills the writer (at
// scale S, the CI smoke test, once).
func failoverKills(sc Scale) int {
	if sc.Name == "S" {
		return 1
	}
	return 3
}

// FailoverResult is the failover phase: two `exportd run` replicas sharing
// staging in an S3 bucket (versitygw on this machine), production
// defaults (cluster.heartbeat 1s, cluster.ttl 5s).
type FailoverResult struct {
	// SnapshotSeconds is the writer's initial snapshot into the bucket,
	// from start until committed; FoldSeconds the background fold after it.
	SnapshotSeconds float64 `json:"snapshot_seconds"`
	FoldSeconds     float64 `json:"fold_seconds"`
	// BucketBytes is what the bucket held after the fold.
	BucketBytes int64          `json:"bucket_bytes"`
	Kills       []FailoverKill `json:"kills"`
	// Exports of the largest tenant with `exportd export` (prerendered
	// CSVs off on both sides): from the local staging of the earlier
	// phases, and from the bucket with an empty cache, then with it warm.
	Tenant      int64        `json:"tenant"`
	ExportLocal ExportTiming `json:"export_local"`
	ExportCold  ExportTiming `json:"export_s3_cold"`
	ExportWarm  ExportTiming `json:"export_s3_warm"`
	// PeakRSS of each replica over the phase (VmHWM, the largest of its
	// processes: a killed replica is started again).
	PeakRSS []int64 `json:"peak_rss"`
}

// FailoverKill is one SIGKILL of the writer under a write load.
type FailoverKill struct {
	// ToStream: from the kill until the standby is the writer and streams
	// (holds the slot); ToApplied: until it has applied its first change.
	ToStream  float64 `json:"to_stream_s"`
	ToApplied float64 `json:"to_applied_s"`
}

// ExportTiming is one `exportd export`.
type ExportTiming struct {
	Seconds float64 `json:"seconds"`
	Rows    int64   `json:"rows"`
	PeakRSS int64   `json:"peak_rss"`
}

// failover starts an S3 server and two replicas sharing staging in it,
// kills the writer failoverKills times under a write load, timing the
// standby's takeover, and times the export of the largest tenant from the
// bucket beside the same export from local staging.
func (r *runner) failover(ctx context.Context) error {
	bin, err := s3test.BinaryPath()
	if err != nil {
		return fmt.Errorf("versitygw: %w", err)
	}
	dir := filepath.Join(r.dir, "failover")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	srv, err := s3test.StartIn(ctx, bin, dir, func(format string, args ...any) { r.log.WarnContext(ctx, fmt.Sprintf(format, args...)) })
	if err != nil {
		return err
	}
	defer srv.Stop()
	stagingEnv := []string{
		"EXPORTD_STAGING_BACKEND=s3",
		"EXPORTD_STAGING_S3_BUCKET=" + srv.Bucket,
		"EXPORTD_STAGING_S3_ENDPOINT=" + srv.Endpoint,
		"EXPORTD_STAGING_S3_REGION=" + srv.Region,
		"EXPORTD_STAGING_S3_PATH_STYLE=true",
		"EXPORTD_STAGING_S3_ACCESS_KEY_ID=" + srv.AccessKey,
		"EXPORTD_STAGING_S3_SECRET_ACCESS_KEY=" + srv.SecretKey,
		// Both sides render every CSV: the comparison is of staging reads.
		"EXPORTD_EXPORT_PRERENDER_MIN_ROWS=0",
	}
	res := &r.res.Failover
	res.PeakRSS = make([]int64, 2)
	procs := make([]*runProc, 2)
	defer func() {
		for _, p := range procs {
			if p != nil {
				p.kill()
			}
		}
	}()
	start := func(i int) error {
		env := append(slices.Clone(stagingEnv), "EXPORTD_CLUSTER_REPLICA_ID=r"+strconv.Itoa(i))
		p, err := startDaemonEnv(ctx, r.bin, filepath.Join(dir, "r"+strconv.Itoa(i)), r.e.url,
			filepath.Join(dir, fmt.Sprintf("exportd-r%d-%d.log", i, time.Now().UnixNano())), env)
		procs[i] = p
		return err
	}
	keepPeak := func(i int) { res.PeakRSS[i] = max(res.PeakRSS[i], procs[i].peakRSS()) }

	// The writer's initial snapshot into the bucket, and its fold.
	if err := start(0); err != nil {
		return err
	}
	if _, err := procs[0].waitUntil(ctx, "initial snapshot into S3", pollInterval, 2*time.Hour, func(st daemonStatus) bool {
		return st.Replication.SnapshotDone && st.Replication.Connected
	}); err != nil {
		return err
	}
	res.SnapshotSeconds = time.Since(procs[0].start).Seconds()
	foldStart := time.Now()
	if _, err := procs[0].waitUntil(ctx, "fold into base files in S3", 100*time.Millisecond, 2*time.Hour, func(st daemonStatus) bool {
		return st.Staging.BaseFiles > 0 && st.Staging.Segments == 0
	}); err != nil {
		return err
	}
	res.FoldSeconds = time.Since(foldStart).Seconds()
	res.BucketBytes = dirBytes(srv.Dir)
	r.log.InfoContext(ctx, "failover: snapshot into S3", "snapshot_s", res.SnapshotSeconds, "fold_s", res.FoldSeconds,
		"bucket_MB", float64(res.BucketBytes)/1e6)

	// A write load while the writer is killed and the standby takes over.
	wctx, stopWrites := context.WithCancel(ctx)
	writes := make(chan error, 1)
	go func() {
		_, err := gen.Workload{Seed: 31, Workers: 1}.Run(wctx, r.e.url)
		writes <- err
	}()
	defer func() {
		stopWrites()
		<-writes
	}()
	writer := 0
	for k := range failoverKills(r.scale) {
		standby := 1 - writer
		if procs[standby] == nil {
			if err := start(standby); err != nil {
				return err
			}
		}
		if _, err := procs[standby].waitUntil(ctx, "standby ready", pollInterval, 30*time.Minute, func(st daemonStatus) bool {
			return st.Ready && st.Cluster != nil && st.Cluster.Role == "standby" && st.Cluster.IndexBehind == 0
		}); err != nil {
			return err
		}
		st, ok := procs[writer].status(ctx)
		if !ok {
			return fmt.Errorf("failover: writer r%d does not answer", writer)
		}
		lsn := st.applied()
		keepPeak(writer)
		killed := time.Now()
		procs[writer].kill()
		var kill FailoverKill
		if _, err := procs[standby].waitUntil(ctx, "standby takes over", pollInterval, 5*time.Minute, func(st daemonStatus) bool {
			return st.Cluster != nil && st.Cluster.Role == "writer" && st.Replication.Connected
		}); err != nil {
			return err
		}
		kill.ToStream = time.Since(killed).Seconds()
		if err := waitFirstChange(ctx, procs[standby], lsn, 5*time.Minute); err != nil {
			return err
		}
		kill.ToApplied = time.Since(killed).Seconds()
		res.Kills = append(res.Kills, kill)
		r.log.InfoContext(ctx, "failover: writer killed", "kill", k+1, "from", writer, "to", standby,
			"to_stream_s", kill.ToStream, "to_first_change_s", kill.ToApplied)
		procs[writer] = nil
		writer = standby
	}
	stopWrites()
	if err := <-writes; err != nil && ctx.Err() == nil && !strings.Contains(err.Error(), "context canceled") {
		return fmt.Errorf("failover: workload: %w", err)
	}
	writes <- nil // for the deferred receive
	// Exports read what staging holds once it has every write.
	target, err := r.e.insertLSN(ctx)
	if err != nil {
		return err
	}
	if _, err := procs[writer].waitApplied(ctx, target, pollInterval, 5*time.Minute); err != nil {
		return err
	}
	for i, p := range procs {
		if p != nil {
			keepPeak(i)
		}
	}
	return r.failoverExports(ctx, dir, srv)
}

// waitFirstChange waits until the replica has applied a row change past lsn.
func waitFirstChange(ctx context.Context, d *runProc, lsn pglogrepl.LSN, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if n, err := d.metric(ctx, "exportd_replication_changes_total"); err == nil && n > 0 {
			if st, ok := d.status(ctx); ok && st.applied() > lsn {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("failover: no change applied within %s; log %s:\n%s", timeout, d.log, tail(d.log, 30))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// failoverExports times `exportd export` of the largest tenant from local
// staging and from the bucket (an empty cache, then warm).
func (r *runner) failoverExports(ctx context.Context, dir string, srv *s3test.Server) error {
	res := &r.res.Failover
	var largest exportTenant
	for _, t := range pickTenants(r.e.data.TenantRows) {
		largest = t
	}
	res.Tenant = largest.id
	tenant := strconv.FormatInt(largest.id, 10)
	specPath := filepath.Join(dir, "data-only-spec.yaml")
	if err := writeDataOnlySpec(specPath); err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, "exportd.yaml")
	cfg := fmt.Sprintf(`state_dir: %q
postgres: {url: %q}
files: {type: fs, fs: {dir: %q}}
publish: {type: fs, fs: {dir: %q}, link_secret: %q}
staging:
  backend: s3
  s3: {bucket: %q, endpoint: %q, region: %q, path_style: true, access_key_id: %q, secret_access_key: %q}
cluster: {replica_id: bench-export}
`, filepath.Join(dir, "unused"), r.e.url, filepath.Join(dir, "files"), filepath.Join(dir, "out"), linkSecret,
		srv.Bucket, srv.Endpoint, srv.Region, srv.AccessKey, srv.SecretKey)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	// Both sides folded: the local staging of the earlier phases holds the
	// apply phase's backlog in segments; the bucket's was folded after its
	// snapshot (and holds the failover load's few changes in segments).
	local, err := snapshot.Open(ctx, filepath.Join(r.stateDir, daemon.StagingDir), snapshot.Options{Logger: quiet(r.log)})
	if err != nil {
		return fmt.Errorf("open local staging: %w", err)
	}
	err = local.Compact(ctx)
	if cerr := local.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fold local staging: %w", err)
	}
	cache := filepath.Join(dir, "export-cache")
	for _, run := range []struct {
		name string
		out  *ExportTiming
		args []string
	}{
		{"local", &res.ExportLocal, []string{"-staging-dir", filepath.Join(r.stateDir, daemon.StagingDir)}},
		{"s3-cold", &res.ExportCold, []string{"-config", cfgPath, "-staging-dir", cache}},
		{"s3-warm", &res.ExportWarm, []string{"-config", cfgPath, "-staging-dir", cache}},
	} {
		m, u, err := r.exportWith(ctx, run.name, tenant, specPath, filepath.Join(dir, "files"), filepath.Join(dir, "out-"+run.name), run.args)
		if err != nil {
			return err
		}
		*run.out = ExportTiming{Seconds: u.Wall.Seconds(), PeakRSS: u.PeakRSS}
		for _, n := range m.Rows {
			run.out.Rows += n
		}
		r.log.InfoContext(ctx, "failover: export", "staging", run.name, "tenant", tenant, "rows", run.out.Rows,
			"seconds", run.out.Seconds, "peak_rss_MiB", mib(run.out.PeakRSS))
	}
	return nil
}

// exportWith runs `exportd export` of tenant with the staging arguments
// args, prerendered CSVs off.
func (r *runner) exportWith(ctx context.Context, name, tenant, specPath, filesDir, outDir string, args []string) (*pipeline.Manifest, benchutil.CommandUsage, error) {
	for _, d := range []string{filesDir, outDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, benchutil.CommandUsage{}, err
		}
	}
	logPath := filepath.Join(filepath.Dir(outDir), "exportd-export-"+name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, benchutil.CommandUsage{}, err
	}
	defer logf.Close()
	var stdout strings.Builder
	cmd := exec.CommandContext(ctx, r.bin, append([]string{"export", "-tenant", tenant, "-request-id", "bench-" + name + "-" + tenant,
		"-spec", specPath, "-files-dir", filesDir, "-out-dir", outDir, "-prerender-dir", "off",
		"-compression-level", strconv.Itoa(compressionLevel)}, args...)...)
	cmd.Env = append(environWithout("EXPORTD_"), "EXPORTD_PUBLISH_LINK_SECRET="+linkSecret)
	cmd.Stdout, cmd.Stderr = &stdout, logf
	u, err := benchutil.RunCommand(cmd)
	if err != nil {
		return nil, u, fmt.Errorf("exportd export (%s) -tenant %s: %w; log %s:\n%s", name, tenant, err, logPath, tail(logPath, 20))
	}
	var m pipeline.Manifest
	if err := json.Unmarshal([]byte(stdout.String()), &m); err != nil {
		return nil, u, fmt.Errorf("exportd export (%s): manifest: %w", name, err)
	}
	r.removeAll(outDir)
	return &m, u, nil
}
