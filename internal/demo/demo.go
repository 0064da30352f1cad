// Package demo runs exportd end to end on one machine with nothing but the
// PostgreSQL server package installed: a private PostgreSQL loaded with
// generated data, an embedded Kafka-protocol broker, filesystem storage, the
// daemon, a trickle of writes, and export requests for a tenant that has
// paid and one that has not (until the demo pays its invoice).
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/exportd/exportd/internal/config"
	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/pgcluster"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/storage"
)

// Options configure the demo.
type Options struct {
	// HTTPAddr is where the daemon serves downloads and metrics (default
	// 127.0.0.1:8080, or a free port if that is taken).
	HTTPAddr string
	// Rows is the size of the generated data set (default 20,000).
	Rows int
	// Logger receives the components' logs (default: warnings to stderr).
	Logger *slog.Logger
	// Replicas, if above 1, runs that many exportd replicas sharing staging
	// in a directory (staging.backend fs), and after the first exports stops
	// the staging writer to show another replica take over.
	Replicas int
}

const (
	paidTenant   = 1
	unpaidTenant = 2
)

// Run runs the demo: it prints progress and a summary to out, ending with
// master_url=<link>, then keeps everything running until ctx is done, and
// cleans up.
func Run(ctx context.Context, out io.Writer, o Options) (err error) {
	start := time.Now()
	if o.Rows == 0 {
		o.Rows = 20_000
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	say := func(format string, args ...any) {
		fmt.Fprintf(out, "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()

	dir, err := os.MkdirTemp("", "exportd-demo-")
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { os.RemoveAll(dir) })

	// PostgreSQL.
	pg, err := pgcluster.Start(ctx, pgcluster.Options{Logger: o.Logger})
	if err != nil {
		return fmt.Errorf("demo: start PostgreSQL: %w", err)
	}
	cleanups = append(cleanups, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		pg.Stop(sctx)
	})
	url := pg.ConnString("postgres")
	say("PostgreSQL %s started on port %d (wal_level=logical)", filepath.Base(filepath.Dir(pg.BinDir())), pg.Port())
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { conn.Close(context.Background()) })
	files, err := storage.NewFS(filepath.Join(dir, "files"))
	if err != nil {
		return err
	}
	sum, err := gen.Load(ctx, conn, files, gen.Config{Seed: 1, Tenants: 5, Rows: o.Rows, Files: true, CreateSchema: true,
		OpenInvoiceTenants: []int64{unpaidTenant}, Logger: o.Logger})
	if err != nil {
		return fmt.Errorf("demo: generate data: %w", err)
	}
	say("generated %d rows and %d files for %d tenants (tenant %d has an open invoice)", sum.TotalRows, sum.FilesWritten, len(sum.Tenants), unpaidTenant)

	// Kafka.
	topics := config.Default().Kafka
	// A partition of requests per replica, for the consumer group to share.
	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(int32(max(o.Replicas, 1)), topics.RequestTopic),
		kfake.SeedTopics(1, topics.ResultTopic, topics.DeadLetterTopic))
	if err != nil {
		return fmt.Errorf("demo: start Kafka broker: %w", err)
	}
	cleanups = append(cleanups, broker.Close)
	brokers := broker.ListenAddrs()
	say("embedded Kafka broker on %s", strings.Join(brokers, ","))

	// The daemons.
	n := max(o.Replicas, 1)
	cfgs, err := demoConfigs(dir, url, brokers, o.HTTPAddr, n)
	if err != nil {
		return err
	}
	replicas := make([]*replica, n)
	for i, cfg := range cfgs {
		r, err := startReplica(ctx, cfg, o.Logger)
		if err != nil {
			return err
		}
		replicas[i] = r
		cleanups = append(cleanups, r.stop)
		if n == 1 {
			say("exportd serving on http://%s (metrics at /metrics, status at /api/status)", r.addr)
			break
		}
		say("exportd replica %s serving on http://%s", cfg.Cluster.ReplicaID, r.addr)
		if i == 0 {
			// The first replica takes the initial snapshot into the shared
			// staging; the others then follow it.
			if err := r.waitReady(ctx, 2*time.Minute); err != nil {
				return err
			}
			say("replica %s is the staging writer: it holds the replication slot and took the initial snapshot", cfg.Cluster.ReplicaID)
		}
	}
	for _, r := range replicas {
		if err := r.waitReady(ctx, 2*time.Minute); err != nil {
			return err
		}
	}
	if n > 1 {
		say("%d replicas share staging in %s; requests are spread over them by the Kafka consumer group", n, cfgs[0].Staging.FS.Dir)
	}

	// Writes keep flowing, on tenants other than the two requested.
	wctx, stopWrites := context.WithCancel(ctx)
	writesDone := make(chan struct{})
	go func() {
		defer close(writesDone)
		gen.Workload{Seed: 2, Tenants: []int64{3, 4, 5}, Workers: 1, Files: files, Logger: o.Logger}.Run(wctx, url)
	}()
	cleanups = append(cleanups, func() { stopWrites(); <-writesDone })

	results, err := newResults(brokers, topics.ResultTopic)
	if err != nil {
		return err
	}
	defer results.close()
	req := func(tenant int64) (string, error) {
		var admin string
		if err := conn.QueryRow(ctx, "SELECT id::text FROM users WHERE tenant_id = $1 AND role = 'admin' AND is_active ORDER BY id LIMIT 1", tenant).Scan(&admin); err != nil {
			return "", fmt.Errorf("demo: find an admin of tenant %d: %w", tenant, err)
		}
		id := fmt.Sprintf("demo-%d-%d", tenant, time.Now().UnixNano())
		body, _ := json.Marshal(map[string]any{"version": 1, "request_id": id, "tenant_id": tenant, "requested_by": admin,
			"requested_at": time.Now().UTC().Format(time.RFC3339)})
		w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topics.RequestTopic, Balancer: &kafka.Hash{}, BatchTimeout: time.Millisecond}
		defer w.Close()
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(fmt.Sprint(tenant)), Value: body}); err != nil {
			return "", err
		}
		say("requested an export for tenant %d (request %s, by admin user %s)", tenant, id, admin)
		return id, nil
	}
	paidID, err := req(paidTenant)
	if err != nil {
		return err
	}
	unpaidID, err := req(unpaidTenant)
	if err != nil {
		return err
	}
	blocked, err := results.wait(ctx, unpaidID, pipeline.EventBlockedUnpaid)
	if err != nil {
		return err
	}
	say("tenant %d: blocked_unpaid (outstanding invoices %s)", unpaidTenant, strings.Join(blocked.OutstandingInvoices, ", "))
	paid, err := results.wait(ctx, paidID, pipeline.EventCompleted)
	if err != nil {
		return err
	}
	say("tenant %d: completed %s", paidTenant, describe(paid))
	tag, err := conn.Exec(ctx, "UPDATE invoices SET status = 'paid', paid_at = now() WHERE tenant_id = $1 AND status = 'open'", unpaidTenant)
	if err != nil {
		return err
	}
	say("paid %d open invoice(s) of tenant %d in production", tag.RowsAffected(), unpaidTenant)
	unpaid, err := results.wait(ctx, unpaidID, pipeline.EventCompleted)
	if err != nil {
		return err
	}
	say("tenant %d: completed on its own once paid %s", unpaidTenant, describe(unpaid))
	if n > 1 {
		for _, id := range []string{paidID, unpaidID} {
			if owner := replicas[n-1].owner(ctx, id); owner != "" {
				say("request %s was served by replica %s", id, owner)
			}
		}
		// Stop the writer: another replica takes over the slot.
		w := writerOf(ctx, replicas)
		if w < 0 {
			return errors.New("demo: no replica is the staging writer")
		}
		stopped := time.Now()
		replicas[w].stop()
		say("stopped replica %s, the staging writer", cfgs[w].Cluster.ReplicaID)
		var next int
		for next = writerOf(ctx, replicas); next < 0 || next == w; next = writerOf(ctx, replicas) {
			if time.Since(stopped) > time.Minute {
				return errors.New("demo: no replica took over within a minute")
			}
			time.Sleep(50 * time.Millisecond)
		}
		say("replica %s took over as the staging writer after %.1fs (cluster.ttl %s)", cfgs[next].Cluster.ReplicaID,
			time.Since(stopped).Seconds(), cfgs[next].Cluster.TTL)
		againID, err := req(paidTenant)
		if err != nil {
			return err
		}
		again, err := results.wait(ctx, againID, pipeline.EventCompleted)
		if err != nil {
			return err
		}
		say("tenant %d: completed again after the takeover %s, served by replica %s", paidTenant, describe(again), replicas[n-1].owner(ctx, againID))
		paid = again
	}
	fmt.Fprintf(out, "\nThe links stay downloadable until you stop the demo (Ctrl-C removes everything).\n")
	fmt.Fprintf(out, "tenant %d master CSV: %s\n", unpaidTenant, unpaid.MasterURL)
	fmt.Fprintf(out, "master_url=%s\n", paid.MasterURL)

	select {
	case <-ctx.Done():
	case err := <-replicas[n-1].done:
		replicas[n-1].done <- err
		return fmt.Errorf("demo: exportd stopped: %w", err)
	}
	fmt.Fprintln(out, "stopping and cleaning up")
	return nil
}

func describe(e pipeline.Event) string {
	var rows int64
	for _, n := range e.Rows {
		rows += n
	}
	var parts []string
	for _, p := range e.Parts {
		parts = append(parts, fmt.Sprintf("%s %.1f kB, %d files", p.Part, float64(p.SizeBytes)/1e3, p.FileCount))
	}
	return fmt.Sprintf("(%d rows at %s; %s; %d missing files)", rows, e.LSN, strings.Join(parts, "; "), e.MissingFiles)
}

// demoConfigs are the daemons' configurations for the demo: one, or n
// replicas sharing staging in a directory, whose download links all point
// at the last replica (the demo never stops it).
func demoConfigs(dir, url string, brokers []string, addr string, n int) ([]*config.Config, error) {
	addrs := make([]string, n)
	for i := range addrs {
		var err error
		if addrs[i], err = freeAddr(addr, i > 0); err != nil {
			return nil, err
		}
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	var cfgs []*config.Config
	for i := range n {
		cfg := config.Default()
		cfg.StateDir = filepath.Join(dir, "state")
		cfg.LogLevel = "warn"
		cfg.HTTP.Addr = addrs[i]
		cfg.HTTP.PublicURL = "http://" + addrs[n-1]
		cfg.HTTP.ShutdownGrace = 10 * time.Second
		cfg.Postgres.URL = config.Secret(url)
		cfg.Postgres.Heartbeat = time.Second
		cfg.Files.Type = config.StoreFS
		cfg.Files.FS.Dir = filepath.Join(dir, "files")
		cfg.Publish.Type = config.StoreFS
		cfg.Publish.FS.Dir = filepath.Join(dir, "published")
		cfg.Publish.LinkSecret = config.Secret(hex.EncodeToString(secret))
		cfg.Kafka.Brokers = brokers
		if n > 1 {
			cfg.StateDir = filepath.Join(dir, fmt.Sprintf("state-%d", i))
			cfg.Staging.Backend = config.StagingFS
			cfg.Staging.FS.Dir = filepath.Join(dir, "shared")
			cfg.Cluster.ReplicaID = fmt.Sprintf("demo-%d", i)
			cfg.Cluster.Heartbeat, cfg.Cluster.TTL = 250*time.Millisecond, 2*time.Second
		}
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("demo: config: %w", err)
		}
		cfgs = append(cfgs, cfg)
	}
	return cfgs, nil
}

// freeAddr returns addr if given and not other, else 127.0.0.1:8080 if that
// is free and not other, else a free loopback port.
func freeAddr(addr string, other bool) (string, error) {
	if addr != "" && !other {
		return addr, nil
	}
	if ln, err := net.Listen("tcp", "127.0.0.1:8080"); err == nil && addr == "" && !other {
		ln.Close()
		return "127.0.0.1:8080", nil
	} else if err == nil {
		ln.Close()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// replica is one daemon of the demo.
type replica struct {
	addr   string
	done   chan error
	cancel context.CancelFunc
	once   sync.Once
}

func startReplica(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*replica, error) {
	d, err := daemon.New(ctx, cfg, logger)
	if err != nil {
		return nil, fmt.Errorf("demo: start exportd: %w", err)
	}
	dctx, cancel := context.WithCancel(context.Background())
	r := &replica{addr: d.Addr(), done: make(chan error, 1), cancel: cancel}
	go func() { r.done <- d.Run(dctx) }()
	return r, nil
}

// stop stops the daemon and waits for it (once).
func (r *replica) stop() {
	r.once.Do(func() {
		r.cancel()
		err := <-r.done
		r.done <- err
	})
}

// status reads the daemon's /api/status.
func (r *replica) status(ctx context.Context) (daemon.Status, bool) {
	var st daemon.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.addr+"/api/status", nil)
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

func (r *replica) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if st, ok := r.status(ctx); ok && st.Ready {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: exportd on %s not ready within %s", r.addr, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-r.done:
			r.done <- err
			return fmt.Errorf("demo: exportd stopped: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// owner is the replica that served request id ("" if unknown).
func (r *replica) owner(ctx context.Context, id string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.addr+"/api/requests/"+id, nil)
	if err != nil {
		return ""
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var rec pipeline.RequestRecord
	if json.NewDecoder(resp.Body).Decode(&rec) != nil {
		return ""
	}
	return rec.Owner
}

// writerOf returns the index of the replica that is the staging writer
// and streams, or -1.
func writerOf(ctx context.Context, rs []*replica) int {
	for i, r := range rs {
		if st, ok := r.status(ctx); ok && st.Cluster != nil && st.Cluster.Role == "writer" && st.Replication.Connected {
			return i
		}
	}
	return -1
}

// results follows the results topic.
type results struct {
	r *kafka.Reader
}

func newResults(brokers []string, topic string) (*results, error) {
	return &results{r: kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})}, nil
}

func (r *results) close() { r.r.Close() }

// wait reads events until one of typ for request id (or a final failure).
func (r *results) wait(ctx context.Context, id, typ string) (pipeline.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := r.r.SetOffset(kafka.FirstOffset); err != nil {
		return pipeline.Event{}, err
	}
	for {
		m, err := r.r.ReadMessage(ctx)
		if err != nil {
			return pipeline.Event{}, fmt.Errorf("demo: waiting for %s of %s: %w", typ, id, err)
		}
		var e pipeline.Event
		if json.Unmarshal(m.Value, &e) != nil || e.RequestID != id {
			continue
		}
		if e.Type == typ {
			return e, nil
		}
		switch e.Type {
		case pipeline.EventFailed, pipeline.EventRejected, pipeline.EventExpired:
			return e, errors.New("demo: request " + id + " " + e.Type + ": " + e.Reason)
		}
	}
}
