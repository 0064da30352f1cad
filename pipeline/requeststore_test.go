package pipeline

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func openStore(t *testing.T, dir string) *RequestStore {
	t.Helper()
	s, err := OpenRequestStore(dir)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func record(id, tenant string, state RequestState) RequestRecord {
	return RequestRecord{
		Request: Request{Version: 1, RequestID: id, TenantID: tenant, RequestedBy: "7",
			RequestedAt: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)},
		State: state,
	}
}

func ids(recs []RequestRecord) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Request.RequestID)
	}
	return out
}

func TestRequestStoreSurvivesReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), RequestStoreDir)
	s, err := OpenRequestStore(dir)
	require.NoError(t, err)
	clock := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }

	exp := clock.Add(time.Hour)
	rec := record("r1", "42", StateReceived)
	_, created, err := s.Create(&rec)
	require.NoError(t, err)
	require.True(t, created)

	clock = clock.Add(time.Minute)
	rec.State = StateCompleted
	rec.Fence = "0/16B3748"
	rec.Attempts = 2
	rec.Result = &Event{Version: 1, Type: EventCompleted, RequestID: "r1", TenantID: "42", At: clock, ExpiresAt: &exp, MissingFiles: 3}
	rec.CompletedEventSent = true
	rec.CreatedAt = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	require.NoError(t, s.Put(&rec))
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close twice")
	_, _, err = s.Get("r1")
	require.ErrorIs(t, err, errStoreClosed)
	require.ErrorIs(t, s.Put(&rec), errStoreClosed)

	s = openStore(t, dir)
	got, ok, err := s.Get("r1")
	require.NoError(t, err)
	require.True(t, ok)
	rec.UpdatedAt = clock
	require.Equal(t, rec, got)

	_, ok, err = s.Get("nope")
	require.NoError(t, err)
	require.False(t, ok)

	byTenant, err := s.ByTenant("42")
	require.NoError(t, err)
	require.Equal(t, []RequestRecord{rec}, byTenant)
	byState, err := s.ByState(StateCompleted)
	require.NoError(t, err)
	require.Equal(t, []string{"r1"}, ids(byState))
}

func TestRequestStoreIndexes(t *testing.T) {
	s := openStore(t, t.TempDir())
	put := func(id, tenant string, state RequestState) {
		t.Helper()
		require.NoError(t, s.Put(ptr(record(id, tenant, state))))
	}
	check := func(wantTenant map[string][]string, wantState map[RequestState][]string) {
		t.Helper()
		for tenant, want := range wantTenant {
			got, err := s.ByTenant(tenant)
			require.NoError(t, err)
			require.Equal(t, want, ids(got), "tenant %s", tenant)
			for _, r := range got {
				require.Equal(t, tenant, r.Request.TenantID)
			}
		}
		for state, want := range wantState {
			got, err := s.ByState(state)
			require.NoError(t, err)
			require.Equal(t, want, ids(got), "state %s", state)
			for _, r := range got {
				require.Equal(t, state, r.State)
			}
		}
	}

	put("b", "1", StateReceived)
	put("a", "1", StateReceived)
	put("c", "10", StateBlockedUnpaid) // "1" must not match tenant "10"
	put("d", "2", StateRendering)
	check(map[string][]string{"1": {"a", "b"}, "10": {"c"}, "2": {"d"}, "3": nil},
		map[RequestState][]string{StateReceived: {"a", "b"}, StateBlockedUnpaid: {"c"}, StateRendering: {"d"}, StateCompleted: nil})

	put("a", "1", StateAccepted)
	put("c", "10", StateRendering)
	put("b", "1", StateRejected)
	check(map[string][]string{"1": {"a", "b"}, "10": {"c"}, "2": {"d"}},
		map[RequestState][]string{StateReceived: nil, StateAccepted: {"a"}, StateBlockedUnpaid: nil, StateRendering: {"c", "d"}, StateRejected: {"b"}})

	// Moving a request to another tenant (not expected, but kept consistent).
	put("d", "3", StateCompleted)
	check(map[string][]string{"2": nil, "3": {"d"}},
		map[RequestState][]string{StateRendering: {"c"}, StateCompleted: {"d"}})

	// Same state again leaves one index entry.
	put("d", "3", StateCompleted)
	check(map[string][]string{"3": {"d"}}, map[RequestState][]string{StateCompleted: {"d"}})
}

func TestRequestStoreRejectsBadRecords(t *testing.T) {
	s := openStore(t, t.TempDir())
	require.Error(t, s.Put(ptr(record("", "1", StateReceived))))
	require.Error(t, s.Put(ptr(record("a\x00b", "1", StateReceived))))
	require.Error(t, s.Put(ptr(record("a", "1\x00", StateReceived))))
	require.Error(t, s.Put(ptr(record("a", "1", "done"))))
	_, _, err := s.Create(ptr(record("a", "1", "")))
	require.Error(t, err)
	recs, err := s.ByTenant("1")
	require.NoError(t, err)
	require.Empty(t, recs)
}

func TestRequestStoreCreateOnce(t *testing.T) {
	s := openStore(t, t.TempDir())
	const workers = 8
	for round := range 20 {
		id := fmt.Sprintf("req-%d", round)
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			created int
			seen    []RequestRecord
		)
		for w := range workers {
			wg.Go(func() {
				rec := record(id, "42", StateReceived)
				rec.Request.RequestedBy = fmt.Sprint(w)
				existing, ok, err := s.Create(&rec)
				require.NoError(t, err)
				mu.Lock()
				defer mu.Unlock()
				if ok {
					created++
				} else {
					seen = append(seen, existing)
				}
			})
		}
		wg.Wait()
		require.Equal(t, 1, created, "id %s", id)
		require.Len(t, seen, workers-1)
		stored, ok, err := s.Get(id)
		require.NoError(t, err)
		require.True(t, ok)
		for _, e := range seen {
			require.Equal(t, stored, e, "every loser sees the winner's record")
		}
	}
	recs, err := s.ByTenant("42")
	require.NoError(t, err)
	require.Len(t, recs, 20)
	recs, err = s.ByState(StateReceived)
	require.NoError(t, err)
	require.Len(t, recs, 20)
}

func TestRequestStoreConcurrentPutsKeepIndexes(t *testing.T) {
	s := openStore(t, t.TempDir())
	states := []RequestState{StateReceived, StateAccepted, StateRendering, StateCompleted}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				rec := record(fmt.Sprintf("r%d", i%3), "7", states[(w+i)%len(states)])
				require.NoError(t, s.Put(&rec))
				_, err := s.ByState(rec.State)
				require.NoError(t, err)
			}
		})
	}
	wg.Wait()
	total := 0
	for _, st := range states {
		recs, err := s.ByState(st)
		require.NoError(t, err)
		total += len(recs)
	}
	require.Equal(t, 3, total, "each record is in exactly one state index")
}

func ptr[T any](v T) *T { return &v }
