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
	"os"
	"path/filepath"
	"strings"
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
	broker, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topics.RequestTopic, topics.ResultTopic, topics.DeadLetterTopic))
	if err != nil {
		return fmt.Errorf("demo: start Kafka broker: %w", err)
	}
	cleanups = append(cleanups, broker.Close)
	brokers := broker.ListenAddrs()
	say("embedded Kafka broker on %s", strings.Join(brokers, ","))

	// The daemon.
	cfg, err := demoConfig(dir, url, brokers, o.HTTPAddr)
	if err != nil {
		return err
	}
	d, err := daemon.New(ctx, cfg, o.Logger)
	if err != nil {
		return fmt.Errorf("demo: start exportd: %w", err)
	}
	dctx, stopDaemon := context.WithCancel(context.Background())
	daemonDone := make(chan error, 1)
	go func() { daemonDone <- d.Run(dctx) }()
	cleanups = append(cleanups, func() { stopDaemon(); <-daemonDone })
	say("exportd serving on http://%s (metrics at /metrics, status at /api/status)", d.Addr())

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
	fmt.Fprintf(out, "\nThe links stay downloadable until you stop the demo (Ctrl-C removes everything).\n")
	fmt.Fprintf(out, "tenant %d master CSV: %s\n", unpaidTenant, unpaid.MasterURL)
	fmt.Fprintf(out, "master_url=%s\n", paid.MasterURL)

	select {
	case <-ctx.Done():
	case err := <-daemonDone:
		daemonDone <- err
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

// demoConfig is the daemon's configuration for the demo.
func demoConfig(dir, url string, brokers []string, addr string) (*config.Config, error) {
	if addr == "" {
		addr = "127.0.0.1:8080"
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
		} else {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			addr = ln.Addr().String()
			ln.Close()
		}
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	cfg := config.Default()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.LogLevel = "warn"
	cfg.HTTP.Addr = addr
	cfg.HTTP.PublicURL = "http://" + addr
	cfg.HTTP.ShutdownGrace = 10 * time.Second
	cfg.Postgres.URL = config.Secret(url)
	cfg.Postgres.Heartbeat = time.Second
	cfg.Files.Type = config.StoreFS
	cfg.Files.FS.Dir = filepath.Join(dir, "files")
	cfg.Publish.Type = config.StoreFS
	cfg.Publish.FS.Dir = filepath.Join(dir, "published")
	cfg.Publish.LinkSecret = config.Secret(hex.EncodeToString(secret))
	cfg.Kafka.Brokers = brokers
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("demo: config: %w", err)
	}
	return cfg, nil
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
