// Package cluster tells exportd replicas that share a bucket which of them
// are alive. It owns the heartbeat objects under its key prefix
// ("members/" by default): each replica writes its own,
// <prefix><id>.json, every Interval, and reads the others'.
//
// No clock synchronisation is assumed. A replica never compares its clock
// with another's, nor with the store's: it judges another replica by
// whether that replica's heartbeat content changes (every heartbeat has a
// new sequence number), timed with its own monotonic clock. A replica
// whose heartbeat this process has watched stay the same for TTL is dead.
//
// The judgement is conservative: a replica is declared dead only on a read
// that started at least TTL after the read that first saw its current
// heartbeat, so while this process cannot read the store, or does not run,
// the others stay alive in its view. With the lease (Members.Lease) this
// gives mutual exclusion in time: a replica acts only while its own last
// heartbeat write started less than TTL-margin ago, another takes over only
// after seeing TTL of silence, and the two intervals cannot overlap (both
// measured by their own monotonic clocks, whose rates are assumed equal).
// If a replica's writes fail or are slow for TTL, its lease lapses and it
// starts a new incarnation, as if it had restarted, since the others may
// have declared it dead meanwhile. A new incarnation, like a new process,
// holds the lease from its first write: before it resumes a role that
// another replica may have taken over (such as being the only writer), it
// must find out, for instance by watching for TTL. Incarnation tells when
// it changed.
//
// Heartbeat objects are not deleted, not even when Run ends: a replica
// that restarts keeps its id and its object.
package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/exportd/exportd/storage"
)

// Defaults of Config.
const (
	DefaultPrefix   = "members/"
	DefaultInterval = time.Second
	DefaultTTL      = 5 * time.Second
)

// heartbeatSuffix ends the keys of heartbeat objects.
const heartbeatSuffix = ".json"

// maxHeartbeatSize bounds the heartbeat objects read: a larger object under
// the prefix is not a heartbeat.
const maxHeartbeatSize = 64 << 10

// Store is what Members needs of a storage store; storage.FS and
// storage.S3 satisfy it.
type Store interface {
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error
}

var (
	_ Store = (*storage.FS)(nil)
	_ Store = (*storage.S3)(nil)
)

// Config configures Members.
type Config struct {
	// ID is this replica's id, such as its pod's name: a non-empty key
	// segment (no '/'). Required.
	ID string
	// Prefix starts the keys of the heartbeat objects; "" means
	// DefaultPrefix.
	Prefix string
	// Interval is the period of heartbeat writes and of reads of the
	// others' heartbeats; 0 means DefaultInterval.
	Interval time.Duration
	// TTL is how long a replica's heartbeat must stay unchanged for it to
	// be dead; 0 means DefaultTTL. It must be more than 2*Interval.
	TTL time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	switch {
	case c.ID == "":
		return c, errors.New("no replica id")
	case strings.Contains(c.ID, "/"):
		return c, fmt.Errorf("replica id %q: contains '/'", c.ID)
	case c.Interval < 0:
		return c, fmt.Errorf("interval %v: negative", c.Interval)
	case c.TTL <= 2*c.Interval:
		return c, fmt.Errorf("TTL %v: not more than twice the interval %v", c.TTL, c.Interval)
	}
	if err := storage.ValidateKey(c.Prefix + c.ID + heartbeatSuffix); err != nil {
		return c, fmt.Errorf("prefix %q and replica id %q: %w", c.Prefix, c.ID, err)
	}
	return c, nil
}

// Member is a replica as this process sees it.
type Member struct {
	ID string
	// Self is true for this replica.
	Self bool
	// Incarnation is random per process start, and changes when a
	// replica's lease lapses; Seq numbers its heartbeats. They are those of
	// the last heartbeat read, or, for this replica, written (Seq 0: none).
	Incarnation string
	Seq         uint64
	// Alive is Members.Alive(ID).
	Alive bool
	// LastChange is how long ago this process first read the member's
	// current heartbeat; for this replica, how long ago its last
	// successful heartbeat write started (or, if none did, New was
	// called).
	LastChange time.Duration
	// Info is what the member publishes (see Members.SetInfo).
	Info map[string]string
}

// heartbeat is the content of a heartbeat object.
type heartbeat struct {
	ID          string            `json:"id"`
	Incarnation string            `json:"incarnation"`
	Seq         uint64            `json:"seq"`
	Info        map[string]string `json:"info"`
}

// peer is what this process knows of another replica.
type peer struct {
	content []byte
	hb      heartbeat // content parsed
	// changedAt is when the read that first returned content ended;
	// checkedAt is when the latest read that returned content, or found no
	// object, started.
	changedAt time.Time
	checkedAt time.Time
	alive     bool // as last reported in the log
}

// Members keeps this replica's heartbeat and watches the others'. Its
// methods are safe for concurrent use.
type Members struct {
	store   Store
	cfg     Config
	log     *slog.Logger
	created time.Time

	running  atomic.Bool
	failures prometheus.Counter

	mu          sync.Mutex
	incarnation string
	seq         uint64 // of the last heartbeat attempted
	info        map[string]string
	// incarnations are this process's, current and past.
	incarnations map[string]bool
	written      heartbeat // the last heartbeat written
	// writtenAt and writtenEnd are when its write started and ended;
	// zero: none yet.
	writtenAt  time.Time
	writtenEnd time.Time
	// leaseFrom is when the write that last renewed the lease started;
	// zero: no write of this incarnation succeeded yet.
	leaseFrom time.Time
	// watchFrom and listedAt are when the first and the latest successful
	// listings of the heartbeats started.
	watchFrom time.Time
	listedAt  time.Time
	peers     map[string]*peer
}

// New checks cfg and returns the Members of replica cfg.ID in store. Call
// Run to take part. reg may be nil.
func New(store Store, cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Members, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("cluster config: %w", err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	m := &Members{
		store:        store,
		cfg:          cfg,
		log:          logger.With("component", "cluster", "replica", cfg.ID),
		created:      time.Now(),
		incarnation:  newIncarnation(),
		incarnations: map[string]bool{},
		info:         map[string]string{},
		peers:        map[string]*peer{},
	}
	m.incarnations[m.incarnation] = true
	f := promauto.With(reg)
	m.failures = f.NewCounter(prometheus.CounterOpts{
		Name: "exportd_cluster_heartbeat_failures_total", Help: "Heartbeat writes of this replica that failed.",
	})
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "exportd_cluster_members_alive", Help: "Replicas this replica judges alive, itself included.",
	}, func() float64 { return float64(m.countAlive()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "exportd_cluster_heartbeat_age_seconds",
		Help: "Time since this replica's last successful heartbeat write started (since start if none did).",
	}, func() float64 { return m.heartbeatAge(time.Now()).Seconds() })
	return m, nil
}

func newIncarnation() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

// ID returns this replica's id.
func (m *Members) ID() string { return m.cfg.ID }

// Incarnation returns this replica's current incarnation: random per
// process start, and new after each lapse of the lease.
func (m *Members) Incarnation() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.incarnation
}

// SetInfo sets a key/value pair published in this replica's heartbeat
// from the next write on (e.g. "role": "writer").
func (m *Members) SetInfo(key, value string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.info[key] = value
}

// Run writes this replica's heartbeat every Interval and reads the
// others', until ctx ends, then returns nil. Failed writes and reads are
// logged and retried at the next tick; each gets at most TTL. Run does not
// delete the heartbeat when it ends. Run may be called again after it
// returns, but not while it runs.
func (m *Members) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("run cluster membership: already running")
	}
	defer m.running.Store(false)
	m.mu.Lock()
	m.log.Info("cluster membership started", "incarnation", m.incarnation,
		"interval", m.cfg.Interval, "ttl", m.cfg.TTL, "prefix", m.cfg.Prefix)
	m.mu.Unlock()
	var wg sync.WaitGroup
	// Writes apart from reads, so that slow reads of many heartbeats do not
	// delay this replica's own.
	wg.Go(func() { m.every(ctx, m.beat) })
	wg.Go(func() { m.every(ctx, m.watch) })
	wg.Wait()
	m.log.Info("cluster membership stopped")
	return nil
}

// every calls round at once, then every Interval until ctx ends. round
// returns whether it succeeded; the first of a run of failures is logged
// at Warn, the others at Debug, and the recovery at Info.
func (m *Members) every(ctx context.Context, round func(context.Context) error) {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	failing := 0
	for {
		err := round(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && failing == 0:
			m.log.Warn("cluster heartbeat round; retrying", "err", err)
			failing++
		case err != nil:
			m.log.Debug("cluster heartbeat round; retrying", "err", err, "failures", failing)
			failing++
		case failing > 0:
			m.log.Info("cluster heartbeat round succeeded again", "failures", failing)
			failing = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// key returns the key of replica id's heartbeat.
func (m *Members) key(id string) string { return m.cfg.Prefix + id + heartbeatSuffix }

// idOf returns the replica id of a heartbeat's key.
func (m *Members) idOf(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, m.cfg.Prefix)
	if !ok {
		return "", false
	}
	id, ok := strings.CutSuffix(rest, heartbeatSuffix)
	if !ok || id == "" || strings.Contains(id, "/") {
		return "", false
	}
	return id, true
}

// beat writes this replica's next heartbeat.
func (m *Members) beat(ctx context.Context) error {
	hb := m.nextHeartbeat(time.Now())
	data, err := json.Marshal(hb)
	if err != nil {
		return fmt.Errorf("write heartbeat: %w", err)
	}
	putCtx, cancel := context.WithTimeout(ctx, m.cfg.TTL)
	defer cancel()
	start := time.Now()
	_, err = m.store.Put(putCtx, m.key(m.cfg.ID), bytes.NewReader(data))
	end := time.Now()
	if err != nil {
		if ctx.Err() == nil { // not stopping
			m.failures.Inc()
		}
		return fmt.Errorf("write heartbeat: %w", err)
	}
	m.wrote(hb, start, end)
	return nil
}

// nextHeartbeat returns the heartbeat to write at now, starting a new
// incarnation first if the lease has lapsed.
func (m *Members) nextHeartbeat(now time.Time) heartbeat {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leaseFrom.IsZero() && now.Sub(m.leaseFrom) >= m.cfg.TTL {
		old, renewed := m.incarnation, m.leaseFrom
		m.incarnation = newIncarnation()
		m.incarnations[m.incarnation] = true
		m.leaseFrom = time.Time{}
		m.log.Warn("heartbeat lease lapsed: the other replicas may have judged this one dead; starting a new incarnation",
			"renewed_ago", now.Sub(renewed), "old_incarnation", old, "incarnation", m.incarnation)
	}
	m.seq++
	return heartbeat{ID: m.cfg.ID, Incarnation: m.incarnation, Seq: m.seq, Info: maps.Clone(m.info)}
}

// wrote records the write of hb, which started at start and succeeded at
// end. The write renews the lease from start if it is the first of its
// incarnation or if it succeeded while the lease held: a write that
// succeeds after the lease ran out may have become visible after another
// replica saw TTL of silence, so the next heartbeat starts a new
// incarnation instead.
func (m *Members) wrote(hb heartbeat, start, end time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.written, m.writtenAt, m.writtenEnd = hb, start, end
	if hb.Incarnation != m.incarnation {
		return
	}
	if m.leaseFrom.IsZero() || end.Sub(m.leaseFrom) < m.cfg.TTL {
		m.leaseFrom = start
	}
}

// watch reads the other replicas' heartbeats.
func (m *Members) watch(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.TTL)
	defer cancel()
	start := time.Now()
	var ids []string
	self := false
	err := m.store.List(ctx, m.cfg.Prefix, func(o storage.ObjectInfo) error {
		switch id, ok := m.idOf(o.Key); {
		case !ok:
		case id == m.cfg.ID:
			self = true
		default:
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read heartbeats: %w", err)
	}
	m.listed(ids, start)
	var errs []error
	if self {
		start := time.Now()
		data, err := m.read(ctx, m.cfg.ID)
		switch {
		case err == nil:
			m.checkSelf(data, start)
		case !errors.Is(err, storage.ErrNotExist):
			errs = append(errs, err)
		}
	}
	for _, id := range ids {
		start := time.Now()
		data, err := m.read(ctx, id)
		end := time.Now()
		switch {
		case errors.Is(err, storage.ErrNotExist):
			m.missing(id, start)
		case err != nil:
			errs = append(errs, err)
		default:
			m.observe(id, data, start, end)
		}
	}
	m.report()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("read heartbeats: %w", err)
	}
	return nil
}

// read reads replica id's heartbeat.
func (m *Members) read(ctx context.Context, id string) (_ []byte, err error) {
	rc, err := m.store.Get(ctx, m.key(id))
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, rc.Close()) }()
	data, err := io.ReadAll(io.LimitReader(rc, maxHeartbeatSize+1))
	if err != nil {
		return nil, fmt.Errorf("read heartbeat of %q: %w", id, err)
	}
	if len(data) > maxHeartbeatSize {
		return nil, fmt.Errorf("read heartbeat of %q: larger than %d bytes", id, maxHeartbeatSize)
	}
	return data, nil
}

// checkSelf checks a read, started at start, of this replica's own
// heartbeat, data: after a write of this process, anything but a heartbeat
// of this process means that another process writes heartbeats with this
// replica's id, and that both believe they hold the lease.
func (m *Members) checkSelf(data []byte, start time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.writtenEnd.IsZero() || !m.writtenEnd.Before(start) {
		return // the object may be a previous process's
	}
	var hb heartbeat
	err := json.Unmarshal(data, &hb)
	if err == nil && m.incarnations[hb.Incarnation] {
		return
	}
	m.log.Error("another process writes this replica's heartbeat: give every replica an id of its own",
		"other_incarnation", hb.Incarnation, "incarnation", m.incarnation, "err", err)
}

// listed records a listing, started at start, that found the heartbeats
// of ids: the known replicas not among them have no new heartbeat.
func (m *Members) listed(ids []string, start time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.watchFrom.IsZero() {
		m.watchFrom = start
	}
	m.listedAt = start
	for id, p := range m.peers {
		if !slices.Contains(ids, id) {
			p.checkedAt = start
		}
	}
}

// missing records a read, started at start, that found no heartbeat of id.
func (m *Members) missing(id string, start time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.peers[id]; ok {
		p.checkedAt = start
	}
}

// observe records a read of replica id's heartbeat, data, that started at
// start and ended at end.
func (m *Members) observe(id string, data []byte, start, end time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.peers[id]
	if ok && bytes.Equal(p.content, data) {
		p.checkedAt = start
		return
	}
	if !ok {
		p = &peer{alive: true}
		m.peers[id] = p
	}
	p.content, p.changedAt, p.checkedAt = data, end, start
	var hb heartbeat
	if err := json.Unmarshal(data, &hb); err != nil || hb.ID != id {
		// Still a change: something writes there.
		m.log.Warn("heartbeat object does not hold a heartbeat of its replica", "member", id, "err", err, "id", hb.ID)
		return
	}
	if ok && p.hb.Incarnation != "" && p.hb.Incarnation != hb.Incarnation {
		m.log.Info("replica has a new incarnation", "member", id, "old_incarnation", p.hb.Incarnation, "incarnation", hb.Incarnation)
	}
	p.hb = hb
}

// report logs the replicas that died or came alive since the last report.
func (m *Members) report() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, p := range m.peers {
		alive := m.aliveLocked(id)
		if alive == p.alive {
			continue
		}
		p.alive = alive
		if alive {
			m.log.Info("replica alive", "member", id, "incarnation", p.hb.Incarnation)
		} else {
			m.log.Info("replica dead: its heartbeat has not changed for the TTL", "member", id,
				"incarnation", p.hb.Incarnation, "ttl", m.cfg.TTL)
		}
	}
}

// Alive reports whether replica id is alive. Another replica is alive
// unless this process has read its current heartbeat (or no heartbeat)
// at least TTL after the read that first returned that heartbeat. A
// replica not seen is alive until this process has listed the heartbeats
// for TTL without finding it, so that a replica just started does not
// judge every other dead. This replica is alive while Lease(0) holds.
func (m *Members) Alive(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.aliveLocked(id)
}

func (m *Members) aliveLocked(id string) bool {
	if id == m.cfg.ID {
		return m.leaseLocked(0, time.Now())
	}
	if p, ok := m.peers[id]; ok {
		return p.checkedAt.Sub(p.changedAt) < m.cfg.TTL
	}
	return m.watchFrom.IsZero() || m.listedAt.Sub(m.watchFrom) < m.cfg.TTL
}

// Lease reports whether this replica's lease holds with margin to spare:
// whether the heartbeat write that last renewed it started less than
// TTL-margin ago. A replica may act on the lease (e.g. publish a result
// only one replica may publish) only while Lease(margin) holds, with
// margin longer than the action takes (its timeout); the others judge it
// dead, and take over, only after TTL of silence, so the two never
// overlap. A lapsed lease is renewed only by a heartbeat of a new
// incarnation (see the package doc), which the others see as a restart.
func (m *Members) Lease(margin time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leaseLocked(margin, time.Now())
}

func (m *Members) leaseLocked(margin time.Duration, now time.Time) bool {
	return !m.leaseFrom.IsZero() && now.Sub(m.leaseFrom) < m.cfg.TTL-margin
}

// Members lists the replicas this process has seen, itself first, then
// the others by id, for the status API.
func (m *Members) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	self := Member{
		ID:          m.cfg.ID,
		Self:        true,
		Incarnation: m.incarnation,
		Seq:         m.written.Seq,
		Alive:       m.leaseLocked(0, now),
		LastChange:  m.heartbeatAgeLocked(now),
		Info:        maps.Clone(m.info),
	}
	if m.written.Incarnation != m.incarnation {
		self.Seq = 0 // none of this incarnation yet
	}
	list := []Member{self}
	for _, id := range slices.Sorted(maps.Keys(m.peers)) {
		p := m.peers[id]
		list = append(list, Member{
			ID:          id,
			Incarnation: p.hb.Incarnation,
			Seq:         p.hb.Seq,
			Alive:       m.aliveLocked(id),
			LastChange:  now.Sub(p.changedAt),
			Info:        maps.Clone(p.hb.Info),
		})
	}
	return list
}

// WaitDead blocks until replica id is not Alive, polling every Interval,
// or until ctx ends.
func (m *Members) WaitDead(ctx context.Context, id string) error {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for m.Alive(id) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for replica %q to die: %w", id, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func (m *Members) countAlive() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	if m.leaseLocked(0, time.Now()) {
		n++
	}
	for id := range m.peers {
		if m.aliveLocked(id) {
			n++
		}
	}
	return n
}

func (m *Members) heartbeatAge(now time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.heartbeatAgeLocked(now)
}

func (m *Members) heartbeatAgeLocked(now time.Time) time.Duration {
	if m.writtenAt.IsZero() {
		return now.Sub(m.created)
	}
	return now.Sub(m.writtenAt)
}
