package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSchedulerFairness: a tenant with several queued requests gets one
// worker at a time, so another tenant's later request is not held up.
func TestSchedulerFairness(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q := newScheduler()
	q.add("a1", "A")
	q.add("a2", "A")
	q.add("a3", "A")
	q.add("b1", "B")
	q.add("a1", "A") // queued already: ignored

	id, tenant, ok := q.next(ctx) // worker 1
	require.True(t, ok)
	require.Equal(t, "a1", id)
	id2, tenant2, ok := q.next(ctx) // worker 2: A is busy, so B's request
	require.True(t, ok)
	require.Equal(t, "b1", id2)
	require.Equal(t, "B", tenant2)

	// Nothing else may start while A and B are both busy.
	got := make(chan string, 1)
	go func() {
		id, _, ok := q.next(ctx)
		if ok {
			got <- id
		}
	}()
	select {
	case id := <-got:
		t.Fatalf("%s started while its tenant was busy", id)
	case <-time.After(100 * time.Millisecond):
	}
	q.done(tenant) // A's first export ends
	select {
	case id := <-got:
		require.Equal(t, "a2", id)
	case <-ctx.Done():
		t.Fatal("a2 did not start after a1 ended")
	}
	q.close()
	_, _, ok = q.next(ctx)
	require.False(t, ok, "next after close")
}
