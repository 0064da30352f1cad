package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/snapshot"
)

func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pgURL := fs.String("pg-url", os.Getenv("EXPORTD_PG_URL"), "PostgreSQL connection string of the platform database (env EXPORTD_PG_URL)")
	stateDir := fs.String("state-dir", "./exportd-state", "directory for staging and local state")
	tables := fs.String("tables", "", "comma-separated schema-qualified tables to replicate")
	tenantCol := fs.String("tenant-column", "tenant_id", "tenant id column every table carries")
	publication := fs.String("publication", "exportd", "publication name")
	slot := fs.String("slot", "exportd", "logical replication slot name")
	httpAddr := fs.String("http-addr", "127.0.0.1:9187", "address for /metrics, /healthz and /readyz")
	heartbeat := fs.Duration("heartbeat", 10*time.Second, "interval of heartbeat messages that move the position on an idle database")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *pgURL == "" {
		return errors.New("-pg-url (or EXPORTD_PG_URL) is required")
	}
	if *tables == "" {
		return errors.New("-tables is required")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	store, err := snapshot.Open(ctx, *stateDir, snapshot.Options{Logger: logger, Registerer: reg})
	if err != nil {
		return fmt.Errorf("open staging in %s: %w", *stateDir, err)
	}
	defer func() {
		if err := store.Close(); err != nil {
			logger.Error("close staging", "err", err)
		}
	}()
	repl, err := cdc.New(cdc.Config{
		ConnString:        *pgURL,
		Tables:            strings.Split(*tables, ","),
		TenantColumn:      *tenantCol,
		Publication:       *publication,
		Slot:              *slot,
		HeartbeatInterval: *heartbeat,
	}, store, logger, reg)
	if err != nil {
		return err
	}
	if err := repl.Check(ctx); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *httpAddr, err)
	}
	logger.Info("serving HTTP", "addr", ln.Addr().String())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !store.State().SnapshotDone || !repl.Connected() {
			http.Error(w, "not ready: snapshot or replication pending", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return repl.Run(gctx) })
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve HTTP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	err = g.Wait()
	logger.Info("stopped", "err", err)
	return err
}
