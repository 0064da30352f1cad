// Package daemon wires exportd's components into the running daemon: it
// opens staging and the request store, replicates from PostgreSQL, serves
// export requests from Kafka, and serves HTTP (metrics, health, downloads,
// the status API). cmd/exportd run and the demo start it.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/internal/cluster"
	"github.com/exportd/exportd/internal/config"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
	"github.com/exportd/exportd/storage"
)

// Directories under the state directory.
const (
	StagingDir = "staging"
)

// Key prefixes in the bucket of shared staging (staging.backend s3 or fs):
// staging itself, request states, and the replicas' heartbeats
// (cluster.DefaultPrefix).
const (
	SharedStagingPrefix  = "staging/"
	SharedRequestsPrefix = "requests/"
)

// sharedBucket is the store shared staging lives in: storage.S3 or
// storage.FS.
type sharedBucket interface {
	storage.Store
	storage.Conditional
}

// Daemon is a configured exportd, ready to run.
type Daemon struct {
	cfg       *config.Config
	logger    *slog.Logger
	reg       *prometheus.Registry
	staging   *snapshot.Store
	members   *cluster.Members // nil: staging is local
	repl      *cdc.Replicator
	requests  pipeline.Requests
	fencer    *cdc.Fencer
	svc       *pipeline.Service // nil without Kafka
	exporter  *pipeline.Exporter
	prerender *pipeline.Prerenderer // nil: off
	ln        net.Listener
	srv       *http.Server
	closers   []io.Closer
}

// New opens what cfg describes and checks the database setup. Close it if
// Run is not called.
func New(ctx context.Context, cfg *config.Config, logger *slog.Logger) (_ *Daemon, err error) {
	d := &Daemon{cfg: cfg, logger: logger, reg: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.Close())
		}
	}()
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	sopts := snapshot.Options{Logger: logger, Registerer: d.reg}
	var bucket sharedBucket
	if cfg.Staging.Shared() {
		if bucket, err = d.openSharedBucket(ctx); err != nil {
			return nil, err
		}
		c := cfg.Cluster
		d.members, err = cluster.New(bucket, cluster.Config{ID: c.ReplicaID, Interval: c.Heartbeat, TTL: c.TTL}, logger, d.reg)
		if err != nil {
			return nil, err
		}
		sopts.Shared = &snapshot.SharedOptions{Bucket: bucket, Prefix: SharedStagingPrefix, ReplicaID: c.ReplicaID,
			PollInterval: cfg.Staging.PollInterval, DeleteDelay: cfg.Staging.DeleteDelay, WriterAlive: d.members.Alive}
	}
	d.staging, err = snapshot.Open(ctx, filepath.Join(cfg.StateDir, StagingDir), sopts)
	if err != nil {
		return nil, fmt.Errorf("open staging: %w", err)
	}
	d.closers = append(d.closers, d.staging)
	if bucket != nil {
		d.requests, err = pipeline.OpenSharedRequestStore(ctx, bucket, SharedRequestsPrefix)
	} else {
		d.requests, err = pipeline.OpenRequestStore(filepath.Join(cfg.StateDir, pipeline.RequestStoreDir))
	}
	if err != nil {
		return nil, fmt.Errorf("open request store: %w", err)
	}
	d.closers = append(d.closers, d.requests)

	pg := cfg.Postgres
	d.repl, err = cdc.New(cdc.Config{
		ConnString:        pg.URL.Reveal(),
		Tables:            pg.Tables,
		TenantColumn:      pg.TenantColumn,
		Publication:       pg.Publication,
		Slot:              pg.Slot,
		CopyWorkers:       pg.CopyWorkers,
		HeartbeatInterval: pg.Heartbeat,
		FlushInterval:     pg.FlushInterval,
		StandbyPoll:       cfg.Staging.PollInterval,
	}, d.staging, logger, d.reg)
	if err != nil {
		return nil, err
	}
	if err := d.repl.Check(ctx); err != nil {
		return nil, err
	}

	spec := pipeline.DefaultSpec()
	if cfg.Export.Spec != "" {
		if spec, err = pipeline.LoadSpec(cfg.Export.Spec); err != nil {
			return nil, err
		}
	}
	files, err := d.openStore(ctx, cfg.Files, "files")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	pub, err := d.openPublisher(ctx, mux)
	if err != nil {
		return nil, err
	}
	var prerenderDir string
	if n := cfg.Export.PrerenderMinRows; n > 0 {
		prerenderDir = filepath.Join(cfg.StateDir, pipeline.PrerenderDir)
		d.prerender, err = pipeline.NewPrerenderer(spec, pipeline.PrerenderConfig{Dir: prerenderDir, MinRows: n,
			CompressionLevel: cfg.Export.CompressionLevel, Background: true}, logger, pipeline.NewPrerenderMetrics(d.reg))
		if err != nil {
			return nil, err
		}
	} else if err := os.RemoveAll(filepath.Join(cfg.StateDir, pipeline.PrerenderDir)); err != nil {
		return nil, fmt.Errorf("remove prerendered CSVs: %w", err) // turned off: they would go stale
	}
	exporter := pipeline.NewExporter(spec, files, pub, pipeline.ExportConfig{
		Prefix: cfg.Export.Prefix, LinkTTL: cfg.Export.LinkTTL, CompressionLevel: cfg.Export.CompressionLevel,
		PrerenderDir: prerenderDir,
	}, logger, pipeline.NewExportMetrics(d.reg))
	d.exporter = exporter
	d.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "exportd_exports_running", Help: "Exports being rendered now.",
	}, func() float64 { return float64(len(exporter.Progress())) }))

	if k := cfg.Kafka; len(k.Brokers) > 0 {
		var notifier pipeline.Notifier
		if s := cfg.SMTP; s.Addr != "" {
			n, err := pipeline.NewSMTPNotifier(pipeline.SMTPConfig{Addr: s.Addr, From: s.From, Username: s.Username,
				Password: s.Password.Reveal(), TLS: s.TLS}, logger)
			if err != nil {
				return nil, err
			}
			notifier = n
		}
		d.fencer = cdc.NewFencer(pg.URL.Reveal())
		d.closers = append(d.closers, d.fencer)
		d.svc, err = pipeline.NewService(pipeline.ServiceConfig{
			Brokers: k.Brokers, Group: k.Group, RequestTopic: k.RequestTopic, ResultTopic: k.ResultTopic,
			DeadLetterTopic: k.DeadLetterTopic, Concurrency: cfg.Export.Concurrency, FenceTimeout: k.FenceTimeout,
			ParkExpiry: k.ParkExpiry, MaxMessageBytes: k.MaxMessageBytes, Peers: d.peers(),
			ClaimInterval: cfg.Cluster.TTL, PublishMargin: cfg.Cluster.TTL / 3,
		}, d.requests, d.staging, d.fencer, exporter, spec, notifier, logger, pipeline.NewServiceMetrics(d.reg))
		if err != nil {
			return nil, err
		}
	} else {
		logger.Warn("no Kafka brokers configured: export requests are not consumed")
	}

	d.routes(mux)
	d.ln, err = net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.HTTP.Addr, err)
	}
	d.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return d, nil
}

// openStore opens an object store of the config.
func (d *Daemon) openStore(ctx context.Context, s config.Store, name string) (storage.Store, error) {
	switch s.Type {
	case config.StoreFS:
		fs, err := storage.NewFS(s.FS.Dir)
		if err != nil {
			return nil, fmt.Errorf("%s store: %w", name, err)
		}
		return fs, nil
	case config.StoreS3:
		st, err := storage.NewS3(ctx, s.S3.StorageConfig(), d.logger.With("store", name))
		if err != nil {
			return nil, fmt.Errorf("%s store: %w", name, err)
		}
		d.closers = append(d.closers, st)
		return st, nil
	}
	return nil, fmt.Errorf("%s store: unknown type %q", name, s.Type)
}

// openSharedBucket opens the bucket of shared staging.
func (d *Daemon) openSharedBucket(ctx context.Context) (sharedBucket, error) {
	st := d.cfg.Staging
	s, err := d.openStore(ctx, config.Store{Type: st.Backend, FS: st.FS, S3: st.S3}, "staging")
	if err != nil {
		return nil, err
	}
	b, ok := s.(sharedBucket)
	if !ok {
		return nil, fmt.Errorf("staging store %T cannot write conditionally", s)
	}
	return b, nil
}

// openPublisher opens the publish store; for a filesystem store it mounts
// the download handler on mux.
func (d *Daemon) openPublisher(ctx context.Context, mux *http.ServeMux) (pipeline.Publisher, error) {
	p := d.cfg.Publish
	st, err := d.openStore(ctx, p.Store, "publish")
	if err != nil {
		return nil, err
	}
	switch s := st.(type) {
	case *storage.FS:
		// Objects whose Put a crash interrupted: nothing writes yet.
		if n, err := s.RemoveTemp(); err != nil {
			return nil, err
		} else if n > 0 {
			d.logger.Info("removed temporary files of interrupted uploads", "files", n)
		}
		signer, err := storage.NewSigner([]byte(p.LinkSecret.Reveal()), d.cfg.HTTP.PublicURL, time.Now)
		if err != nil {
			return nil, fmt.Errorf("publish.link_secret: %w", err)
		}
		mux.Handle(storage.DownloadPath, storage.DownloadHandler(s, signer, d.logger))
		return &storage.FSLinker{FS: s, Signer: signer}, nil
	case *storage.S3:
		return s, nil
	}
	return nil, fmt.Errorf("publish store %T cannot issue links", st)
}

// peers is what the request service knows of the other replicas (nil for
// local staging).
func (d *Daemon) peers() pipeline.Peers {
	if d.members == nil {
		return nil
	}
	return d.members
}

// Addr is the address the HTTP server listens on.
func (d *Daemon) Addr() string { return d.ln.Addr().String() }

// Registry is the daemon's metrics registry.
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// Run runs the daemon until ctx is done, then shuts down in layer order:
// it stops taking requests, lets in-flight exports checkpoint (their state
// is durable and resumes on restart), stops replication after confirming
// the durable position, and stops serving HTTP, within the configured
// grace period. It closes the daemon.
func (d *Daemon) Run(ctx context.Context) (err error) {
	defer func() { err = errors.Join(err, d.Close()) }()
	d.logger.Info("serving HTTP", "addr", d.Addr())
	g, gctx := errgroup.WithContext(context.Background())
	// Replication and requests stop when ctx ends (or another actor fails).
	work, stopWork := context.WithCancel(gctx)
	defer stopWork()
	if d.members != nil {
		// Heartbeats go on until every other actor has stopped: a replica
		// shutting down still owns its requests and, until it exits, the
		// writer role.
		beat, stopBeat := context.WithCancel(context.Background())
		beatDone := make(chan error, 1)
		go func() { beatDone <- d.members.Run(beat) }()
		defer func() {
			stopBeat()
			err = errors.Join(err, <-beatDone)
		}()
	}
	go func() {
		select {
		case <-ctx.Done():
		case <-gctx.Done():
		}
		stopWork()
	}()
	g.Go(func() error {
		err := d.repl.Run(work)
		if err != nil && work.Err() == nil {
			return fmt.Errorf("replication: %w", err)
		}
		return nil
	})
	if d.prerender != nil {
		g.Go(func() error { return d.prerender.Run(work, d.staging) })
	}
	if d.svc != nil {
		g.Go(func() error {
			err := d.svc.Run(work)
			if err != nil && work.Err() == nil {
				return fmt.Errorf("requests: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		if err := d.srv.Serve(d.ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve HTTP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-work.Done()
		sctx, cancel := context.WithTimeout(context.Background(), d.cfg.HTTP.ShutdownGrace)
		defer cancel()
		return d.srv.Shutdown(sctx)
	})
	done := make(chan error, 1)
	go func() { done <- g.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		select {
		case err = <-done:
		case <-time.After(d.cfg.HTTP.ShutdownGrace):
			return fmt.Errorf("shutdown: not done within %s", d.cfg.HTTP.ShutdownGrace)
		}
	}
	d.logger.Info("stopped", "err", err)
	return err
}

// Close releases what New opened.
func (d *Daemon) Close() error {
	var errs []error
	if d.ln != nil {
		d.ln.Close()
	}
	for i := len(d.closers) - 1; i >= 0; i-- {
		if err := d.closers[i].Close(); err != nil {
			errs = append(errs, err)
		}
	}
	d.closers = nil
	return errors.Join(errs...)
}

// OpenSharedStaging opens, as a follower that never writes, the shared
// staging cfg describes (staging.backend s3 or fs), caching files in
// cacheDir: for reading staging beside running replicas (exportd export).
// Close the store, then the returned closer.
func OpenSharedStaging(ctx context.Context, cfg *config.Config, cacheDir string, logger *slog.Logger) (*snapshot.Store, io.Closer, error) {
	if !cfg.Staging.Shared() {
		return nil, nil, fmt.Errorf("staging.backend is %s, not shared", cfg.Staging.Backend)
	}
	d := &Daemon{cfg: cfg, logger: logger}
	b, err := d.openSharedBucket(ctx)
	if err != nil {
		return nil, nil, err
	}
	closer := closerFunc(func() error { return d.Close() })
	store, err := snapshot.Open(ctx, cacheDir, snapshot.Options{Logger: logger, NoCompaction: true,
		Shared: &snapshot.SharedOptions{Bucket: b, Prefix: SharedStagingPrefix, ReplicaID: cfg.Cluster.ReplicaID + "-reader",
			PollInterval: cfg.Staging.PollInterval, DeleteDelay: cfg.Staging.DeleteDelay}})
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("open shared staging: %w", err), closer.Close())
	}
	return store, closer, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
