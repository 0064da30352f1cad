package daemon_test

import (
	"archive/zip"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/kafkatest"
	"github.com/exportd/exportd/internal/oracle"
	"github.com/exportd/exportd/internal/s3test"
	"github.com/exportd/exportd/internal/stagetest"
	"github.com/exportd/exportd/internal/testbin"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
	"github.com/exportd/exportd/storage"
)

// commitProxy stands between the replicas and the S3 server: it delays
// the writes of staging (data files and manifest log entries, which only
// the writer makes) and counts those in flight, so that a kill can land
// in the middle of a commit. It keeps the Host header: SigV4 signs it.
type commitProxy struct {
	inflight atomic.Int64
	srv      *httptest.Server
}

func newCommitProxy(t *testing.T, target string) *commitProxy {
	u, err := url.Parse(target)
	require.NoError(t, err)
	p := &commitProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	director := rp.Director
	rp.Director = func(r *http.Request) {
		host := r.Host
		director(r)
		r.Host = host
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/"+daemon.SharedStagingPrefix) {
			p.inflight.Add(1)
			defer p.inflight.Add(-1)
			time.Sleep(100 * time.Millisecond)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// replicaSet is exportd replicas sharing staging in an S3 bucket.
type replicaSet struct {
	pg      *stagetest.Env
	broker  *kafkatest.Broker
	srv     *s3test.Server
	base    string
	env     []string
	d       []*testbin.Daemon
	peakRSS []int64
}

func (c *replicaSet) start(t *testing.T, i int) {
	t.Helper()
	env := append(slices.Clone(c.env), "EXPORTD_STATE_DIR="+filepath.Join(c.base, fmt.Sprintf("r%d", i)),
		fmt.Sprintf("EXPORTD_CLUSTER_REPLICA_ID=r%d", i))
	c.d[i] = testbin.StartDaemon(t, env, filepath.Join(c.base, "logs"))
}

// kill SIGKILLs replica i, keeping its peak RSS, and starts it again.
func (c *replicaSet) kill(t *testing.T, i int) {
	t.Helper()
	c.peakRSS[i] = max(c.peakRSS[i], c.d[i].PeakRSS())
	c.d[i].Kill(t)
}

func (c *replicaSet) status(t *testing.T, i int) (daemon.Status, bool) {
	var st daemon.Status
	if c.d[i] == nil {
		return st, false
	}
	ok := c.d[i].Status(t.Context(), &st)
	return st, ok && st.Cluster != nil
}

// writer returns the replica that is the staging writer and streams, or -1.
func (c *replicaSet) writer(t *testing.T) int {
	for i := range c.d {
		if st, ok := c.status(t, i); ok && st.Cluster.Role == "writer" && st.Replication.Connected {
			return i
		}
	}
	return -1
}

func (c *replicaSet) slotActive(t *testing.T) bool {
	var active bool
	err := c.pg.Admin.QueryRow(t.Context(), "SELECT active FROM pg_replication_slots WHERE slot_name = 'exportd'").Scan(&active)
	return err == nil && active
}

// record reads a request's record through any replica.
func (c *replicaSet) record(t *testing.T, id string) (pipeline.RequestRecord, bool) {
	for _, d := range c.d {
		if d == nil {
			continue
		}
		if rec, ok := record(t, d, id); ok {
			return rec, true
		}
	}
	return pipeline.RequestRecord{}, false
}

// TestReplicas runs three exportd processes on one PostgreSQL, one Kafka
// broker and one S3 server (versitygw) while a workload writes: the
// replica holding the replication slot is SIGKILLed again and again (in
// the middle of a commit in every other round, at a random moment in the
// others), and export requests, spread over the replicas by the consumer
// group, are served meanwhile, some while the replica that owns them is
// killed. Each kill must hand the slot to another replica in bounded time;
// every request gets exactly one completed event and CSVs equal to what
// PostgreSQL prints; at the end every tenant's staged rows equal
// production's; each replica's peak RSS stays under 512 MiB.
func TestReplicas(t *testing.T) {
	ctx := t.Context()
	const replicas, rounds, perRound = 3, 5, 6
	c := &replicaSet{pg: stagetest.StartPG(t), srv: s3test.Start(t), d: make([]*testbin.Daemon, replicas), peakRSS: make([]int64, replicas)}
	base, err := os.MkdirTemp("", "exportd-replicas-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	c.base = base
	files, err := storage.NewFS(filepath.Join(base, "files"))
	require.NoError(t, err)
	_, err = gen.Load(ctx, c.pg.Admin, files, gen.Config{Seed: 7, Tenants: 4, Rows: 10_000, Files: true, CreateSchema: true})
	require.NoError(t, err)
	c.broker = kafkatest.StartWith(t, kafkatest.Options{Topics: []string{"exportd.requests"}, Partitions: 3})
	c.broker.CreateTopic(t, "exportd.results", 1)
	c.broker.CreateTopic(t, "exportd.requests.dlq", 1)
	proxy := newCommitProxy(t, c.srv.Endpoint)
	c.env = testbin.DaemonEnv(filepath.Join(base, "unused"), c.pg.URL,
		"EXPORTD_KAFKA_BROKERS="+strings.Join(c.broker.Addrs(), ","),
		"EXPORTD_FILES_FS_DIR="+filepath.Join(base, "files"),
		"EXPORTD_PUBLISH_FS_DIR="+filepath.Join(base, "published"),
		"EXPORTD_EXPORT_PRERENDER_MIN_ROWS=0",
		"EXPORTD_STAGING_BACKEND=s3",
		"EXPORTD_STAGING_S3_BUCKET="+c.srv.Bucket,
		"EXPORTD_STAGING_S3_ENDPOINT="+proxy.srv.URL,
		"EXPORTD_STAGING_S3_REGION="+c.srv.Region,
		"EXPORTD_STAGING_S3_PATH_STYLE=true",
		"EXPORTD_STAGING_S3_ACCESS_KEY_ID="+c.srv.AccessKey,
		"EXPORTD_STAGING_S3_SECRET_ACCESS_KEY="+c.srv.SecretKey,
		"EXPORTD_STAGING_POLL_INTERVAL=50ms",
		"EXPORTD_CLUSTER_HEARTBEAT=200ms",
		"EXPORTD_CLUSTER_TTL=1500ms",
	)
	var tenants []int64
	rows, err := c.pg.Admin.Query(ctx, "SELECT id FROM tenants ORDER BY id")
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		require.NoError(t, rows.Scan(&id))
		tenants = append(tenants, id)
	}
	require.NoError(t, rows.Err())

	// One replica takes the initial snapshot; the others join as it runs.
	c.start(t, 0)
	waitFor(t, 2*time.Minute, "replica r0 to stage the snapshot and stream", func() bool { return c.writer(t) == 0 })
	for i := 1; i < replicas; i++ {
		c.start(t, i)
	}
	for i := range replicas {
		waitFor(t, time.Minute, fmt.Sprintf("replica r%d to be ready", i), func() bool {
			st, ok := c.status(t, i)
			return ok && st.Ready
		})
	}

	rng := rand.New(rand.NewPCG(7, 13))
	var requests []string
	tenantOf := map[string]int64{}
	var takeovers []time.Duration
	midCommit := 0
	for round := range rounds {
		// A burst of writes; the writer is killed in the middle of it.
		wctx, stopWrites := context.WithCancel(ctx)
		var wg sync.WaitGroup
		var werr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, werr = gen.Workload{Seed: int64(round), Tenants: tenants, Workers: 1}.Run(wctx, c.pg.URL)
		}()
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		w := c.writer(t)
		require.GreaterOrEqual(t, w, 0, "round %d: no replica is the writer", round)
		how := "at a random moment"
		if round%2 == 0 {
			// In the middle of a commit: while the writer uploads a data
			// file or appends a manifest entry.
			waitFor(t, 30*time.Second, "the writer to commit", func() bool { return proxy.inflight.Load() > 0 })
			how = "in the middle of a commit"
			midCommit++
		}
		killed := time.Now()
		c.kill(t, w)
		var next int
		waitFor(t, 30*time.Second, "another replica to hold the slot", func() bool {
			next = c.writer(t)
			return next >= 0 && next != w && c.slotActive(t)
		})
		took := time.Since(killed)
		takeovers = append(takeovers, took)
		t.Logf("round %d: killed writer r%d %s; r%d holds the slot after %s", round, w, how, next, took.Round(time.Millisecond))
		c.start(t, w)
		time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
		stopWrites()
		wg.Wait()
		if werr != nil && ctx.Err() == nil {
			require.ErrorIs(t, werr, context.Canceled, "workload")
		}

		// Production is still now: requests, answered while a replica that
		// owns one of them may be killed.
		_, err := c.pg.Admin.Exec(ctx, "UPDATE invoices SET status = 'paid', paid_at = now() WHERE status = 'open'")
		require.NoError(t, err)
		var ids []string
		for k := range perRound {
			id := fmt.Sprintf("rep-%d-%d", round, k)
			tenant := tenants[(round*perRound+k)%len(tenants)]
			body := fmt.Sprintf(`{"version":1,"request_id":%q,"tenant_id":%d,"requested_by":%s,"requested_at":%q}`,
				id, tenant, adminOf(t, c.pg, tenant), time.Now().UTC().Format(time.RFC3339))
			c.broker.Produce(t, "exportd.requests", []byte(id), []byte(body))
			ids = append(ids, id)
			tenantOf[id] = tenant
		}
		if round%2 == 1 {
			// Kill the owner of the first request as soon as it has one.
			var owner int
			waitFor(t, 30*time.Second, "the first request of the round to have an owner", func() bool {
				rec, ok := c.record(t, ids[0])
				owner, _ = strconv.Atoi(strings.TrimPrefix(rec.Owner, "r"))
				return ok && rec.Owner != ""
			})
			time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond) // a random point of its processing
			rec, _ := c.record(t, ids[0])
			t.Logf("round %d: killed r%d, owner of %s (%s)", round, owner, ids[0], rec.State)
			c.kill(t, owner)
			c.start(t, owner)
		}
		for _, id := range ids {
			waitFor(t, 2*time.Minute, "request "+id+" to complete and be announced", func() bool {
				rec, ok := c.record(t, id)
				return ok && rec.State == pipeline.StateCompleted && rec.CompletedEventSent
			})
		}
		requests = append(requests, ids...)
		checkExports(t, c, ids, tenantOf)
	}

	// Exactly one completed event per request, whoever served it.
	evs := eventsOf(t, c.broker)
	owners := map[string]int{}
	for _, id := range requests {
		require.Equal(t, 1, countEvents(evs, id, pipeline.EventCompleted), "completed events of %s", id)
		rec, _ := c.record(t, id)
		owners[rec.Owner]++
	}
	t.Logf("%d requests, each completed once; served by %v", len(requests), owners)
	require.GreaterOrEqual(t, len(owners), 2, "requests spread over the replicas")

	// Staging equals production, read as a follower of the bucket.
	target := c.pg.InsertLSN(t, ctx)
	store := openFollower(t, c)
	waitCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	require.NoError(t, store.WaitFor(waitCtx, target))
	v, err := store.Pin(ctx)
	require.NoError(t, err)
	defer v.Close()
	var ts []string
	for _, id := range tenants {
		ts = append(ts, strconv.FormatInt(id, 10))
	}
	n, errs := oracle.CompareAll(ctx, c.pg.Admin, v, ts)
	require.Empty(t, errs, "staged rows differ from production")
	t.Logf("staging at %s equals production: %d rows of %d tables, %d tenants", v.LSN(), n, len(v.Tables()), len(ts))
	for i := range replicas {
		c.peakRSS[i] = max(c.peakRSS[i], c.d[i].PeakRSS())
		t.Logf("replica r%d peak RSS %.1f MiB", i, float64(c.peakRSS[i])/(1<<20))
		require.Less(t, c.peakRSS[i], int64(512<<20), "replica r%d peak RSS", i)
	}
	slices.Sort(takeovers)
	t.Logf("%d writer kills (%d in the middle of a commit); slot held again after %s (median) and %s (max)", len(takeovers), midCommit,
		takeovers[len(takeovers)/2].Round(time.Millisecond), takeovers[len(takeovers)-1].Round(time.Millisecond))
}

func adminOf(t *testing.T, pg *stagetest.Env, tenant int64) string {
	t.Helper()
	var id string
	require.NoError(t, pg.Admin.QueryRow(t.Context(), "SELECT id::text FROM users WHERE tenant_id = $1 AND role = 'admin' AND is_active ORDER BY id LIMIT 1", tenant).Scan(&id))
	return id
}

// checkExports compares the data bundle of each request with production.
func checkExports(t *testing.T, c *replicaSet, ids []string, tenantOf map[string]int64) {
	t.Helper()
	ctx := t.Context()
	store := openFollower(t, c)
	v, err := store.Pin(ctx)
	require.NoError(t, err)
	defer v.Close()
	plan, err := pipeline.DefaultSpec().Resolve(v.Tables())
	require.NoError(t, err)
	for _, id := range ids {
		tenant := strconv.FormatInt(tenantOf[id], 10)
		zr, err := zip.OpenReader(filepath.Join(c.base, "published", "exports", tenant, id, "data_files.zip"))
		require.NoError(t, err)
		n, err := oracle.CheckDataBundle(ctx, c.pg.Admin, plan, v.Table, &zr.Reader, tenant)
		require.NoError(t, err, "request %s", id)
		require.Positive(t, n)
		require.NoError(t, zr.Close())
	}
}

// openFollower opens, in the test process, a follower of the replicas'
// shared staging.
func openFollower(t *testing.T, c *replicaSet) *snapshot.Store {
	t.Helper()
	b, err := storage.NewS3(t.Context(), c.srv.S3Config(""), quietLogger())
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	store, err := snapshot.Open(t.Context(), t.TempDir(), snapshot.Options{Logger: quietLogger(), NoCompaction: true,
		Shared: &snapshot.SharedOptions{Bucket: b, Prefix: daemon.SharedStagingPrefix, ReplicaID: "test", PollInterval: 50 * time.Millisecond}})
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	return store
}

func eventsOf(t *testing.T, b *kafkatest.Broker) []pipeline.Event {
	e := &daemonEnv{broker: b}
	return e.events(t)
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
