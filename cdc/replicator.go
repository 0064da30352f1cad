package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/snapshot"
)

// Replicator keeps staging current with the platform's database.
type Replicator struct {
	cfg     Config
	store   *snapshot.Store
	log     *slog.Logger
	metrics *metrics

	connected   atomic.Bool
	standby     atomic.Bool
	progress    atomic.Pointer[loadProgress]
	forceResnap atomic.Bool
	lagBytes    atomic.Int64
	lagMillis   atomic.Int64
}

// Lag is how far staging is behind the server.
type Lag struct {
	// Bytes of WAL the server has sent past the applied position.
	Bytes int64
	// Seconds is the age of the oldest transaction of the last batch when
	// it was made durable; 0 when caught up.
	Seconds float64
}

// Lag returns the replication lag last measured.
func (r *Replicator) Lag() Lag {
	return Lag{Bytes: r.lagBytes.Load(), Seconds: float64(r.lagMillis.Load()) / 1000}
}

func (r *Replicator) setLagBytes(n int64) {
	r.lagBytes.Store(n)
	r.metrics.lagBytes.Set(float64(n))
}

func (r *Replicator) setLagSeconds(sec float64) {
	r.lagMillis.Store(int64(sec * 1000))
	r.metrics.lagSeconds.Set(sec)
}

// New checks cfg and returns a Replicator feeding store. reg may be nil.
func New(cfg Config, store *snapshot.Store, logger *slog.Logger, reg prometheus.Registerer) (*Replicator, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("replication config: %w", err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Replicator{cfg: cfg, store: store, log: logger.With("component", "cdc"), metrics: newMetrics(reg)}, nil
}

// Connected reports whether the replication stream is open.
func (r *Replicator) Connected() bool { return r.connected.Load() }

// Progress reports the initial snapshot under way, if any.
func (r *Replicator) Progress() SnapshotProgress { return progressOf(r.progress.Load()) }

// Check connects once and verifies the server, the tables and the
// publication, creating the publication when it does not exist. Errors name
// the fix; a daemon calls it at start to fail fast on a bad setup.
func (r *Replicator) Check(ctx context.Context) error {
	conn, err := r.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = r.prepare(ctx, conn)
	return err
}

func (r *Replicator) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := ConnConfig(r.cfg.ConnString)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	return conn, nil
}

func (r *Replicator) prepare(ctx context.Context, conn *pgx.Conn) ([]snapshot.TableSchema, error) {
	if err := checkServer(ctx, conn); err != nil {
		return nil, err
	}
	tables, err := describeTables(ctx, conn, r.cfg)
	if err != nil {
		return nil, err
	}
	created, err := ensurePublication(ctx, conn, r.cfg)
	if err != nil {
		return nil, err
	}
	if created {
		r.log.Info("publication created", "publication", r.cfg.Publication, "tables", len(tables))
	}
	return tables, nil
}

// Run replicates until ctx ends, reconnecting with capped exponential backoff
// after failures. It returns nil when ctx ends, or a setup error that needs an
// operator.
func (r *Replicator) Run(ctx context.Context) error {
	backoff := r.cfg.ReconnectMin
	for {
		started := time.Now()
		err := r.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			continue
		}
		if errors.Is(err, errResnapshot) {
			r.forceResnap.Store(true)
		}
		r.metrics.reconnects.Inc()
		if time.Since(started) > 2*r.cfg.ReconnectMax {
			backoff = r.cfg.ReconnectMin
		}
		level := slog.LevelWarn
		if errors.Is(err, ErrSetup) || errors.Is(err, ErrSlotLost) {
			level = slog.LevelError
		}
		r.log.Log(ctx, level, "replication session ended; retrying", "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, r.cfg.ReconnectMax)
	}
}

// session checks the setup, takes a fresh snapshot when staging cannot
// continue from the slot, then streams until an error or ctx ends. In
// shared staging a standby first waits until it may take over as the
// writer.
func (r *Replicator) session(ctx context.Context) error {
	if sh := r.store.Shared(); sh.Shared && !sh.Writer {
		if err := r.takeOver(ctx); err != nil {
			return err
		}
	}
	conn, err := r.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	tables, err := r.prepare(ctx, conn)
	if err != nil {
		return err
	}
	slot, err := readSlot(ctx, conn, r.cfg.Slot)
	if err != nil {
		return err
	}
	if slot.Exists {
		var db string
		if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
			return fmt.Errorf("read current database: %w", err)
		}
		switch {
		case slot.Plugin != "pgoutput":
			return setupErr("replication slot %q exists with plugin %q (physical, or another plugin): configure another slot name, or drop it with SELECT pg_drop_replication_slot('%s')", r.cfg.Slot, slot.Plugin, r.cfg.Slot)
		case slot.Database != db:
			return setupErr("replication slot %q belongs to database %q, not %q: configure another slot name", r.cfg.Slot, slot.Database, db)
		case slot.Active:
			return fmt.Errorf("%w: slot %q is streaming to another process (another exportd?); waiting to take over", ErrSlotInUse, r.cfg.Slot)
		}
	}
	if reason := r.resnapshotReason(slot, tables); reason != "" {
		if r.store.State().SnapshotDone {
			r.metrics.slotLost.Inc()
			r.log.Error("taking a fresh snapshot", "reason", reason, "slot", r.cfg.Slot)
		} else {
			r.log.Info("taking the initial snapshot", "reason", reason, "slot", r.cfg.Slot)
		}
		if slot.Exists {
			if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", r.cfg.Slot); err != nil {
				return fmt.Errorf("drop replication slot %s: %w", r.cfg.Slot, err)
			}
		}
		if _, err := r.initialSnapshot(ctx, conn, tables); err != nil {
			return err
		}
		r.forceResnap.Store(false)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.stream(gctx) })
	g.Go(func() error { return r.monitor(gctx, conn) })
	return g.Wait()
}

// takeOver waits, as a standby of shared staging, until the staging writer
// (another replica) is gone, and becomes the writer. It returns ctx's error
// if ctx ends first.
func (r *Replicator) takeOver(ctx context.Context) error {
	r.standby.Store(true)
	defer r.standby.Store(false)
	waiting := false
	for {
		err := r.store.Acquire(ctx)
		if err == nil {
			if waiting {
				r.metrics.takeovers.Inc()
			}
			return nil
		}
		if !errors.Is(err, snapshot.ErrWriterAlive) {
			return fmt.Errorf("take over staging: %w", err)
		}
		if !waiting {
			r.log.Info("standby: another replica is the staging writer; waiting to take over", "writer", r.store.Shared().WriterID)
			waiting = true
		}
		t := time.NewTimer(r.cfg.StandbyPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Standby reports whether this replica waits to take over as the staging
// writer (shared staging).
func (r *Replicator) Standby() bool { return r.standby.Load() }

// resnapshotReason says why staging cannot continue from the slot, or "".
func (r *Replicator) resnapshotReason(slot slotInfo, tables []snapshot.TableSchema) string {
	st := r.store.State()
	switch {
	case !st.SnapshotDone:
		return "staging holds no snapshot yet"
	case r.forceResnap.Load():
		return "the stream showed a change staging cannot apply faithfully"
	case st.Slot != r.cfg.Slot:
		return fmt.Sprintf("staging was built from slot %q, not %q", st.Slot, r.cfg.Slot)
	case !slot.Exists:
		return fmt.Sprintf("replication slot %q is gone (dropped): changes after %s were lost", r.cfg.Slot, pglogrepl.LSN(st.LSN))
	case slot.WALStatus == "lost":
		return fmt.Sprintf("replication slot %q was invalidated (wal_status lost): the WAL it needed was removed", r.cfg.Slot)
	case slot.ConfirmedFlush > st.LSN:
		return fmt.Sprintf("the slot confirmed %s but staging holds only up to %s (state directory restored from an older copy?)", pglogrepl.LSN(slot.ConfirmedFlush), pglogrepl.LSN(st.LSN))
	}
	if missing := r.unstagedTables(tables); missing != "" {
		return fmt.Sprintf("table %s is configured but not staged", missing)
	}
	return ""
}

func (r *Replicator) unstagedTables(tables []snapshot.TableSchema) string {
	v, err := r.store.Pin(context.Background())
	if err != nil {
		return ""
	}
	defer v.Close()
	for _, t := range tables {
		if _, ok := v.Table(t.Name); !ok {
			return t.Name
		}
	}
	return ""
}

// monitor writes heartbeats and watches the slot's health while streaming.
func (r *Replicator) monitor(ctx context.Context, conn *pgx.Conn) error {
	var heartbeat <-chan time.Time
	if r.cfg.HeartbeatInterval > 0 {
		t := time.NewTicker(r.cfg.HeartbeatInterval)
		defer t.Stop()
		heartbeat = t.C
	}
	check := time.NewTicker(r.cfg.SlotCheckInterval)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-heartbeat:
			if _, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(false, $1, '')", heartbeatPrefix); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("write heartbeat: %w", err)
			}
			r.metrics.heartbeatsSent.Inc()
		case <-check.C:
			slot, err := readSlot(ctx, conn, r.cfg.Slot)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if !slot.Exists || slot.WALStatus == "lost" {
				return fmt.Errorf("%w: slot %q exists=%t wal_status=%q", ErrSlotLost, r.cfg.Slot, slot.Exists, slot.WALStatus)
			}
			r.metrics.slotRetainedBytes.Set(float64(slot.RetainedBytes))
		}
	}
}
