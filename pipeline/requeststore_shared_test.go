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
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/s3test"
	"github.com/exportd/exportd/storage"
)

// sharedPrefix is the prefix the tests open shared request stores under.
const sharedPrefix = "requests/"

// newPlace returns an empty place in a bucket, and a function that opens
// another client of it each time it is called: one per replica.
type newPlace func(t *testing.T) func(t *testing.T) RequestBucket

// TestSharedRequestStore runs the shared request store's tests against
// both buckets it is used with: a directory (storage.FS) and S3 (versitygw).
func TestSharedRequestStore(t *testing.T) {
	t.Run("FS", func(t *testing.T) {
		t.Parallel()
		testSharedRequestStore(t, func(t *testing.T) func(t *testing.T) RequestBucket {
			dir := t.TempDir()
			return func(t *testing.T) RequestBucket {
				fs, err := storage.NewFS(dir)
				require.NoError(t, err)
				return fs
			}
		})
	})
	t.Run("S3", func(t *testing.T) {
		t.Parallel()
		srv := s3test.Start(t)
		var n atomic.Int64
		testSharedRequestStore(t, func(t *testing.T) func(t *testing.T) RequestBucket {
			cfg := srv.S3Config(fmt.Sprintf("test-%d", n.Add(1)))
			return func(t *testing.T) RequestBucket {
				s, err := storage.NewS3(t.Context(), cfg, slog.New(slog.DiscardHandler))
				require.NoError(t, err)
				t.Cleanup(func() { _ = s.Close() })
				return s
			}
		})
	})
}

func testSharedRequestStore(t *testing.T, place newPlace) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, func(*testing.T) RequestBucket)
	}{
		{"RoundTrip", testSharedRoundTrip},
		{"CreateTwice", testSharedCreateTwice},
		{"StaleETag", testSharedStaleETag},
		{"RacingPuts", testSharedRacingPuts},
		{"ConcurrentCreate", testSharedConcurrentCreate},
		{"Indexes", testSharedIndexes},
		{"StaleEntries", testSharedStaleEntries},
		{"Escaping", testSharedEscaping},
		{"Invalid", testSharedInvalid},
		{"LostAnswer", testSharedLostAnswer},
		{"Layout", testSharedLayout},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, place(t)) })
	}
}

func openShared(t *testing.T, b RequestBucket) *SharedRequestStore {
	t.Helper()
	s, err := OpenSharedRequestStore(t.Context(), b, sharedPrefix)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// sharedIndexKeys lists the keys under the store's prefix but its records and
// layout: the index entries.
func sharedIndexKeys(t *testing.T, b RequestBucket) []string {
	t.Helper()
	var keys []string
	require.NoError(t, b.List(t.Context(), sharedPrefix, func(oi storage.ObjectInfo) error {
		rest := strings.TrimPrefix(oi.Key, sharedPrefix)
		if !strings.HasPrefix(rest, "records/") && rest != "layout.json" {
			keys = append(keys, rest)
		}
		return nil
	}))
	return keys
}

func bucketKeys(t *testing.T, b RequestBucket) map[string]int64 {
	t.Helper()
	keys := make(map[string]int64)
	require.NoError(t, b.List(t.Context(), "", func(oi storage.ObjectInfo) error {
		keys[oi.Key] = oi.Size
		return nil
	}))
	return keys
}

// sharedStored reads the record of id as stored, with the store's fields.
func sharedStored(t *testing.T, s *SharedRequestStore, id string) *storedRecord {
	t.Helper()
	r, err := s.read(t.Context(), id)
	require.NoError(t, err)
	require.NotNil(t, r, "record %s", id)
	return r
}

func sharedGet(t *testing.T, s *SharedRequestStore, id string) RequestRecord {
	t.Helper()
	rec, ok, err := s.Get(id)
	require.NoError(t, err)
	require.True(t, ok, "record %s", id)
	return rec
}

func sharedCreate(t *testing.T, s *SharedRequestStore, rec *RequestRecord) {
	t.Helper()
	_, created, err := s.Create(rec)
	require.NoError(t, err)
	require.True(t, created, "create %s", rec.Request.RequestID)
}

func testSharedRoundTrip(t *testing.T, bucket func(*testing.T) RequestBucket) {
	a := openShared(t, bucket(t))
	clock := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return clock }

	rec := record("r1", "42", StateReceived)
	rec.Owner = "replica-a"
	existing, created, err := a.Create(&rec)
	require.NoError(t, err)
	require.True(t, created)
	require.Zero(t, existing)
	require.NotEmpty(t, rec.etag)
	require.Equal(t, clock, rec.CreatedAt)
	require.Equal(t, clock, rec.UpdatedAt)
	require.Equal(t, rec, sharedGet(t, a, "r1"))

	// Another replica sees it, and writes it with the version a created.
	b := openShared(t, bucket(t))
	require.Equal(t, rec, sharedGet(t, b, "r1"))
	clock = clock.Add(time.Minute)
	b.now = func() time.Time { return clock }
	exp := clock.Add(time.Hour)
	created1 := rec.CreatedAt
	rec.State = StateCompleted
	rec.Owner = "replica-b"
	rec.Fence = "0/16B3748"
	rec.Attempts = 2
	rec.Reason = "why"
	rec.Retryable = true
	rec.Result = &Event{Version: 1, Type: EventCompleted, RequestID: "r1", TenantID: "42", At: clock, ExpiresAt: &exp, MissingFiles: 3}
	rec.CompletedEventSent = true
	rec.ResultOffsets = map[int]int64{0: 7, 3: 9}
	rec.Outbox = []Event{{Version: 1, Type: EventAccepted, RequestID: "r1", TenantID: "42", At: clock}}
	oldETag := rec.etag
	require.NoError(t, b.Put(&rec))
	require.NotEqual(t, oldETag, rec.etag)
	require.Equal(t, clock, rec.UpdatedAt)
	require.Equal(t, created1, rec.CreatedAt)
	require.Equal(t, rec, sharedGet(t, a, "r1"))

	// Closed: idempotent, and nothing works after.
	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "Close twice")
	_, _, err = a.Get("r1")
	require.ErrorIs(t, err, errStoreClosed)
	require.ErrorIs(t, a.Put(&rec), errStoreClosed)
	_, _, err = a.Create(&rec)
	require.ErrorIs(t, err, errStoreClosed)
	_, err = a.ByState(StateCompleted)
	require.ErrorIs(t, err, errStoreClosed)
	_, err = a.ByTenant("42")
	require.ErrorIs(t, err, errStoreClosed)
	_, err = a.Open()
	require.ErrorIs(t, err, errStoreClosed)

	// Reopened.
	c := openShared(t, bucket(t))
	require.Equal(t, rec, sharedGet(t, c, "r1"))
	_, ok, err := c.Get("nope")
	require.NoError(t, err)
	require.False(t, ok)
	byTenant, err := c.ByTenant("42")
	require.NoError(t, err)
	require.Equal(t, []RequestRecord{rec}, byTenant)
	byState, err := c.ByState(StateCompleted)
	require.NoError(t, err)
	require.Equal(t, []RequestRecord{rec}, byState)
	open, err := c.Open()
	require.NoError(t, err)
	require.Equal(t, []RequestRecord{rec}, open, "open while its outbox is not empty")
}

func testSharedCreateTwice(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	a, b := openShared(t, place), openShared(t, bucket(t))
	first := record("r1", "42", StateReceived)
	first.Owner = "a"
	sharedCreate(t, a, &first)
	before := bucketKeys(t, place)

	second := record("r1", "43", StateAccepted)
	second.Owner = "b"
	orig := second
	for _, s := range []*SharedRequestStore{a, b} {
		existing, created, err := s.Create(&second)
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, first, existing, "the existing record, with its version")
		require.Equal(t, orig, second, "rec untouched")
	}
	require.Equal(t, before, bucketKeys(t, place), "nothing written")
	require.Equal(t, first, sharedGet(t, b, "r1"))
}

func testSharedStaleETag(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	a, b := openShared(t, place), openShared(t, bucket(t))
	rec := record("r1", "42", StateReceived)
	sharedCreate(t, a, &rec)
	ra, rb := sharedGet(t, a, "r1"), sharedGet(t, b, "r1")

	ra.Attempts = 1
	ra.State = StateAccepted
	require.NoError(t, a.Put(&ra))

	rb.Attempts = 5
	rb.State = StateFailed
	orig := rb
	err := b.Put(&rb)
	require.ErrorIs(t, err, ErrConflict)
	require.ErrorContains(t, err, "write request r1")
	require.Equal(t, orig, rb, "rec untouched by a failed Put")
	require.Equal(t, ra, sharedGet(t, b, "r1"), "content unchanged")
	requireIndexKeys(t, place, "states/accepted/r1@2", "open/r1@2", "tenants/42/r1")

	// A record that was never read conflicts with the one there.
	fresh := record("r1", "42", StateRendering)
	require.ErrorIs(t, b.Put(&fresh), ErrConflict)
	// And one that does not exist is created by Put.
	r2 := record("r2", "42", StateReceived)
	require.NoError(t, b.Put(&r2))
	require.NotEmpty(t, r2.etag)
	require.Equal(t, r2, sharedGet(t, a, "r2"))

	// A record's tenant does not change: an error, not a conflict.
	moved := sharedGet(t, a, "r1")
	moved.Request.TenantID = "43"
	err = a.Put(&moved)
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrConflict)
	require.Equal(t, ra, sharedGet(t, b, "r1"))

	// A record that vanished (deleted by hand) conflicts.
	require.NoError(t, place.Delete(t.Context(), sharedPrefix+"records/r1.json"))
	ra.Attempts = 2
	require.ErrorIs(t, a.Put(&ra), ErrConflict)
	_, ok, err := b.Get("r1")
	require.NoError(t, err)
	require.False(t, ok)
}

// requireIndexKeys checks that the index entries in b are want.
func requireIndexKeys(t *testing.T, b RequestBucket, want ...string) {
	t.Helper()
	require.Equal(t, slices.Sorted(slices.Values(want)), slices.Sorted(slices.Values(sharedIndexKeys(t, b))))
}

// testSharedRacingPuts increments a record's Attempts from goroutines on
// two stores, each reading and writing until its write holds: no
// increment is lost. In the first round every goroutine reads before any
// writes, so exactly one of the first writes can hold.
func testSharedRacingPuts(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	stores := []*SharedRequestStore{openShared(t, place), openShared(t, bucket(t))}
	const workers, incs = 8, 5
	rec := record("r1", "42", StateRendering)
	sharedCreate(t, stores[0], &rec)

	var (
		wg                  sync.WaitGroup
		read                sync.WaitGroup
		firstWins, conflict atomic.Int64
	)
	read.Add(workers)
	for w := range workers {
		s := stores[w%2]
		wg.Go(func() {
			first := true
			for done := 0; done < incs; {
				rec, ok, err := s.Get("r1")
				if !assert.NoError(t, err) || !assert.True(t, ok) {
					return
				}
				if first {
					read.Done()
					read.Wait()
				}
				rec.Attempts++
				err = s.Put(&rec)
				if first && err == nil {
					firstWins.Add(1)
				}
				first = false
				if errors.Is(err, ErrConflict) {
					conflict.Add(1)
					continue
				}
				if !assert.NoError(t, err) {
					return
				}
				done++
			}
		})
	}
	wg.Wait()
	t.Logf("%d conflicts", conflict.Load())
	require.EqualValues(t, 1, firstWins.Load(), "of writes of one version, one holds")
	require.Equal(t, workers*incs, sharedGet(t, stores[1], "r1").Attempts)
	require.EqualValues(t, 1+workers*incs, sharedStored(t, stores[0], "r1").Shared.Revision)
	requireIndexKeys(t, place, "open/r1@41", "states/rendering/r1@41", "tenants/42/r1") // none left behind
}

// testSharedConcurrentCreate creates ids from goroutines on two stores at
// once: one Create of each id creates it, and the others get its record.
func testSharedConcurrentCreate(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	stores := []*SharedRequestStore{openShared(t, place), openShared(t, bucket(t))}
	const workers, rounds = 8, 5
	var want []string
	for round := range rounds {
		id := fmt.Sprintf("req-%d", round)
		var (
			wg, ready sync.WaitGroup
			mu        sync.Mutex
			winners   []RequestRecord
			losers    []RequestRecord
		)
		ready.Add(workers)
		for w := range workers {
			s := stores[w%2]
			wg.Go(func() {
				rec := record(id, "42", StateReceived)
				rec.Owner = fmt.Sprint("worker-", w)
				ready.Done()
				ready.Wait()
				existing, created, err := s.Create(&rec)
				if !assert.NoError(t, err) {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if created {
					winners = append(winners, rec)
				} else {
					losers = append(losers, existing)
				}
			})
		}
		wg.Wait()
		require.Len(t, winners, 1, "id %s", id)
		require.Len(t, losers, workers-1)
		require.Equal(t, winners[0], sharedGet(t, stores[round%2], id))
		for _, l := range losers {
			require.Equal(t, winners[0], l, "every loser sees the winner's record")
		}
		want = append(want, "open/"+id+"@1", "states/received/"+id+"@1", "tenants/42/"+id)
	}
	recs, err := stores[1].ByTenant("42")
	require.NoError(t, err)
	require.Len(t, recs, rounds)
	requireIndexKeys(t, place, want...)
}

// requireShared checks every index of s against recs, the records in it.
func requireShared(t *testing.T, s *SharedRequestStore, recs ...*RequestRecord) {
	t.Helper()
	states := []RequestState{StateReceived, StateAccepted, StateBlockedUnpaid, StateRendering,
		StateCompleted, StateFailed, StateRejected, StateExpired}
	for _, st := range states {
		var want []RequestRecord
		for _, r := range recs {
			if r.State == st {
				want = append(want, *r)
			}
		}
		got, err := s.ByState(st)
		require.NoError(t, err)
		require.Equal(t, want, got, "state %s", st)
	}
	tenants := map[string][]RequestRecord{}
	var open []RequestRecord
	for _, r := range recs {
		tenants[r.Request.TenantID] = append(tenants[r.Request.TenantID], *r)
		if unfinished(r) {
			open = append(open, *r)
		}
	}
	for tenant, want := range tenants {
		got, err := s.ByTenant(tenant)
		require.NoError(t, err)
		require.Equal(t, want, got, "tenant %s", tenant)
	}
	got, err := s.Open()
	require.NoError(t, err)
	require.Equal(t, open, got, "open")
}

// requireSharedEntries checks that the bucket holds exactly the index entries of
// recs' versions: a write deletes those of the version it replaces.
func requireSharedEntries(t *testing.T, s *SharedRequestStore, b RequestBucket, recs ...*RequestRecord) {
	t.Helper()
	var want []string
	for _, r := range recs {
		for _, key := range s.keys.entries(sharedStored(t, s, r.Request.RequestID), true) {
			want = append(want, strings.TrimPrefix(key, sharedPrefix))
		}
	}
	requireIndexKeys(t, b, want...)
}

func testSharedIndexes(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	a, b := openShared(t, place), openShared(t, bucket(t))
	r1 := record("r1", "42", StateReceived)
	r2 := record("r2", "42", StateReceived)
	r3 := record("r3", "7", StateReceived)
	for _, r := range []*RequestRecord{&r1, &r2, &r3} {
		sharedCreate(t, a, r)
	}
	all := []*RequestRecord{&r1, &r2, &r3}
	requireShared(t, b, all...)
	requireSharedEntries(t, b, place, all...)

	step := func(r *RequestRecord, change func(*RequestRecord)) {
		t.Helper()
		change(r)
		require.NoError(t, a.Put(r))
		requireShared(t, b, all...)
		requireSharedEntries(t, b, place, all...)
	}
	for _, st := range []RequestState{StateAccepted, StateBlockedUnpaid, StateRendering, StateCompleted} {
		step(&r1, func(r *RequestRecord) { r.State = st })
	}
	requireOpen := func(want ...string) {
		t.Helper()
		got, err := b.Open()
		require.NoError(t, err)
		require.Equal(t, want, ids(got))
	}
	requireOpen("r1", "r2", "r3") // completed, its event not yet sent
	step(&r1, func(r *RequestRecord) { r.CompletedEventSent = true })
	requireOpen("r2", "r3")
	ev := Event{Version: 1, Type: EventRejected, RequestID: "r2", TenantID: "42", Reason: "not_admin"}
	step(&r2, func(r *RequestRecord) { r.State, r.Outbox = StateRejected, []Event{ev} })
	requireOpen("r2", "r3") // until its event is published
	step(&r2, func(r *RequestRecord) { r.Outbox = nil })
	requireOpen("r3")
	step(&r1, func(r *RequestRecord) { r.Attempts++ }) // same state: a new entry, the old one gone
	step(&r3, func(r *RequestRecord) { r.State = StateExpired })
	requireOpen()
}

// testSharedStaleEntries writes index entries by hand that contradict
// their records: readers skip them and delete those that cannot become
// true, and keep those of a write that may be in progress.
func testSharedStaleEntries(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	s := openShared(t, place)
	rec := record("r1", "42", StateReceived)
	sharedCreate(t, s, &rec)
	rec.State = StateAccepted
	require.NoError(t, s.Put(&rec)) // revision 2
	put := func(keys ...string) {
		for _, k := range keys {
			_, err := place.Put(t.Context(), sharedPrefix+k, bytes.NewReader(nil))
			require.NoError(t, err)
		}
	}
	put("states/rendering/r1@1", // an older revision
		"states/rendering/r1@2",                                                    // this revision, another state
		"states/rendering/r1@3",                                                    // a write in progress: may become true
		"states/rendering/ghost@1",                                                 // a record being created
		"states/rendering/junk", "states/rendering/r1@x", "states/rendering/r1@02", // not the store's
		"states/accepted/r1@1", // older, of the current state too
		"tenants/7/r1",         // another tenant: never true
		"open/r1@1",            // older
	)

	got, err := s.ByState(StateRendering)
	require.NoError(t, err)
	require.Empty(t, got)
	got, err = s.ByState(StateAccepted)
	require.NoError(t, err)
	require.Equal(t, []RequestRecord{rec}, got, "once, with two entries")
	got, err = s.ByTenant("7")
	require.NoError(t, err)
	require.Empty(t, got)
	got, err = s.Open()
	require.NoError(t, err)
	require.Equal(t, []RequestRecord{rec}, got)

	requireIndexKeys(t, place,
		"open/r1@2",
		"states/accepted/r1@2",
		"states/rendering/ghost@1",
		"states/rendering/junk",
		"states/rendering/r1@02",
		"states/rendering/r1@3",
		"states/rendering/r1@x",
		"tenants/42/r1",
	)

	// The write in progress lands: its entry is the record's.
	rec.State = StateRendering
	require.NoError(t, s.Put(&rec))
	got, err = s.ByState(StateRendering)
	require.NoError(t, err)
	require.Equal(t, []RequestRecord{rec}, got)
}

// testSharedEscaping stores ids and tenants that are not key segments as
// they are.
func testSharedEscaping(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	a, b := openShared(t, place), openShared(t, bucket(t))
	var all []*RequestRecord
	for i, id := range []string{"..", ".", ".tmp-x", "a/b", "x@1", "A:b.c_d-e", "%41", "sp ace"} {
		tenant := []string{"acme/eu", "ü", "..", "%2F"}[i%4]
		rec := record(id, tenant, StateReceived)
		sharedCreate(t, a, &rec)
		all = append(all, &rec)
	}
	slices.SortFunc(all, func(x, y *RequestRecord) int { return strings.Compare(x.Request.RequestID, y.Request.RequestID) })
	for _, r := range all {
		require.Equal(t, *r, sharedGet(t, b, r.Request.RequestID))
	}
	requireShared(t, b, all...)
	requireSharedEntries(t, b, place, all...)
	for _, key := range sharedIndexKeys(t, place) {
		require.NoError(t, storage.ValidateKey(key))
		require.False(t, strings.HasPrefix(key[strings.LastIndexByte(key, '/')+1:], "."), key)
	}
	// Escaped, an id holds no '/' of its own.
	require.Contains(t, sharedIndexKeys(t, place), "tenants/%252F/a%2Fb")
	r := all[slices.IndexFunc(all, func(r *RequestRecord) bool { return r.Request.RequestID == ".." })]
	r.State = StateAccepted
	require.NoError(t, b.Put(r))
	requireShared(t, a, all...)
}

func TestSharedEscapeSegment(t *testing.T) {
	for _, s := range []string{"r1", "A:b.c_d-e", "req-2026.01"} {
		require.Equal(t, s, escapeSegment(s), "request ids are kept")
	}
	for s, want := range map[string]string{
		".": "%2E", "..": "%2E.", ".tmp-x": "%2Etmp-x", "a/b": "a%2Fb", "x@1": "x%401",
		"%41": "%2541", "ü": "%C3%BC", "a b": "a%20b", "\xff": "%FF",
	} {
		require.Equal(t, want, escapeSegment(s), "%q", s)
		got, err := unescapeSegment(want)
		require.NoError(t, err)
		require.Equal(t, s, got)
	}
	for _, seg := range []string{"", "%", "%4", "%41", "%2e", "a/b", "@"} {
		_, err := unescapeSegment(seg)
		require.Error(t, err, "%q is not written by escapeSegment", seg)
	}
}

func FuzzSharedEscapeSegment(f *testing.F) {
	for _, s := range []string{"r1", "..", "a/b", "%", "\x00x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == "" {
			return
		}
		seg := escapeSegment(s)
		require.NoError(t, storage.ValidateKey("x/"+seg))
		require.NotContains(t, seg, "/")
		require.NotContains(t, seg, "@")
		require.False(t, strings.HasPrefix(seg, "."))
		got, err := unescapeSegment(seg)
		require.NoError(t, err)
		require.Equal(t, s, got)
	})
}

func testSharedInvalid(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	s := openShared(t, place)
	before := bucketKeys(t, place)
	for _, rec := range []RequestRecord{
		record("", "1", StateReceived),
		record("a\x00b", "1", StateReceived),
		record("a", "", StateReceived),
		record("a", "1\x00", StateReceived),
		record("a", "1", "done"),
	} {
		_, _, err := s.Create(&rec)
		require.Error(t, err)
		require.Error(t, s.Put(&rec))
	}
	require.Equal(t, before, bucketKeys(t, place), "nothing written")
	_, _, err := s.Get("")
	require.Error(t, err)
	_, err = s.ByTenant("")
	require.Error(t, err)
	_, err = s.ByState("done")
	require.Error(t, err)
	_, err = OpenSharedRequestStore(t.Context(), place, "/abs")
	require.Error(t, err)
}

// lostAnswer is a real bucket whose armed conditional write writes and
// then reports a refusal: what a retried request that its first attempt
// already wrote gets (see storage.Conditional). then, if set, runs between
// the two: another replica's turn.
type lostAnswer struct {
	RequestBucket
	armed atomic.Bool
	then  func()
}

func (l *lostAnswer) lose(key string, etag string, err error) (string, error) {
	if err != nil || !strings.Contains(key, "/records/") || !l.armed.CompareAndSwap(true, false) {
		return etag, err
	}
	if l.then != nil {
		l.then()
	}
	return "", fmt.Errorf("put object %q: %w", key, storage.ErrPrecondition)
}

func (l *lostAnswer) PutIfAbsent(ctx context.Context, key string, data []byte) (string, error) {
	etag, err := l.RequestBucket.PutIfAbsent(ctx, key, data)
	return l.lose(key, etag, err)
}

func (l *lostAnswer) PutIfMatch(ctx context.Context, key string, data []byte, etag string) (string, error) {
	etag, err := l.RequestBucket.PutIfMatch(ctx, key, data, etag)
	return l.lose(key, etag, err)
}

func testSharedLostAnswer(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	lost := &lostAnswer{RequestBucket: place}
	a, b := openShared(t, lost), openShared(t, bucket(t))

	// The refused retry of a write that holds is a success, found by its token.
	lost.armed.Store(true)
	rec := record("r1", "42", StateReceived)
	sharedCreate(t, a, &rec)
	require.False(t, lost.armed.Load(), "the refusal happened")
	require.Equal(t, rec, sharedGet(t, b, "r1"), "with the version in the bucket")
	lost.armed.Store(true)
	rec.State = StateAccepted
	require.NoError(t, a.Put(&rec))
	require.False(t, lost.armed.Load())
	require.Equal(t, rec, sharedGet(t, b, "r1"))
	requireSharedEntries(t, b, place, &rec)

	// A Create whose record another replica rewrote before the refusal:
	// created (its create token says so), but rec is not the version there.
	lost.then = func() {
		r := sharedGet(t, b, "r2")
		r.Owner = "b"
		require.NoError(t, b.Put(&r))
	}
	lost.armed.Store(true)
	r2 := record("r2", "42", StateReceived)
	sharedCreate(t, a, &r2)
	require.ErrorIs(t, a.Put(&r2), ErrConflict)
	require.Equal(t, "b", sharedGet(t, a, "r2").Owner)

	// A Put in the same case cannot tell its write from the other's: a
	// conflict, and the other's write holds.
	lost.then = func() {
		r := sharedGet(t, b, "r1")
		r.Owner = "b"
		require.NoError(t, b.Put(&r))
	}
	lost.armed.Store(true)
	rec.State = StateRendering
	require.ErrorIs(t, a.Put(&rec), ErrConflict)
	got := sharedGet(t, b, "r1")
	require.Equal(t, "b", got.Owner)
	require.Equal(t, StateRendering, got.State, "b wrote over a's write")
	requireSharedEntries(t, b, place, &got, &r2)
}

func testSharedLayout(t *testing.T, bucket func(*testing.T) RequestBucket) {
	place := bucket(t)
	openShared(t, place)
	data, _, err := place.GetETag(t.Context(), sharedPrefix+"layout.json")
	require.NoError(t, err)
	require.JSONEq(t, `{"version": 1}`, string(data))
	openShared(t, bucket(t)) // a second store reads it

	_, err = place.PutIfAbsent(t.Context(), "other/layout.json", []byte(`{"version": 2}`))
	require.NoError(t, err)
	_, err = OpenSharedRequestStore(t.Context(), place, "other")
	require.ErrorContains(t, err, "layout version 2")
}
