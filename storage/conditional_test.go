package storage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testConditional is the conformance suite of Conditional, run by
// testStore on an empty store; it leaves the store empty.
func testConditional(t *testing.T, s Store, c Conditional) {
	t.Run("PutIfAbsent", func(t *testing.T) { testPutIfAbsent(t, s, c) })
	t.Run("PutIfMatch", func(t *testing.T) { testPutIfMatch(t, s, c) })
	t.Run("Missing", func(t *testing.T) { testConditionalMissing(t, c) })
	t.Run("InvalidKeys", func(t *testing.T) { testConditionalInvalidKeys(t, c) })
	t.Run("CreateRace", func(t *testing.T) { testCreateRace(t, s, c) })
	t.Run("Counter", func(t *testing.T) { testCounter(t, s, c) })
}

func testPutIfAbsent(t *testing.T, s Store, c Conditional) {
	ctx := t.Context()
	etag, err := c.PutIfAbsent(ctx, "cas/absent", []byte("first"))
	require.NoError(t, err)
	t.Cleanup(func() { del(t, s, "cas/absent") })
	require.NotEmpty(t, etag)
	data, got, err := c.GetETag(ctx, "cas/absent")
	require.NoError(t, err)
	require.Equal(t, "first", string(data))
	require.Equal(t, etag, got, "GetETag returns the ETag that PutIfAbsent did")
	require.Equal(t, "first", string(get(t, s, "cas/absent")), "Get reads what PutIfAbsent wrote")

	_, err = c.PutIfAbsent(ctx, "cas/absent", []byte("second"))
	require.ErrorIs(t, err, ErrPrecondition)
	require.ErrorContains(t, err, "cas/absent")
	data, got, err = c.GetETag(ctx, "cas/absent")
	require.NoError(t, err)
	require.Equal(t, "first", string(data), "a failed PutIfAbsent leaves the object")
	require.Equal(t, etag, got)

	t.Run("over a plain Put", func(t *testing.T) {
		put(t, s, "cas/plain", []byte("plain"))
		t.Cleanup(func() { del(t, s, "cas/plain") })
		_, err := c.PutIfAbsent(ctx, "cas/plain", []byte("conditional"))
		require.ErrorIs(t, err, ErrPrecondition)
		require.Equal(t, "plain", string(get(t, s, "cas/plain")))
	})
	t.Run("after Delete", func(t *testing.T) {
		_, err := c.PutIfAbsent(ctx, "cas/deleted", []byte("one"))
		require.NoError(t, err)
		del(t, s, "cas/deleted")
		_, err = c.PutIfAbsent(ctx, "cas/deleted", []byte("two"))
		require.NoError(t, err, "a deleted object is absent")
		t.Cleanup(func() { del(t, s, "cas/deleted") })
		require.Equal(t, "two", string(get(t, s, "cas/deleted")))
	})
	t.Run("empty", func(t *testing.T) {
		etag, err := c.PutIfAbsent(ctx, "cas/empty", nil)
		require.NoError(t, err)
		t.Cleanup(func() { del(t, s, "cas/empty") })
		data, got, err := c.GetETag(ctx, "cas/empty")
		require.NoError(t, err)
		require.Empty(t, data)
		require.Equal(t, etag, got)
	})
}

func testPutIfMatch(t *testing.T, s Store, c Conditional) {
	ctx := t.Context()
	etag1, err := c.PutIfAbsent(ctx, "cas/match", []byte("v1"))
	require.NoError(t, err)
	t.Cleanup(func() { del(t, s, "cas/match") })

	etag2, err := c.PutIfMatch(ctx, "cas/match", []byte("v2"), etag1)
	require.NoError(t, err)
	require.NotEmpty(t, etag2)
	require.NotEqual(t, etag1, etag2, "new content, new ETag")
	data, got, err := c.GetETag(ctx, "cas/match")
	require.NoError(t, err)
	require.Equal(t, "v2", string(data))
	require.Equal(t, etag2, got, "GetETag returns the ETag that PutIfMatch did")

	_, err = c.PutIfMatch(ctx, "cas/match", []byte("v3"), etag1)
	require.ErrorIs(t, err, ErrPrecondition, "a stale ETag")
	require.ErrorContains(t, err, "cas/match")
	data, got, err = c.GetETag(ctx, "cas/match")
	require.NoError(t, err)
	require.Equal(t, "v2", string(data), "a failed PutIfMatch leaves the object")
	require.Equal(t, etag2, got)

	_, err = c.PutIfMatch(ctx, "cas/match", []byte("v3"), `"0123456789abcdef0123456789abcdef"`)
	require.ErrorIs(t, err, ErrPrecondition, "an ETag never returned")

	t.Run("after a plain Put", func(t *testing.T) {
		put(t, s, "cas/match", []byte("plain"))
		_, err := c.PutIfMatch(ctx, "cas/match", []byte("v3"), etag2)
		require.ErrorIs(t, err, ErrPrecondition)
		require.Equal(t, "plain", string(get(t, s, "cas/match")))
		data, etag, err := c.GetETag(ctx, "cas/match")
		require.NoError(t, err)
		require.Equal(t, "plain", string(data))
		_, err = c.PutIfMatch(ctx, "cas/match", []byte("v3"), etag)
		require.NoError(t, err, "GetETag gives the ETag of a plain Put's object")
		require.Equal(t, "v3", string(get(t, s, "cas/match")))
	})
}

func testConditionalMissing(t *testing.T, c Conditional) {
	ctx := t.Context()
	for _, key := range []string{"cas/missing", "cas/missing/dir/obj"} {
		t.Run(key, func(t *testing.T) {
			_, err := c.PutIfMatch(ctx, key, []byte("x"), `"0123456789abcdef0123456789abcdef"`)
			require.ErrorIs(t, err, ErrNotExist)
			require.NotErrorIs(t, err, ErrPrecondition)
			require.ErrorContains(t, err, key)
			_, _, err = c.GetETag(ctx, key)
			require.ErrorIs(t, err, ErrNotExist)
			require.ErrorContains(t, err, key)
		})
	}
}

func testConditionalInvalidKeys(t *testing.T, c Conditional) {
	ctx := t.Context()
	for _, key := range []string{"", "/abs", "a/../b", "a//b", `a\b`} {
		t.Run(key, func(t *testing.T) {
			_, err := c.PutIfAbsent(ctx, key, []byte("x"))
			require.ErrorContains(t, err, "invalid key")
			_, err = c.PutIfMatch(ctx, key, []byte("x"), `"x"`)
			require.ErrorContains(t, err, "invalid key")
			_, _, err = c.GetETag(ctx, key)
			require.ErrorContains(t, err, "invalid key")
			require.NotErrorIs(t, err, ErrNotExist)
		})
	}
}

// casWriters is how many goroutines race in CreateRace and Counter.
const casWriters = 8

func testCreateRace(t *testing.T, s Store, c Conditional) {
	t.Cleanup(func() { del(t, s, "cas/race") })
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		mu      sync.Mutex
		winners []int
		etags   []string
	)
	for i := range casWriters {
		wg.Go(func() {
			<-start
			etag, err := c.PutIfAbsent(t.Context(), "cas/race", []byte("writer "+strconv.Itoa(i)))
			if err != nil {
				assert.ErrorIs(t, err, ErrPrecondition)
				return
			}
			mu.Lock()
			winners = append(winners, i)
			etags = append(etags, etag)
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	require.Len(t, winners, 1, "exactly one PutIfAbsent wins")
	data, etag, err := c.GetETag(t.Context(), "cas/race")
	require.NoError(t, err)
	require.Equal(t, "writer "+strconv.Itoa(winners[0]), string(data), "the winner's content is stored")
	require.Equal(t, etags[0], etag)
}

// testCounter increments a counter object from several goroutines with
// read-modify-write loops: without compare-and-swap, increments are lost.
func testCounter(t *testing.T, s Store, c Conditional) {
	const increments = 10 // per writer
	_, err := c.PutIfAbsent(t.Context(), "cas/counter", []byte("0"))
	require.NoError(t, err)
	t.Cleanup(func() { del(t, s, "cas/counter") })

	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		conflicts int
	)
	for range casWriters {
		wg.Go(func() {
			for range increments {
				n, err := increment(t.Context(), c, "cas/counter")
				if !assert.NoError(t, err) {
					return
				}
				mu.Lock()
				conflicts += n
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	data, _, err := c.GetETag(t.Context(), "cas/counter")
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(casWriters*increments), string(data), "no increment is lost")
	t.Logf("%d increments, %d conflicts retried", casWriters*increments, conflicts)
}

// increment adds one to the decimal counter at key, retrying on
// conflicts, and returns how many it met.
func increment(ctx context.Context, c Conditional, key string) (conflicts int, err error) {
	for {
		data, etag, err := c.GetETag(ctx, key)
		if err != nil {
			return conflicts, err
		}
		n, err := strconv.Atoi(string(data))
		if err != nil {
			return conflicts, fmt.Errorf("counter %q: %w", data, err)
		}
		_, err = c.PutIfMatch(ctx, key, []byte(strconv.Itoa(n+1)), etag)
		switch {
		case err == nil:
			return conflicts, nil
		case errors.Is(err, ErrPrecondition):
			conflicts++
		default:
			return conflicts, err
		}
	}
}
