package cluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/exportd/exportd/internal/s3test"
	"github.com/exportd/exportd/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	interval = 50 * time.Millisecond
	ttl      = 300 * time.Millisecond
	// waitFor bounds the waits for conditions: generous, for a loaded
	// machine; the waits end as soon as the condition holds.
	waitFor = 20 * time.Second
	tick    = 5 * time.Millisecond
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newFS(t *testing.T) *storage.FS {
	t.Helper()
	s, err := storage.NewFS(t.TempDir())
	require.NoError(t, err)
	return s
}

func newS3(t *testing.T) *storage.S3 {
	t.Helper()
	srv := s3test.Start(t)
	s, err := storage.NewS3(t.Context(), srv.S3Config("cluster"), testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// forEachStore runs test on an empty FS and an empty S3 store
// (versitygw).
func forEachStore(t *testing.T, test func(t *testing.T, store Store)) {
	t.Run("FS", func(t *testing.T) { test(t, newFS(t)) })
	t.Run("S3", func(t *testing.T) { test(t, newS3(t)) })
}

func newMembers(t *testing.T, store Store, id string, reg prometheus.Registerer) *Members {
	t.Helper()
	m, err := New(store, Config{ID: id, Interval: interval, TTL: ttl}, testLogger(t), reg)
	require.NoError(t, err)
	return m
}

// running is a Members whose Run runs.
type running struct {
	*Members
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func start(t *testing.T, m *Members) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Members: m, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- m.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels Run and waits for it to return nil.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			assert.NoError(t, err, "Run")
		case <-time.After(waitFor):
			t.Errorf("Run did not return within %v of its context's end", waitFor)
		}
	})
}

// member returns the Member id of list.
func member(list []Member, id string) (Member, bool) {
	for _, m := range list {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// sees reports whether m has read a heartbeat of id's and judges it alive.
func sees(m *Members, id string) bool {
	mem, ok := member(m.Members(), id)
	return ok && mem.Seq > 0 && mem.Alive
}

func (m *Members) leaseRenewedAt() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leaseFrom
}

func TestMembers(t *testing.T) {
	forEachStore(t, func(t *testing.T, store Store) {
		a := start(t, newMembers(t, store, "a", nil))
		b := start(t, newMembers(t, store, "b", nil))
		a.SetInfo("role", "writer")
		require.Equal(t, "a", a.ID())

		require.Eventually(t, func() bool { return sees(a.Members, "b") && sees(b.Members, "a") }, waitFor, tick,
			"each sees the other alive")
		require.Eventually(t, func() bool {
			mem, _ := member(b.Members.Members(), "a")
			return mem.Info["role"] == "writer"
		}, waitFor, tick, "info is published")
		mem, _ := member(b.Members.Members(), "a")
		require.Equal(t, a.Incarnation(), mem.Incarnation)
		require.False(t, mem.Self)
		self := a.Members.Members()[0]
		require.True(t, self.Self)
		require.Equal(t, "a", self.ID)
		require.Equal(t, map[string]string{"role": "writer"}, self.Info)

		// b stops: a judges it dead, but only once b's lease has run out.
		b.stop(t)
		ctx, cancel := context.WithTimeout(t.Context(), waitFor)
		defer cancel()
		require.NoError(t, a.WaitDead(ctx, "b"))
		require.False(t, b.Lease(0), "b's lease ran out before a judged b dead")
		require.GreaterOrEqual(t, time.Since(b.leaseRenewedAt()), ttl)
		require.False(t, a.Alive("b"))
		mem, ok := member(a.Members.Members(), "b")
		require.True(t, ok, "a dead replica is still listed")
		require.False(t, mem.Alive)
		require.GreaterOrEqual(t, mem.LastChange, ttl)

		// b restarts with its id: alive again, in a new incarnation.
		b2 := start(t, newMembers(t, store, "b", nil))
		require.NotEqual(t, b.Incarnation(), b2.Incarnation())
		require.Eventually(t, func() bool {
			mem, _ := member(a.Members.Members(), "b")
			return mem.Alive && mem.Incarnation == b2.Incarnation()
		}, waitFor, tick, "a sees b's new incarnation alive")
	})
}

func TestLease(t *testing.T) {
	forEachStore(t, func(t *testing.T, store Store) {
		m := newMembers(t, store, "a", nil)
		require.False(t, m.Lease(0), "no lease before the first heartbeat")
		require.False(t, m.Alive("a"))

		r := start(t, m)
		require.Eventually(t, func() bool { return m.Lease(0) }, waitFor, tick)
		require.True(t, m.Alive("a"))
		require.False(t, m.Lease(ttl), "a margin of the TTL leaves no lease")
		first := m.Incarnation()

		r.stop(t)
		require.Eventually(t, func() bool { return !m.Lease(0) }, waitFor, tick, "the lease runs out without heartbeats")
		require.GreaterOrEqual(t, time.Since(m.leaseRenewedAt()), ttl)
		require.False(t, m.Alive("a"))
		require.False(t, m.Lease(0), "and stays out")

		// Run again: the lapsed lease is renewed in a new incarnation.
		start(t, m)
		require.Eventually(t, func() bool { return m.Lease(0) }, waitFor, tick)
		require.NotEqual(t, first, m.Incarnation())
	})
}

func TestUnknownReplica(t *testing.T) {
	m := newMembers(t, newFS(t), "a", nil)
	require.True(t, m.Alive("ghost"), "alive while not watching")
	started := time.Now()
	start(t, m)
	require.Eventually(t, func() bool {
		alive := m.Alive("ghost")
		if !alive {
			require.GreaterOrEqual(t, time.Since(started), ttl, "judged dead before watching for the TTL")
		}
		return !alive
	}, waitFor, tick)
	require.NoError(t, m.WaitDead(t.Context(), "ghost"), "returns at once")
	_, ok := member(m.Members(), "ghost")
	require.False(t, ok, "not listed")
}

func TestStaleHeartbeats(t *testing.T) {
	forEachStore(t, func(t *testing.T, store Store) {
		for key, content := range map[string]string{
			// A replica's last heartbeat before it stopped.
			"members/old.json": `{"id":"old","incarnation":"0123","seq":7,"info":{"role":"writer"}}`,
			// Not heartbeats of their replicas, still watched.
			"members/junk.json":  "junk",
			"members/other.json": `{"id":"someone-else","incarnation":"4567","seq":1,"info":{}}`,
			// Not heartbeat objects.
			"members/notes.txt":  "x",
			"members/sub/x.json": "x",
			"others/y.json":      "x",
		} {
			_, err := store.Put(t.Context(), key, strings.NewReader(content))
			require.NoError(t, err)
		}
		m := newMembers(t, store, "a", nil)
		started := time.Now()
		start(t, m)
		require.Eventually(t, func() bool {
			_, ok := member(m.Members(), "old")
			return ok
		}, waitFor, tick)
		mem, _ := member(m.Members(), "old")
		require.Equal(t, Member{ID: "old", Incarnation: "0123", Seq: 7, Alive: mem.Alive, LastChange: mem.LastChange,
			Info: map[string]string{"role": "writer"}}, mem)
		require.Eventually(t, func() bool {
			alive := m.Alive("old") || m.Alive("junk") || m.Alive("other")
			if !alive {
				require.GreaterOrEqual(t, time.Since(started), ttl, "judged dead before watching for the TTL")
			}
			return !alive
		}, waitFor, tick, "an unchanging heartbeat is dead after the TTL")
		var ids []string
		for _, mem := range m.Members() {
			ids = append(ids, mem.ID)
		}
		require.Equal(t, []string{"a", "junk", "old", "other"}, ids)
	})
}

// faultyStore fails Puts while fail is set.
type faultyStore struct {
	Store
	fail atomic.Bool
}

var errStoreDown = errors.New("store down")

func (s *faultyStore) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if s.fail.Load() {
		return 0, errStoreDown
	}
	return s.Store.Put(ctx, key, r)
}

// gauge returns the value of the gauge name gathered from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestFailingHeartbeats(t *testing.T) {
	fs := newFS(t)
	faulty := &faultyStore{Store: fs}
	reg := prometheus.NewPedanticRegistry()
	a := start(t, newMembers(t, faulty, "a", reg))
	b := start(t, newMembers(t, fs, "b", nil))
	require.Eventually(t, func() bool {
		return sees(a.Members, "b") && sees(b.Members, "a") && gauge(t, reg, "exportd_cluster_members_alive") == 2
	}, waitFor, tick)
	require.Less(t, gauge(t, reg, "exportd_cluster_heartbeat_age_seconds"), (10 * time.Second).Seconds())
	first := a.Incarnation()

	faulty.fail.Store(true)
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	require.NoError(t, b.WaitDead(ctx, "a"), "b judges a dead")
	require.False(t, a.Lease(0), "after a's lease ran out")
	require.False(t, a.Alive("a"))
	require.Positive(t, testutil.ToFloat64(a.failures))
	require.GreaterOrEqual(t, gauge(t, reg, "exportd_cluster_heartbeat_age_seconds"), ttl.Seconds())
	require.Eventually(t, func() bool { return gauge(t, reg, "exportd_cluster_members_alive") == 1 }, waitFor, tick,
		"a counts b, not itself")

	faulty.fail.Store(false)
	require.Eventually(t, func() bool {
		mem, _ := member(b.Members.Members(), "a")
		return a.Lease(0) && mem.Alive && mem.Incarnation != first && mem.Incarnation == a.Incarnation()
	}, waitFor, tick, "a is back, in a new incarnation")
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestDuplicateID(t *testing.T) {
	store := newFS(t)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), nil))
	for range 2 {
		m, err := New(store, Config{ID: "a", Interval: interval, TTL: ttl}, logger, nil)
		require.NoError(t, err)
		start(t, m)
	}
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "another process writes this replica's heartbeat")
	}, waitFor, tick)
}

func TestRunTwice(t *testing.T) {
	m := start(t, newMembers(t, newFS(t), "a", nil))
	require.Eventually(t, m.running.Load, waitFor, tick)
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	require.ErrorContains(t, m.Run(ctx), "already running")
}

func TestWaitDeadContext(t *testing.T) {
	// A replica not seen is alive for the TTL after Run starts.
	m := start(t, newMembers(t, newFS(t), "a", nil))
	ctx, cancel := context.WithTimeout(t.Context(), ttl/2)
	defer cancel()
	err := m.WaitDead(ctx, "ghost")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, `"ghost"`)
}

func TestConfig(t *testing.T) {
	m, err := New(newFS(t), Config{ID: "pod-0"}, nil, nil)
	require.NoError(t, err)
	require.Equal(t, Config{ID: "pod-0", Prefix: DefaultPrefix, Interval: DefaultInterval, TTL: DefaultTTL}, m.cfg)
	require.Equal(t, "members/pod-0.json", m.key("pod-0"))

	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no id", Config{}, "no replica id"},
		{"slash in id", Config{ID: "a/b"}, "'/'"},
		{"backslash in id", Config{ID: `a\b`}, "backslash"},
		{"bad prefix", Config{ID: "a", Prefix: "/abs/"}, "absolute"},
		{"negative interval", Config{ID: "a", Interval: -time.Second}, "negative"},
		{"TTL too short", Config{ID: "a", Interval: time.Second, TTL: 2 * time.Second}, "TTL"},
		{"negative TTL", Config{ID: "a", TTL: -time.Second}, "TTL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(newFS(t), tc.cfg, nil, nil)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// TestLeaseRenewal checks the lease's bookkeeping with chosen times.
func TestLeaseRenewal(t *testing.T) {
	m := newMembers(t, nil, "a", nil)
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	lease := func(margin, now time.Duration) bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.leaseLocked(margin, at(now))
	}
	inc := m.Incarnation()

	hb := m.nextHeartbeat(at(0))
	require.Equal(t, heartbeat{ID: "a", Incarnation: inc, Seq: 1, Info: map[string]string{}}, hb)
	require.False(t, lease(0, 0), "none before a write")
	m.wrote(hb, at(0), at(10*time.Millisecond))
	require.True(t, lease(0, ttl-1), "from the write's start")
	require.False(t, lease(0, ttl))
	require.True(t, lease(100*time.Millisecond, ttl-100*time.Millisecond-1))
	require.False(t, lease(100*time.Millisecond, ttl-100*time.Millisecond))

	// A slow write that succeeds while the lease holds renews it.
	hb = m.nextHeartbeat(at(50 * time.Millisecond))
	require.Equal(t, uint64(2), hb.Seq)
	m.wrote(hb, at(50*time.Millisecond), at(ttl-1))
	require.True(t, lease(0, 50*time.Millisecond+ttl-1))

	// One that succeeds after the lease ran out does not.
	hb = m.nextHeartbeat(at(100 * time.Millisecond))
	require.Equal(t, inc, hb.Incarnation)
	m.wrote(hb, at(100*time.Millisecond), at(50*time.Millisecond+ttl))
	require.False(t, lease(0, 50*time.Millisecond+ttl))
	require.False(t, lease(0, 100*time.Millisecond+ttl-1), "not even before its own start plus the TTL")

	// The next heartbeat is of a new incarnation, and its first write
	// renews the lease.
	hb = m.nextHeartbeat(at(2 * ttl))
	require.NotEqual(t, inc, hb.Incarnation)
	require.Equal(t, uint64(4), hb.Seq)
	m.wrote(hb, at(2*ttl), at(2*ttl+time.Millisecond))
	require.True(t, lease(0, 3*ttl-1))
}

// TestAliveRules checks the judgement of other replicas with chosen times.
func TestAliveRules(t *testing.T) {
	m := newMembers(t, nil, "a", nil)
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ms := time.Millisecond
	v1 := []byte(`{"id":"b","incarnation":"1","seq":1}`)
	v2 := []byte(`{"id":"b","incarnation":"1","seq":2}`)

	require.True(t, m.Alive("x"), "not watching yet")
	m.listed([]string{"b"}, at(0))
	m.observe("b", v1, at(1*ms), at(2*ms))
	require.True(t, m.Alive("b"))
	require.True(t, m.Alive("x"), "watching for less than the TTL")

	m.listed([]string{"b"}, at(ttl-1))
	m.observe("b", v1, at(2*ms+ttl-1), at(3*ms+ttl))
	require.True(t, m.Alive("b"), "unchanged for less than the TTL, after the read that saw it")
	require.True(t, m.Alive("x"))

	m.listed([]string{"b"}, at(ttl))
	require.False(t, m.Alive("x"), "not listed during the TTL")
	m.observe("b", v1, at(2*ms+ttl), at(3*ms+ttl))
	require.False(t, m.Alive("b"), "unchanged for the TTL")

	m.observe("b", v2, at(3*ttl), at(3*ttl+ms))
	require.True(t, m.Alive("b"), "changed")
	mem, _ := member(m.Members(), "b")
	require.Equal(t, uint64(2), mem.Seq)

	m.listed(nil, at(4*ttl))
	require.True(t, m.Alive("b"), "missing for less than the TTL")
	m.listed(nil, at(4*ttl+ms))
	require.False(t, m.Alive("b"), "missing: no new heartbeat")
	m.missing("b", at(4*ttl+2*ms))
	require.False(t, m.Alive("b"))
}
