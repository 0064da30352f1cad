package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/exportd/exportd/snapshot"
)

// ServiceConfig configures the request Service. Zero values take defaults.
type ServiceConfig struct {
	Brokers         []string
	Group           string // consumer group (default "exportd")
	RequestTopic    string // default "exportd.requests"
	ResultTopic     string // default "exportd.results"
	DeadLetterTopic string // default "exportd.requests.dlq"
	// Concurrency is the number of exports rendered at once (default 2).
	// A tenant has at most one export rendering at a time.
	Concurrency int
	// FenceTimeout bounds the wait for staging to reach the fence
	// (default 60s); past it the request fails, retryably.
	FenceTimeout time.Duration
	// ParkExpiry is how long a request blocked by unpaid invoices waits
	// before it expires (default 30 days).
	ParkExpiry time.Duration
	// RecheckInterval is how often parked requests are re-evaluated when
	// staging has moved (default 1s).
	RecheckInterval time.Duration
	// Attempts bounds how often an export that fails is tried before the
	// request fails (default 3).
	Attempts int
	// MaxMessageBytes is the largest request message accepted (default and
	// at most MaxRequestBytes); larger ones are dead-lettered.
	MaxMessageBytes int
	// Peers, if set, are the other replicas sharing the request store
	// (a SharedRequestStore): each request is processed by the replica
	// that recorded it, and the others take over its unfinished requests
	// when it is no longer alive, looking for them every ClaimInterval
	// (default 5s).
	Peers         Peers
	ClaimInterval time.Duration
	// PublishMargin: with Peers, the completed event is published only
	// while this replica's lease holds for at least this long (default
	// 2s); a publication that takes longer is abandoned and retried.
	PublishMargin time.Duration
}

func (c ServiceConfig) withDefaults() ServiceConfig {
	if c.Group == "" {
		c.Group = "exportd"
	}
	if c.RequestTopic == "" {
		c.RequestTopic = "exportd.requests"
	}
	if c.ResultTopic == "" {
		c.ResultTopic = "exportd.results"
	}
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = "exportd.requests.dlq"
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 2
	}
	if c.FenceTimeout <= 0 {
		c.FenceTimeout = time.Minute
	}
	if c.ParkExpiry <= 0 {
		c.ParkExpiry = 30 * 24 * time.Hour
	}
	if c.RecheckInterval <= 0 {
		c.RecheckInterval = time.Second
	}
	if c.Attempts <= 0 {
		c.Attempts = 3
	}
	if c.MaxMessageBytes <= 0 || c.MaxMessageBytes > MaxRequestBytes {
		c.MaxMessageBytes = MaxRequestBytes
	}
	if c.ClaimInterval <= 0 {
		c.ClaimInterval = 5 * time.Second
	}
	if c.PublishMargin <= 0 {
		c.PublishMargin = 2 * time.Second
	}
	return c
}

// Fencer reads production's current WAL position: the one production query
// an export makes.
type Fencer interface {
	CurrentLSN(ctx context.Context) (snapshot.LSN, error)
}

// Staging is the part of the snapshot store the Service uses.
type Staging interface {
	WaitFor(ctx context.Context, lsn snapshot.LSN) error
	Pin(ctx context.Context) (*snapshot.Version, error)
	State() snapshot.State
}

// Service consumes export requests from Kafka and answers them with result
// events: it records each request durably, authorises it, fences it, gates
// it on unpaid invoices, renders and publishes the export, and announces the
// outcome exactly once.
type Service struct {
	cfg      ServiceConfig
	store    Requests
	peers    Peers // nil: this replica serves every request
	staging  Staging
	fencer   Fencer
	exporter *Exporter
	spec     *Spec
	notifier Notifier // nil: no email
	logger   *slog.Logger
	m        *serviceMetrics
	now      func() time.Time

	transport *kafka.Transport // the service's own, closed when Run ends
	results   *kafka.Writer
	dlq       *kafka.Writer
	client    *kafka.Client

	sched *scheduler
}

// NewService returns a Service. notifier and m may be nil.
func NewService(cfg ServiceConfig, store Requests, staging Staging, fencer Fencer, exporter *Exporter, spec *Spec, notifier Notifier, logger *slog.Logger, m *ServiceMetrics) (*Service, error) {
	cfg = cfg.withDefaults()
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("request service: no Kafka brokers")
	}
	if logger == nil {
		logger = slog.Default()
	}
	addr := kafka.TCP(cfg.Brokers...)
	transport := &kafka.Transport{DialTimeout: 10 * time.Second, IdleTimeout: 30 * time.Second}
	writer := func(topic string) *kafka.Writer {
		return &kafka.Writer{Addr: addr, Topic: topic, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
			BatchTimeout: 5 * time.Millisecond, MaxAttempts: 5, AllowAutoTopicCreation: false, Transport: transport}
	}
	return &Service{
		cfg: cfg, store: store, peers: cfg.Peers, staging: staging, fencer: fencer, exporter: exporter, spec: spec,
		notifier: notifier, logger: logger.With("component", "requests"), m: m.get(), now: time.Now,
		transport: transport, results: writer(cfg.ResultTopic), dlq: writer(cfg.DeadLetterTopic),
		client: &kafka.Client{Addr: addr, Timeout: 10 * time.Second, Transport: transport},
		sched:  newScheduler(),
	}, nil
}

// Run consumes requests and processes them until ctx is done. Requests left
// unfinished by an earlier run are resumed first.
func (s *Service) Run(ctx context.Context) error {
	defer s.transport.CloseIdleConnections()
	defer s.results.Close()
	defer s.dlq.Close()
	if err := s.resume(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for range s.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.worker(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watchParked(ctx)
	}()
	if s.peers != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.watchOrphans(ctx)
		}()
	}
	err := s.consume(ctx)
	s.sched.close()
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// resume queues every request that an earlier run left unfinished: with
// peers, this replica's own and those of replicas that are gone.
func (s *Service) resume() error {
	if s.peers != nil {
		recs, err := s.store.Open()
		if err != nil {
			return fmt.Errorf("resume requests: %w", err)
		}
		for _, r := range recs {
			if s.mine(r) || !s.peers.Alive(r.Owner) {
				s.logger.Info("resuming request", "request_id", r.Request.RequestID, "tenant", r.Request.TenantID, "state", r.State, "owner", r.Owner)
				s.sched.add(r.Request.RequestID, r.Request.TenantID)
			}
		}
		s.updateParked()
		return nil
	}
	for _, st := range []RequestState{StateReceived, StateAccepted, StateRendering, StateCompleted,
		StateBlockedUnpaid, StateRejected, StateFailed, StateExpired} {
		recs, err := s.store.ByState(st)
		if err != nil {
			return fmt.Errorf("resume requests: %w", err)
		}
		for _, r := range recs {
			switch st {
			case StateCompleted:
				if r.CompletedEventSent && len(r.Outbox) == 0 {
					continue
				}
			case StateBlockedUnpaid, StateRejected, StateFailed, StateExpired:
				if len(r.Outbox) == 0 {
					continue // parked ones are re-checked by watchParked
				}
			}
			s.logger.Info("resuming request", "request_id", r.Request.RequestID, "tenant", r.Request.TenantID, "state", r.State)
			s.sched.add(r.Request.RequestID, r.Request.TenantID)
		}
	}
	s.updateParked()
	return nil
}

// consume reads the request topic. A message's offset is committed only
// once its outcome is durable: recorded in the request store, or
// dead-lettered.
func (s *Service) consume(ctx context.Context) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: s.cfg.Brokers, GroupID: s.cfg.Group, Topic: s.cfg.RequestTopic,
		MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 250 * time.Millisecond,
		StartOffset: kafka.FirstOffset, CommitInterval: 0,
		HeartbeatInterval: time.Second, SessionTimeout: 10 * time.Second, RebalanceTimeout: 10 * time.Second,
		ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second,
	})
	defer r.Close()
	backoff := newBackoff(100*time.Millisecond, 10*time.Second)
	for {
		msg, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.logger.Warn("fetch request", "err", err)
			if !backoff.wait(ctx) {
				return nil
			}
			continue
		}
		backoff.reset()
		for {
			err := s.handle(ctx, msg)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			// The outcome could not be recorded: keep the message (and its
			// partition) until it can be; never commit past it.
			s.logger.Error("record request", "err", err, "partition", msg.Partition, "offset", msg.Offset)
			if !backoff.wait(ctx) {
				return nil
			}
		}
		backoff.reset()
		for {
			err := r.CommitMessages(ctx, msg)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			s.logger.Warn("commit offset", "err", err, "partition", msg.Partition, "offset", msg.Offset)
			if !backoff.wait(ctx) {
				return nil
			}
		}
	}
}

// handle records one request message: dead-lettered if malformed, else
// stored (once per request id) and scheduled.
func (s *Service) handle(ctx context.Context, msg kafka.Message) error {
	req, err := ParseRequestAt(msg.Value, s.now())
	if err == nil && len(msg.Value) > s.cfg.MaxMessageBytes {
		err = &RequestError{Reason: ReasonTooLarge, Detail: fmt.Sprintf("%d bytes, more than the %d accepted", len(msg.Value), s.cfg.MaxMessageBytes)}
	}
	if err != nil {
		rerr, ok := AsRequestError(err)
		if !ok {
			rerr = &RequestError{Reason: ReasonInvalidValue, Detail: err.Error()}
		}
		if err := s.dlq.WriteMessages(ctx, DeadLetter(msg, *rerr)); err != nil {
			return fmt.Errorf("dead-letter message: %w", err)
		}
		s.m.message("dead_lettered")
		s.m.deadLetter(rerr.Reason)
		s.logger.Warn("request dead-lettered", "reason", rerr.Reason, "detail", rerr.Detail,
			"partition", msg.Partition, "offset", msg.Offset)
		return nil
	}
	existing, created, err := s.store.Create(&RequestRecord{Request: req, State: StateReceived, CreatedAt: s.now().UTC(), Owner: s.self()})
	if err != nil {
		return err
	}
	if !created {
		s.m.message("duplicate")
		s.logger.Info("request redelivered: already known", "request_id", req.RequestID, "tenant", req.TenantID, "state", existing.State)
		if existing.Request.TenantID != req.TenantID {
			s.logger.Warn("request id reused for another tenant: ignored", "request_id", req.RequestID, "tenant", req.TenantID)
		}
		return nil
	}
	s.m.message("accepted")
	s.logger.Info("request received", "request_id", req.RequestID, "tenant", req.TenantID)
	s.sched.add(req.RequestID, req.TenantID)
	return nil
}

// worker processes scheduled requests until the scheduler closes.
func (s *Service) worker(ctx context.Context) {
	for {
		id, tenant, ok := s.sched.next(ctx)
		if !ok {
			return
		}
		s.process(ctx, id)
		s.sched.done(tenant)
	}
}

// process moves one request forward as far as it can go now.
func (s *Service) process(ctx context.Context, id string) {
	rec, ok, err := s.store.Get(id)
	if err != nil || !ok {
		s.logger.Error("load request", "request_id", id, "err", err)
		return
	}
	log := s.logger.With("request_id", id, "tenant", rec.Request.TenantID)
	if !s.mine(rec) {
		if !s.claim(log, &rec) {
			return
		}
	}
	if err := s.advance(ctx, log, &rec); err != nil {
		if ctx.Err() != nil {
			return // shutting down: the state is durable and resumes on restart
		}
		if errors.Is(err, ErrConflict) {
			log.Info("request taken over by another replica", "err", err)
			return
		}
		log.Error("process request: will retry", "err", err, "in", retryDelay)
		s.sched.addLater(id, rec.Request.TenantID, retryDelay)
	}
	s.updateParked()
}

// self is this replica's id as a request owner ("" without peers).
func (s *Service) self() string {
	if s.peers == nil {
		return ""
	}
	return s.peers.ID()
}

// mine reports whether this replica processes rec.
func (s *Service) mine(rec RequestRecord) bool {
	return s.peers == nil || rec.Owner == s.peers.ID()
}

// claim takes over rec from its owner if that replica is gone, and reports
// whether this replica now owns it.
func (s *Service) claim(log *slog.Logger, rec *RequestRecord) bool {
	if s.peers.Alive(rec.Owner) {
		return false // the owner processes it
	}
	prev := rec.Owner
	rec.Owner = s.peers.ID()
	if err := s.store.Put(rec); err != nil {
		if !errors.Is(err, ErrConflict) {
			log.Warn("take over request", "err", err, "owner", prev)
		}
		return false
	}
	s.m.takeover()
	log.Info("took over the request of a replica that is gone", "owner", prev, "state", rec.State)
	return true
}

// watchOrphans looks, every ClaimInterval, for unfinished requests whose
// owner is gone, and queues them: process takes them over.
func (s *Service) watchOrphans(ctx context.Context) {
	t := time.NewTicker(s.cfg.ClaimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		recs, err := s.store.Open()
		if err != nil {
			s.logger.Warn("list unfinished requests", "err", err)
			continue
		}
		for _, r := range recs {
			if !s.mine(r) && !s.peers.Alive(r.Owner) {
				s.sched.add(r.Request.RequestID, r.Request.TenantID)
			}
		}
	}
}

// retryDelay is how long a request whose processing hit an error (the
// request store, the brokers, staging) waits before it is tried again.
const retryDelay = 5 * time.Second

// failure is a reason to fail a request, with whether a retry can help.
type failure struct {
	reason    string
	retryable bool
	err       error
}

func (f *failure) Error() string { return f.reason + ": " + f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

func (s *Service) advance(ctx context.Context, log *slog.Logger, rec *RequestRecord) error {
	if err := s.flushOutbox(ctx, rec); err != nil {
		return err
	}
	switch rec.State {
	case StateReceived:
		v, err := s.fence(ctx, log, rec)
		if err != nil {
			return s.fail(ctx, rec, err)
		}
		defer v.Close()
		if reason := s.authorise(ctx, v, rec.Request); reason != "" {
			rec.State, rec.Reason = StateRejected, reason
			s.m.outcome(string(StateRejected))
			log.Warn("request rejected", "reason", reason)
			return s.transition(ctx, rec, s.event(rec, EventRejected, func(e *Event) { e.Reason = reason }))
		}
		rec.State = StateAccepted
		log.Info("request accepted", "fence", rec.Fence)
		if err := s.transition(ctx, rec, s.event(rec, EventAccepted, nil)); err != nil {
			return err
		}
		return s.gateAndRender(ctx, log, rec, v)
	case StateAccepted, StateBlockedUnpaid, StateRendering:
		v, err := s.staging.Pin(ctx)
		if err != nil {
			return err
		}
		defer v.Close()
		return s.gateAndRender(ctx, log, rec, v)
	case StateCompleted:
		return s.announceCompleted(ctx, log, rec)
	}
	return nil
}

// fence reads production's WAL position, records it, and waits until
// staging has reached it; it returns a version at or past the fence.
func (s *Service) fence(ctx context.Context, log *slog.Logger, rec *RequestRecord) (*snapshot.Version, error) {
	var fence snapshot.LSN
	if rec.Fence != "" {
		l, err := snapshot.ParseLSN(rec.Fence)
		if err != nil {
			return nil, &failure{"internal_error", false, err}
		}
		fence = l
	} else {
		l, err := s.fencer.CurrentLSN(ctx)
		if err != nil {
			return nil, &failure{"production_unreachable", true, fmt.Errorf("read production WAL position: %w", err)}
		}
		fence = l
		rec.Fence = l.String()
		if err := s.store.Put(rec); err != nil {
			return nil, err
		}
	}
	start := s.now()
	wctx, cancel := context.WithTimeout(ctx, s.cfg.FenceTimeout)
	defer cancel()
	if err := s.staging.WaitFor(wctx, fence); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &failure{"staging_behind", true, fmt.Errorf("staging did not reach %s within %s (at %s)", fence, s.cfg.FenceTimeout, s.staging.State().LSN)}
	}
	s.m.fenceWait(s.now().Sub(start))
	v, err := s.staging.Pin(ctx)
	if err != nil {
		return nil, err
	}
	log.Debug("fence reached", "fence", fence, "lsn", v.LSN())
	return v, nil
}

// authorise returns why the request must be rejected, or "".
func (s *Service) authorise(ctx context.Context, v *snapshot.Version, req Request) string {
	plan, err := s.spec.Resolve(v.Tables())
	if err != nil {
		return "spec_invalid"
	}
	rp := plan.Requesters
	if rp == nil {
		return "" // the spec does not restrict requesters
	}
	rows, err := v.Scan(ctx, rp.Table, req.TenantID)
	if err != nil {
		return "unknown_tenant"
	}
	defer rows.Close()
	any := false
	want := []byte(req.RequestedBy)
	for rows.Next() {
		any = true
		row := rows.Row()
		if !bytes.Equal(row[rp.ID], want) {
			continue
		}
		if !rp.Allowed.Match(row) {
			return "requester_not_admin"
		}
		return ""
	}
	if rows.Err() != nil {
		return "internal_error"
	}
	if !any {
		return "unknown_tenant"
	}
	return "requester_not_in_tenant"
}

// gateAndRender parks the request while the tenant has outstanding invoices
// in v, and otherwise renders and publishes the export.
func (s *Service) gateAndRender(ctx context.Context, log *slog.Logger, rec *RequestRecord, v *snapshot.Version) error {
	invoices, err := s.outstanding(ctx, v, rec.Request.TenantID)
	if err != nil {
		return err
	}
	if len(invoices) > 0 {
		if s.now().Sub(rec.CreatedAt) > s.cfg.ParkExpiry {
			return s.expire(ctx, log, rec)
		}
		if rec.State == StateBlockedUnpaid {
			return nil // still blocked
		}
		rec.State, rec.Reason = StateBlockedUnpaid, "outstanding_invoices"
		log.Info("request blocked by unpaid invoices", "invoices", strings.Join(invoices, ","))
		ev := s.event(rec, EventBlockedUnpaid, func(e *Event) { e.Reason = "outstanding_invoices"; e.OutstandingInvoices = invoices })
		if err := s.transition(ctx, rec, ev); err != nil {
			return err
		}
		s.notify(ctx, log, rec, ev)
		return nil
	}
	if rec.State == StateBlockedUnpaid {
		log.Info("invoices settled: export proceeds")
	}
	rec.State, rec.Reason = StateRendering, ""
	rec.Attempts++
	rec.Fence = maxLSN(rec.Fence, v.LSN())
	if err := s.store.Put(rec); err != nil {
		return err
	}
	start := s.now()
	m, err := s.exporter.Export(ctx, v, rec.Request.TenantID, rec.Request.RequestID)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.m.export("error", s.now().Sub(start))
		if rec.Attempts < s.cfg.Attempts {
			log.Warn("export failed: will retry", "err", err, "attempt", rec.Attempts)
			s.sched.addLater(rec.Request.RequestID, rec.Request.TenantID, time.Duration(rec.Attempts)*2*time.Second)
			return nil
		}
		return s.fail(ctx, rec, &failure{"export_failed", true, err})
	}
	s.m.export("completed", s.now().Sub(start))
	ev := s.event(rec, EventCompleted, func(e *Event) {
		e.MasterURL = m.Master.URL
		exp := m.Master.ExpiresAt
		e.ExpiresAt = &exp
		for _, p := range m.Parts {
			e.Parts = append(e.Parts, PartSummary{Part: p.Part, FileName: p.FileName, SizeBytes: p.SizeBytes, SHA256: p.SHA256, FileCount: p.FileCount})
		}
		e.Rows = m.Rows
		e.MissingFiles = m.MissingFiles()
		e.LSN = m.LSN
	})
	rec.State, rec.Result = StateCompleted, &ev
	if err := s.store.Put(rec); err != nil {
		return err
	}
	return s.announceCompleted(ctx, log, rec)
}

// announceCompleted publishes the completed event of rec exactly once.
// Before publishing, the results topic's end offsets are recorded; if a
// crash hits between publishing and recording that it was published, the
// next run finds the event after those offsets and does not publish again.
func (s *Service) announceCompleted(ctx context.Context, log *slog.Logger, rec *RequestRecord) error {
	if rec.CompletedEventSent || rec.Result == nil {
		return nil
	}
	if rec.ResultOffsets != nil {
		found, err := s.findEvent(ctx, rec.ResultOffsets, rec.Request.RequestID, EventCompleted)
		if err != nil {
			return err
		}
		if found {
			log.Info("completed event was already published")
			rec.CompletedEventSent = true
			return s.store.Put(rec)
		}
	} else {
		offs, err := s.endOffsets(ctx)
		if err != nil {
			return err
		}
		rec.ResultOffsets = offs
		if err := s.store.Put(rec); err != nil {
			return err
		}
	}
	if err := s.publishCompleted(ctx, *rec.Result); err != nil {
		return err
	}
	rec.CompletedEventSent = true
	if err := s.store.Put(rec); err != nil {
		return err
	}
	s.m.outcome(string(StateCompleted))
	log.Info("export completed", "master_url_expires", rec.Result.ExpiresAt, "missing_files", rec.Result.MissingFiles)
	s.notify(ctx, log, rec, *rec.Result)
	return nil
}

// publishCompleted publishes a completed event. With peers, only while
// this replica's lease holds for PublishMargin, and within it: a replica
// that takes over the request later (looking for the event after
// ResultOffsets) must find it if it was published.
func (s *Service) publishCompleted(ctx context.Context, ev Event) error {
	if s.peers == nil {
		return s.publish(ctx, ev)
	}
	if !s.peers.Lease(s.cfg.PublishMargin) {
		return errors.New("publish completed event: this replica's lease is about to lapse")
	}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.PublishMargin/2)
	defer cancel()
	return s.publish(pctx, ev)
}

// transition records rec's new state together with its event in the
// record's outbox, then publishes the event. An event whose publication a
// crash or an error interrupted stays in the outbox and is published when
// the request is next processed (at least once; completed events use
// announceCompleted, exactly once).
func (s *Service) transition(ctx context.Context, rec *RequestRecord, ev Event) error {
	rec.Outbox = append(rec.Outbox, ev)
	if err := s.store.Put(rec); err != nil {
		return err
	}
	return s.flushOutbox(ctx, rec)
}

// flushOutbox publishes rec's pending events and clears them.
func (s *Service) flushOutbox(ctx context.Context, rec *RequestRecord) error {
	if len(rec.Outbox) == 0 {
		return nil
	}
	for _, ev := range rec.Outbox {
		if err := s.publish(ctx, ev); err != nil {
			return err
		}
	}
	rec.Outbox = nil
	return s.store.Put(rec)
}

// fail records the request as failed and announces it.
func (s *Service) fail(ctx context.Context, rec *RequestRecord, err error) error {
	var f *failure
	if !errors.As(err, &f) {
		return err // not a request failure: retried on the next run
	}
	rec.State, rec.Reason, rec.Retryable = StateFailed, f.reason, f.retryable
	s.m.outcome(string(StateFailed))
	s.logger.Warn("request failed", "request_id", rec.Request.RequestID, "tenant", rec.Request.TenantID, "reason", f.reason, "err", f.err)
	retry := f.retryable
	return s.transition(ctx, rec, s.event(rec, EventFailed, func(e *Event) { e.Reason = f.reason; e.Retryable = &retry }))
}

// expire ends a request parked too long.
func (s *Service) expire(ctx context.Context, log *slog.Logger, rec *RequestRecord) error {
	rec.State, rec.Reason = StateExpired, "parked_too_long"
	s.m.outcome(string(StateExpired))
	log.Info("parked request expired", "parked_since", rec.CreatedAt)
	return s.transition(ctx, rec, s.event(rec, EventExpired, func(e *Event) { e.Reason = "parked_too_long" }))
}

// outstanding lists the ids of the tenant's outstanding invoices in v.
func (s *Service) outstanding(ctx context.Context, v *snapshot.Version, tenant string) ([]string, error) {
	plan, err := s.spec.Resolve(v.Tables())
	if err != nil {
		return nil, fmt.Errorf("resolve spec: %w", err)
	}
	ip := plan.Invoices
	if ip == nil {
		return nil, nil
	}
	ts, _ := v.Table(ip.Table)
	var idCols []int
	for _, k := range ts.KeyColumns {
		if k != ip.TenantColumn {
			idCols = append(idCols, k)
		}
	}
	rows, err := v.Scan(ctx, ip.Table, tenant)
	if err != nil {
		return nil, fmt.Errorf("scan invoices: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		row := rows.Row()
		if !ip.Outstanding(row) {
			continue
		}
		parts := make([]string, len(idCols))
		for i, c := range idCols {
			parts[i] = string(row[c])
		}
		out = append(out, strings.Join(parts, "/"))
	}
	return out, rows.Err()
}

// watchParked re-evaluates parked requests whenever staging has moved, at
// most every RecheckInterval: the invoices are read from the snapshot, never
// from production.
func (s *Service) watchParked(ctx context.Context) {
	t := time.NewTicker(s.cfg.RecheckInterval)
	defer t.Stop()
	var last snapshot.LSN
	var lastExpiry time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lsn := s.staging.State().LSN
		if lsn == last && s.now().Sub(lastExpiry) < time.Minute {
			continue
		}
		last, lastExpiry = lsn, s.now()
		recs, err := s.store.ByState(StateBlockedUnpaid)
		if err != nil {
			s.logger.Error("list parked requests", "err", err)
			continue
		}
		for _, r := range recs {
			if s.mine(r) {
				s.sched.add(r.Request.RequestID, r.Request.TenantID)
			}
		}
		s.updateParked()
	}
}

func (s *Service) updateParked() {
	recs, err := s.store.ByState(StateBlockedUnpaid)
	if err != nil {
		return
	}
	var oldest time.Duration
	n := 0
	for _, r := range recs {
		if s.mine(r) {
			oldest = max(oldest, s.now().Sub(r.CreatedAt))
			n++
		}
	}
	s.m.parked(n, oldest)
}

// event builds an event about rec.
func (s *Service) event(rec *RequestRecord, typ string, fill func(*Event)) Event {
	e := Event{Version: EventVersion, Type: typ, RequestID: rec.Request.RequestID, TenantID: rec.Request.TenantID, At: s.now().UTC()}
	if fill != nil {
		fill(&e)
	}
	return e
}

// publish writes one result event and waits for the brokers to have it.
func (s *Service) publish(ctx context.Context, e Event) error {
	msg, err := e.Message()
	if err != nil {
		return err
	}
	if err := s.results.WriteMessages(ctx, msg); err != nil {
		return fmt.Errorf("publish %s event: %w", e.Type, err)
	}
	s.m.event(e.Type)
	return nil
}

func (s *Service) notify(ctx context.Context, log *slog.Logger, rec *RequestRecord, ev Event) {
	if s.notifier == nil || rec.Request.NotifyEmail == "" {
		return
	}
	if err := s.notifier.Notify(ctx, rec.Request.NotifyEmail, ev); err != nil {
		log.Warn("email notification", "err", err, "event", ev.Type)
		s.m.email("error")
		return
	}
	s.m.email("sent")
}

// endOffsets returns the end offset of every partition of the results topic.
func (s *Service) endOffsets(ctx context.Context) (map[int]int64, error) {
	md, err := s.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{s.cfg.ResultTopic}})
	if err != nil {
		return nil, fmt.Errorf("results topic metadata: %w", err)
	}
	if len(md.Topics) != 1 || md.Topics[0].Error != nil {
		return nil, fmt.Errorf("results topic metadata: %v", md.Topics)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range md.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	resp, err := s.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{s.cfg.ResultTopic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("results topic offsets: %w", err)
	}
	out := map[int]int64{}
	for _, po := range resp.Topics[s.cfg.ResultTopic] {
		if po.Error != nil {
			return nil, fmt.Errorf("results topic offsets: partition %d: %w", po.Partition, po.Error)
		}
		out[po.Partition] = po.LastOffset
	}
	return out, nil
}

// findEvent reports whether an event of typ for request id was published on
// the results topic at or after the given offsets.
func (s *Service) findEvent(ctx context.Context, from map[int]int64, id, typ string) (bool, error) {
	end, err := s.endOffsets(ctx)
	if err != nil {
		return false, err
	}
	for p, off := range from {
		if end[p] <= off {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: s.cfg.Brokers, Topic: s.cfg.ResultTopic, Partition: p, MaxWait: 250 * time.Millisecond})
		if err := r.SetOffset(off); err != nil {
			r.Close()
			return false, err
		}
		for off < end[p] {
			msg, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				return false, fmt.Errorf("read results topic: %w", err)
			}
			off = msg.Offset + 1
			if t, _ := headerValue(msg, HeaderEventType); t == typ && bytes.Contains(msg.Value, []byte(`"request_id":"`+id+`"`)) {
				r.Close()
				return true, nil
			}
		}
		r.Close()
	}
	return false, nil
}

func headerValue(m kafka.Message, key string) (string, bool) {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

func maxLSN(fence string, l snapshot.LSN) string {
	if f, err := snapshot.ParseLSN(fence); err == nil && f > l {
		return fence
	}
	return l.String()
}

// scheduler hands requests to workers: oldest first, at most one export per
// tenant at a time, each request queued at most once.
type scheduler struct {
	mu      sync.Mutex
	queue   []schedItem
	queued  map[string]bool
	active  map[string]bool // tenants being processed
	wake    chan struct{}
	closed  bool
	timers  []*time.Timer
	closing chan struct{}
}

type schedItem struct{ id, tenant string }

func newScheduler() *scheduler {
	return &scheduler{queued: map[string]bool{}, active: map[string]bool{}, wake: make(chan struct{}, 1), closing: make(chan struct{})}
}

func (q *scheduler) add(id, tenant string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.queued[id] {
		return
	}
	q.queued[id] = true
	q.queue = append(q.queue, schedItem{id, tenant})
	q.signal()
}

func (q *scheduler) addLater(id, tenant string, d time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.timers = append(q.timers, time.AfterFunc(d, func() { q.add(id, tenant) }))
}

func (q *scheduler) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// next waits for a request whose tenant is idle.
func (q *scheduler) next(ctx context.Context) (id, tenant string, ok bool) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return "", "", false
		}
		for i, it := range q.queue {
			if q.active[it.tenant] {
				continue
			}
			q.queue = slices.Delete(q.queue, i, i+1)
			delete(q.queued, it.id)
			q.active[it.tenant] = true
			if len(q.queue) > 0 {
				q.signal() // another worker may find work too
			}
			q.mu.Unlock()
			return it.id, it.tenant, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-q.closing:
		case <-ctx.Done():
			return "", "", false
		}
	}
}

func (q *scheduler) done(tenant string) {
	q.mu.Lock()
	delete(q.active, tenant)
	q.signal()
	q.mu.Unlock()
}

func (q *scheduler) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.closed = true
	for _, t := range q.timers {
		t.Stop()
	}
	close(q.closing)
}

// backoff is a capped exponential backoff.
type backoff struct{ min, max, cur time.Duration }

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, cur: min} }

func (b *backoff) reset() { b.cur = b.min }

// wait sleeps for the current interval and doubles it; false if ctx ended.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	b.cur = min(b.cur*2, b.max)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
