package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/config"
	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/kafkatest"
	"github.com/exportd/exportd/internal/stagetest"
	"github.com/exportd/exportd/internal/testbin"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/storage"
)

// daemonEnv is production, a Kafka broker and the environment of exportd
// processes sharing one state directory.
type daemonEnv struct {
	pg       *stagetest.Env
	broker   *kafkatest.Broker
	stateDir string
	env      []string
}

func newDaemonEnv(t *testing.T, rows int, extra ...string) *daemonEnv {
	t.Helper()
	ctx := t.Context()
	pg := stagetest.StartPG(t)
	stateDir, err := os.MkdirTemp("", "exportd-daemon-")
	require.NoError(t, err)
	for _, suffix := range []string{"", "-files", "-published", "-logs"} {
		dir := stateDir + suffix
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	files, err := storage.NewFS(stateDir + "-files")
	require.NoError(t, err)
	_, err = gen.Load(ctx, pg.Admin, files, gen.Config{Seed: 41, Tenants: 3, Rows: rows, Files: true, CreateSchema: true})
	require.NoError(t, err)
	broker := kafkatest.StartWith(t, kafkatest.Options{Topics: []string{"exportd.requests"}, Partitions: 2})
	broker.CreateTopic(t, "exportd.results", 1)
	broker.CreateTopic(t, "exportd.requests.dlq", 1)
	env := testbin.DaemonEnv(stateDir, pg.URL, append([]string{"EXPORTD_KAFKA_BROKERS=" + strings.Join(broker.Addrs(), ",")}, extra...)...)
	return &daemonEnv{pg: pg, broker: broker, stateDir: stateDir, env: env}
}

func (e *daemonEnv) start(t *testing.T) *testbin.Daemon {
	t.Helper()
	d := testbin.StartDaemon(t, e.env, e.stateDir+"-logs")
	d.WaitApplied(t, e.pg.InsertLSN(t, t.Context()).String(), 5*time.Minute)
	return d
}

func (e *daemonEnv) admin(t *testing.T, tenant int) string {
	t.Helper()
	var id string
	require.NoError(t, e.pg.Admin.QueryRow(t.Context(), "SELECT id::text FROM users WHERE tenant_id = $1 AND role = 'admin' AND is_active ORDER BY id LIMIT 1", tenant).Scan(&id))
	return id
}

func (e *daemonEnv) request(t *testing.T, id string, tenant int) {
	t.Helper()
	body := fmt.Sprintf(`{"version":1,"request_id":%q,"tenant_id":%d,"requested_by":%s,"requested_at":%q}`,
		id, tenant, e.admin(t, tenant), time.Now().UTC().Format(time.RFC3339))
	e.broker.Produce(t, "exportd.requests", []byte(strconv.Itoa(tenant)), []byte(body))
}

// record fetches a request's record from the daemon's API.
func record(t *testing.T, d *testbin.Daemon, id string) (pipeline.RequestRecord, bool) {
	t.Helper()
	resp, err := http.Get(d.URL + "/api/requests/" + url.PathEscape(id))
	if err != nil {
		return pipeline.RequestRecord{}, false
	}
	defer resp.Body.Close()
	var rec pipeline.RequestRecord
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&rec) != nil {
		return rec, false
	}
	return rec, true
}

// waitState waits until the request is in one of states.
func waitState(t *testing.T, d *testbin.Daemon, id string, timeout time.Duration, states ...pipeline.RequestState) pipeline.RequestRecord {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rec, ok := record(t, d, id)
		if ok {
			for _, s := range states {
				if rec.State == s {
					return rec
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s not in %v within %s (now %q)", id, states, timeout, rec.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// events reads every event of the results topic published so far.
func (e *daemonEnv) events(t *testing.T) []pipeline.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := kafka.DialLeader(ctx, "tcp", e.broker.Addrs()[0], "exportd.results", 0)
	require.NoError(t, err)
	end, err := conn.ReadLastOffset()
	conn.Close()
	require.NoError(t, err)
	if end == 0 {
		return nil
	}
	var out []pipeline.Event
	for _, m := range e.broker.WaitMessages(t, ctx, "exportd.results", int(end), 30*time.Second) {
		var ev pipeline.Event
		require.NoError(t, json.Unmarshal(m.Value, &ev))
		out = append(out, ev)
	}
	return out
}

func countEvents(evs []pipeline.Event, id, typ string) int {
	n := 0
	for _, e := range evs {
		if e.RequestID == id && e.Type == typ {
			n++
		}
	}
	return n
}

// bundleSet lists what is published for a request, temporary files included.
func (e *daemonEnv) bundleSet(t *testing.T, tenant int, id string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.stateDir+"-published", "exports", strconv.Itoa(tenant), id))
	require.NoError(t, err)
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}

var oneSet = []string{"attachments.zip", "data_files.zip", "internal_cvs.zip", "manifest.json", "master.csv"}

// TestDaemon runs the exportd binary against a real PostgreSQL and Kafka
// broker: SIGKILL during an export, SIGTERM during an export, a request
// delivered twice, and a Prometheus server scraping it.
func TestDaemon(t *testing.T) {
	// Compression level 9 makes exports slow enough to be caught rendering.
	e := newDaemonEnv(t, 150_000, "EXPORTD_EXPORT_COMPRESSION_LEVEL=9", "EXPORTD_HTTP_SHUTDOWN_GRACE=15s")
	d := e.start(t)
	parent := t // daemons outlive the subtest that starts them

	t.Run("SIGKILL during an export", func(t *testing.T) {
		e.request(t, "kill-1", 1)
		rec := waitState(t, d, "kill-1", time.Minute, pipeline.StateRendering, pipeline.StateCompleted)
		require.Equal(t, pipeline.StateRendering, rec.State, "the export finished before it could be killed")
		d.Kill(t)
		d = e.start(parent)
		rec = waitState(t, d, "kill-1", 2*time.Minute, pipeline.StateCompleted)
		waitFor(t, time.Minute, "the completed event to be sent", func() bool {
			r, _ := record(t, d, "kill-1")
			return r.CompletedEventSent
		})
		require.Equal(t, 1, countEvents(e.events(t), "kill-1", pipeline.EventCompleted))
		require.Equal(t, oneSet, e.bundleSet(t, 1, "kill-1"), "one set of bundles, no leftovers")
	})

	t.Run("SIGTERM during an export", func(t *testing.T) {
		e.request(t, "term-1", 1)
		rec := waitState(t, d, "term-1", time.Minute, pipeline.StateRendering, pipeline.StateCompleted)
		require.Equal(t, pipeline.StateRendering, rec.State, "the export finished before SIGTERM")
		// Its progress is in the status API and in `exportd status`.
		var st daemon.Status
		waitFor(t, 30*time.Second, "export progress in /api/status", func() bool {
			return d.Status(t.Context(), &st) && len(st.Exports) == 1 && st.Exports[0].Rows > 0
		})
		p := st.Exports[0]
		require.Equal(t, "term-1", p.RequestID)
		require.Positive(t, p.RowsTotal)
		require.Greater(t, p.Percent, 0.0)
		out, err := exec.Command(testbin.Exportd(t), "status", "-addr", d.URL).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Contains(t, string(out), "export term-1 (tenant 1): [")
		t.Logf("exportd status:\n%s", out)
		exit, took := d.Terminate(t, 20*time.Second)
		require.NoError(t, exit, "exit status after SIGTERM")
		t.Logf("exited %s after SIGTERM", took.Round(time.Millisecond))
		d = e.start(parent)
		waitState(t, d, "term-1", 2*time.Minute, pipeline.StateCompleted)
		waitFor(t, time.Minute, "the completed event to be sent", func() bool {
			r, _ := record(t, d, "term-1")
			return r.CompletedEventSent
		})
		require.Equal(t, 1, countEvents(e.events(t), "term-1", pipeline.EventCompleted))
		require.Equal(t, oneSet, e.bundleSet(t, 1, "term-1"))
	})

	t.Run("the same request twice", func(t *testing.T) {
		e.request(t, "kill-1", 1) // completed above
		e.request(t, "twice-1", 2)
		e.request(t, "twice-1", 2)
		waitState(t, d, "twice-1", 2*time.Minute, pipeline.StateCompleted)
		e.request(t, "twice-1", 2)
		// A request produced after all of them, to the same partition:
		// once it is done, every earlier message has been consumed.
		e.request(t, "after-1", 2)
		waitState(t, d, "after-1", 2*time.Minute, pipeline.StateCompleted)
		waitFor(t, time.Minute, "the completed events to be sent", func() bool {
			a, _ := record(t, d, "after-1")
			b, _ := record(t, d, "twice-1")
			return a.CompletedEventSent && b.CompletedEventSent
		})
		evs := e.events(t)
		require.Equal(t, 1, countEvents(evs, "twice-1", pipeline.EventCompleted))
		require.Equal(t, 1, countEvents(evs, "kill-1", pipeline.EventCompleted))
		require.Equal(t, 1, countEvents(evs, "twice-1", pipeline.EventAccepted))
		require.Equal(t, oneSet, e.bundleSet(t, 2, "twice-1"))
	})

	t.Run("Prometheus scrapes it", func(t *testing.T) {
		scrape(t, d)
	})
}

// scrape runs a real Prometheus server scraping d and checks the key series.
func scrape(t *testing.T, d *testbin.Daemon) {
	bin, err := exec.LookPath("prometheus")
	if err != nil && os.Getenv("CI") == "" {
		t.Skip("prometheus not installed (Debian package prometheus; .ci/run installs it)")
	}
	require.NoError(t, err, "prometheus server (Debian package prometheus)")
	dir := t.TempDir()
	target := strings.TrimPrefix(d.URL, "http://")
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: exportd\n    static_configs:\n      - targets: [%q]\n", target)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644))
	addr := testbin.FreeAddr(t)
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Logf("prometheus log:\n%s", b)
		}
	})
	query := func(q string) (float64, bool) {
		resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) == 0 {
			return 0, false
		}
		s, _ := r.Data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return v, err == nil
	}
	checks := []struct {
		q    string
		sane func(float64) bool
	}{
		{`up{job="exportd"}`, func(v float64) bool { return v == 1 }},
		{`exportd_replication_connected`, func(v float64) bool { return v == 1 }},
		{`exportd_replication_lag_bytes`, func(v float64) bool { return v >= 0 && v < 1<<30 }},
		{`exportd_replication_lag_seconds`, func(v float64) bool { return v >= 0 && v < 60 }},
		{`exportd_replication_slot_retained_wal_bytes`, func(v float64) bool { return v >= 0 }},
		{`exportd_replication_applied_lsn`, func(v float64) bool { return v > 0 }},
		{`exportd_staging_files`, func(v float64) bool { return v > 0 }},
		{`exportd_staging_bytes`, func(v float64) bool { return v > 0 }},
		{`sum(exportd_exports_total{outcome="completed"})`, func(v float64) bool { return v >= 1 }},
		{`sum(exportd_export_published_bytes_total)`, func(v float64) bool { return v > 0 }},
		{`sum(exportd_export_phase_duration_seconds_count)`, func(v float64) bool { return v > 0 }},
		{`sum(exportd_kafka_messages_total)`, func(v float64) bool { return v >= 1 }},
		{`exportd_requests_parked`, func(v float64) bool { return v == 0 }},
		{`process_resident_memory_bytes`, func(v float64) bool { return v > 1<<20 && v < 2<<30 }},
		{`go_goroutines`, func(v float64) bool { return v > 5 }},
	}
	for _, c := range checks {
		waitFor(t, time.Minute, "Prometheus to have "+c.q, func() bool {
			v, ok := query(c.q)
			return ok && c.sane(v)
		})
		v, _ := query(c.q)
		t.Logf("%s = %g", c.q, v)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInProcess runs the daemon in this process and checks that stopping it
// (as SIGTERM does, by canceling its context) ends every goroutine it
// started: TestMain verifies no goroutine leaks.
func TestInProcess(t *testing.T) {
	e := newDaemonEnv(t, 3000)
	cfgEnv := map[string]string{}
	for _, kv := range e.env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "EXPORTD_") {
			cfgEnv[k] = v
		}
	}
	cfgEnv["EXPORTD_HTTP_ADDR"] = testbin.FreeAddr(t)
	cfg, err := config.Load("", func(k string) string { return cfgEnv[k] })
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := daemon.New(ctx, cfg, logger)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()

	e.request(t, "inproc-1", 1)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get("http://" + d.Addr() + "/api/requests/inproc-1")
		if err == nil {
			var rec pipeline.RequestRecord
			json.NewDecoder(resp.Body).Decode(&rec)
			resp.Body.Close()
			if rec.State == pipeline.StateCompleted && rec.CompletedEventSent {
				break
			}
		}
		require.True(t, time.Now().Before(deadline), "request inproc-1 did not complete")
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(cfg.HTTP.ShutdownGrace + 5*time.Second):
		t.Fatal("daemon did not stop")
	}
}
