package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
)

const (
	// walSampleInterval spaces the samples of production's WAL insert position.
	walSampleInterval = 100 * time.Millisecond
	// pgbenchClients and pgbenchThreads run the fixed-rate load.
	pgbenchClients = 4
	pgbenchThreads = 2
)

// pgbench scripts: each transaction inserts one row, stamped with the
// time of the insert, so one transaction is one row change.
const (
	taskScript = `\set tenant random(1, %d)
INSERT INTO public.tasks (tenant_id, title, body, priority, created_at, updated_at)
VALUES (:tenant, 'bench task', 'written by pgbench', 2, clock_timestamp(), clock_timestamp());
`
	auditScript = `\set tenant random(1, %d)
INSERT INTO public.audit_logs (tenant_id, action, entity_type, entity_id, user_agent, occurred_at)
VALUES (:tenant, 'bench.write', 'task', :tenant, 'pgbench', clock_timestamp());
`
)

// walSample is production's WAL insert position at a time: every commit
// before then is at or before it.
type walSample struct {
	t   time.Time
	lsn pglogrepl.LSN
}

// appliedPoll is staging's applied position at a time, and its count of
// durable commits.
type appliedPoll struct {
	t       time.Time
	lsn     pglogrepl.LSN
	commits int64
}

// freshness runs pgbench at each rate while `exportd run` streams, and
// measures the lag from commit in production to applied in staging.
func (r *runner) freshness(ctx context.Context, rates []int) error {
	e := r.e
	scripts := filepath.Join(r.dir, "pgbench")
	if err := os.MkdirAll(scripts, 0o755); err != nil {
		return err
	}
	taskPath, auditPath := filepath.Join(scripts, "tasks.sql"), filepath.Join(scripts, "audit_logs.sql")
	if err := os.WriteFile(taskPath, fmt.Appendf(nil, taskScript, r.scale.Tenants), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(auditPath, fmt.Appendf(nil, auditScript, r.scale.Tenants), 0o644); err != nil {
		return err
	}

	d, err := startDaemon(ctx, r.bin, r.stateDir, e.url, filepath.Join(r.dir, "exportd-freshness.log"))
	if err != nil {
		return err
	}
	defer d.kill()
	lsn, err := e.insertLSN(ctx)
	if err != nil {
		return err
	}
	if err := e.flushWAL(ctx, lsn); err != nil {
		return err
	}
	if _, err := d.waitApplied(ctx, lsn, pollInterval, 10*time.Minute); err != nil {
		return err
	}
	for i, rate := range rates {
		res, err := r.freshnessAt(ctx, d, rate, []string{taskPath, auditPath})
		if err != nil {
			return err
		}
		r.res.Freshness = append(r.res.Freshness, res)
		r.log.InfoContext(ctx, "freshness", "rate", rate, "achieved", int(res.AchievedRate), "samples", res.Samples,
			"p50_s", res.P50, "p99_s", res.P99, "max_s", res.Max, "unapplied_samples", res.Unapplied,
			"staging_commits", res.StagingCommits, "peak_rss_MiB", mib(res.PeakRSS))
		if res.Unapplied > 0 && i < len(rates)-1 {
			// The next load must start on a caught-up staging.
			lsn, err := e.insertLSN(ctx)
			if err != nil {
				return err
			}
			if err := e.flushWAL(ctx, lsn); err != nil {
				return err
			}
			wait := time.Now()
			if _, err := d.waitApplied(ctx, lsn, pollInterval, time.Hour); err != nil {
				return err
			}
			r.note("freshness at %d changes/s: staging needed %.0f s more after the %.0f s wait to apply the load",
				rate, time.Since(wait).Seconds(), r.scale.CatchUp.Seconds())
		}
	}
	return d.stop()
}

// freshnessAt runs one fixed-rate load.
func (r *runner) freshnessAt(ctx context.Context, d *runProc, rate int, scripts []string) (FreshnessResult, error) {
	e := r.e
	res := FreshnessResult{Rate: rate}
	if err := d.resetPeakRSS(); err != nil {
		r.log.WarnContext(ctx, "reset peak RSS", "err", err)
	}
	sampler, err := connect(ctx, e.url)
	if err != nil {
		return res, err
	}
	defer sampler.Close(context.Background())

	// Staging's applied position, polled until told to stop.
	var pollWG sync.WaitGroup
	defer pollWG.Wait()
	pctx, stopPolls := context.WithCancel(ctx)
	defer stopPolls()
	var polls []appliedPoll
	pollWG.Go(func() {
		t := time.NewTicker(pollInterval)
		defer t.Stop()
		for {
			if st, ok := d.status(pctx); ok {
				polls = append(polls, appliedPoll{t: time.Now(), lsn: st.applied(), commits: st.Staging.Commits})
			}
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
		}
	})

	// A cross-check independent of the status endpoint: the position
	// exportd confirmed to its slot (durable in staging), polled in SQL.
	slotConn, err := connect(ctx, e.url)
	if err != nil {
		return res, err
	}
	defer slotConn.Close(context.Background())
	var slotPolls []appliedPoll
	pollWG.Go(func() {
		t := time.NewTicker(pollInterval)
		defer t.Stop()
		for {
			l, err := queryLSN(pctx, slotConn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'exportd'")
			if err == nil {
				slotPolls = append(slotPolls, appliedPoll{t: time.Now(), lsn: l})
			}
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
		}
	})

	// The load, and production's WAL insert position every 100 ms during it.
	args := []string{"-n", "-h", "127.0.0.1", "-p", strconv.Itoa(e.pg.Port()), "-U", "postgres",
		"-c", strconv.Itoa(pgbenchClients), "-j", strconv.Itoa(pgbenchThreads), "-M", "prepared",
		"-R", strconv.Itoa(rate), "-T", strconv.Itoa(int(r.scale.Freshness.Seconds()))}
	for _, s := range scripts {
		args = append(args, "-f", s+"@1")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(e.pg.BinDir(), "pgbench"), append(args, "postgres")...)
	// Commits flushed at once, as on a production server: with
	// synchronous_commit off the WAL writer would add up to 200 ms before a
	// commit can be streamed.
	cmd.Env = append(os.Environ(), "PGOPTIONS=-c synchronous_commit=on")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	var samples []walSample
	loadStart := time.Now()
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start pgbench: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t := time.NewTicker(walSampleInterval)
	var runErr error
sample:
	for {
		st := time.Now()
		lsn, err := queryLSN(ctx, sampler, "SELECT pg_current_wal_insert_lsn()::text")
		if err != nil {
			cmd.Process.Kill()
			<-exited
			t.Stop()
			return res, err
		}
		samples = append(samples, walSample{t: st, lsn: lsn})
		select {
		case runErr = <-exited:
			break sample
		case <-t.C:
		}
	}
	t.Stop()
	res.Seconds = time.Since(loadStart).Seconds()
	if runErr != nil {
		return res, fmt.Errorf("pgbench: %w\n%s", runErr, out.String())
	}
	// A last commit past every sample, then wait (a bounded time) for
	// staging to apply it.
	last := samples[len(samples)-1].lsn
	if err := e.flushWAL(ctx, last); err != nil {
		return res, err
	}
	loadEnd := time.Now()
	_, err = d.waitApplied(ctx, last, pollInterval, r.scale.CatchUp)
	caughtUp := err == nil
	if err != nil {
		select {
		case <-d.exited:
			return res, err
		default:
		}
		if ctx.Err() != nil {
			return res, err
		}
	}
	res.CatchUpSeconds = time.Since(loadEnd).Seconds()
	time.Sleep(2 * pollInterval) // a poll after the wait
	stopPolls()
	pollWG.Wait()
	res.PeakRSS = d.peakRSS()
	if len(polls) == 0 {
		return res, fmt.Errorf("exportd did not answer a status request during the load")
	}
	res.StagingCommits = polls[len(polls)-1].commits - polls[0].commits

	series := lagSeries(samples, polls, loadStart)
	lags := make([]float64, len(series))
	for i, p := range series {
		lags[i] = p.Lag
		if p.LowerBound {
			res.Unapplied++
		}
	}
	if caughtUp && res.Unapplied > 0 {
		return res, fmt.Errorf("staging applied the load's end but %d samples are unresolved", res.Unapplied)
	}
	res.Samples, res.Series = len(lags), series
	res.P50, res.P99, res.Max = percentile(lags, 0.50), percentile(lags, 0.99), slices.Max(lags)
	if slotSeries := lagSeries(samples, slotPolls, loadStart); len(slotSeries) > 0 {
		sl := make([]float64, len(slotSeries))
		for i, p := range slotSeries {
			sl[i] = p.Lag
		}
		res.SlotP50, res.SlotP99, res.SlotMax = percentile(sl, 0.50), percentile(sl, 0.99), slices.Max(sl)
	}
	res.Changes, res.PgbenchLatency = parsePgbench(out.String())
	res.AchievedRate = per(float64(res.Changes), r.scale.Freshness.Seconds())
	if res.Changes == 0 {
		return res, fmt.Errorf("pgbench committed no transaction:\n%s", out.String())
	}
	return res, nil
}

// lagSeries resolves each sample against the polls of staging's applied
// position: a sample's lag is the time from the sample until the first
// poll that shows staging at or past its position. polls are in time order
// and their positions never decrease. A sample that no poll resolves gets
// the time until the last poll, marked as a lower bound.
func lagSeries(samples []walSample, polls []appliedPoll, start time.Time) []LagPoint {
	var series []LagPoint
	j := 0
	for _, s := range samples {
		for j < len(polls) && polls[j].t.Before(s.t) {
			j++
		}
		k := j
		for k < len(polls) && polls[k].lsn < s.lsn {
			k++
		}
		p := LagPoint{T: s.t.Sub(start).Seconds(), LSN: s.lsn.String()}
		switch {
		case k < len(polls):
			p.Lag = polls[k].t.Sub(s.t).Seconds()
		case len(polls) > 0:
			p.Lag, p.LowerBound = max(polls[len(polls)-1].t.Sub(s.t).Seconds(), 0), true
		default:
			continue
		}
		series = append(series, p)
	}
	return series
}

// percentile is the nearest-rank percentile p (0..1] of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

var (
	pgbenchProcessed = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	pgbenchLatency   = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
)

// parsePgbench reads the committed transactions and average latency from
// pgbench's report.
func parsePgbench(out string) (txns int64, latencyMS float64) {
	if m := pgbenchProcessed.FindStringSubmatch(out); m != nil {
		txns, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := pgbenchLatency.FindStringSubmatch(out); m != nil {
		latencyMS, _ = strconv.ParseFloat(m[1], 64)
	}
	return txns, latencyMS
}
