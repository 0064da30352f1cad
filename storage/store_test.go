package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testStore is the conformance suite for Store implementations: every
// implementation's tests call it with an empty store. The implementations
// are Conditional too, and the suite checks that as well.
func testStore(t *testing.T, s Store) {
	t.Run("PutGet", func(t *testing.T) { testPutGet(t, s) })
	t.Run("Overwrite", func(t *testing.T) { testOverwrite(t, s) })
	t.Run("Missing", func(t *testing.T) { testMissing(t, s) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, s) })
	t.Run("FailedPut", func(t *testing.T) { testFailedPut(t, s) })
	t.Run("InvalidKeys", func(t *testing.T) { testInvalidKeys(t, s) })
	t.Run("ConcurrentPut", func(t *testing.T) { testConcurrentPut(t, s) })
	c, ok := s.(Conditional)
	require.True(t, ok, "%T is not Conditional", s)
	t.Run("Conditional", func(t *testing.T) { testConditional(t, s, c) })
	// List last: the subtests above leave the store empty.
	t.Run("List", func(t *testing.T) { testList(t, s) })
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func put(t *testing.T, s Store, key string, data []byte) {
	t.Helper()
	n, err := s.Put(t.Context(), key, bytes.NewReader(data))
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), n)
}

func get(t *testing.T, s Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(t.Context(), key)
	require.NoError(t, err)
	data, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	return data
}

// del deletes key; it is also used in cleanups, when t.Context is done.
func del(t *testing.T, s Store, key string) {
	t.Helper()
	require.NoError(t, s.Delete(context.Background(), key))
}

func testPutGet(t *testing.T, s Store) {
	for _, tc := range []struct {
		name string
		key  string
		data []byte
	}{
		{"small", "obj", []byte("hello")},
		{"empty", "empty", nil},
		{"nested", "tenants/42/bundle/candidates.parquet", []byte("PAR1")},
		{"large", "large", randomBytes(t, 3<<20+17)},
		{"unicode and spaces", "unicode/ü €/a file.txt", []byte("x")},
		{"dots inside segments", ".hidden/a..b/c.", []byte("y")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			put(t, s, tc.key, tc.data)
			t.Cleanup(func() { del(t, s, tc.key) })
			require.True(t, bytes.Equal(tc.data, get(t, s, tc.key)), "content")

			info, err := s.Stat(t.Context(), tc.key)
			require.NoError(t, err)
			require.Equal(t, tc.key, info.Key)
			require.Equal(t, int64(len(tc.data)), info.Size)
			require.False(t, info.ModTime.IsZero())
		})
	}
}

func testOverwrite(t *testing.T, s Store) {
	put(t, s, "ow/obj", []byte("first version, long"))
	put(t, s, "ow/obj", []byte("second"))
	require.Equal(t, "second", string(get(t, s, "ow/obj")))
	info, err := s.Stat(t.Context(), "ow/obj")
	require.NoError(t, err)
	require.Equal(t, int64(len("second")), info.Size)
	del(t, s, "ow/obj")
}

func testMissing(t *testing.T, s Store) {
	put(t, s, "present/obj", []byte("x"))
	t.Cleanup(func() { del(t, s, "present/obj") })
	for _, key := range []string{"missing", "missing/dir/obj", "present/obj/below", "present/other"} {
		t.Run(key, func(t *testing.T) {
			_, err := s.Get(t.Context(), key)
			require.ErrorIs(t, err, ErrNotExist)
			require.ErrorContains(t, err, key)
			_, err = s.Stat(t.Context(), key)
			require.ErrorIs(t, err, ErrNotExist)
		})
	}
}

func testDelete(t *testing.T, s Store) {
	put(t, s, "del/a", []byte("a"))
	put(t, s, "del/b", []byte("b"))
	del(t, s, "del/a")
	_, err := s.Get(t.Context(), "del/a")
	require.ErrorIs(t, err, ErrNotExist)
	require.Equal(t, "b", string(get(t, s, "del/b")), "a sibling survives")
	del(t, s, "del/a")         // again
	del(t, s, "never/existed") // never was
	del(t, s, "del/b")
}

// failingReader returns data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func testFailedPut(t *testing.T, s Store) {
	errBroken := errors.New("broken source")
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		r       io.Reader
		wantErr error
	}{
		{"reader fails", t.Context(), &failingReader{data: randomBytes(t, 100_000), err: errBroken}, errBroken},
		{"context canceled", canceled, strings.NewReader("new"), context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Put(tc.ctx, "failed/new", tc.r)
			require.ErrorIs(t, err, tc.wantErr)
			_, err = s.Stat(t.Context(), "failed/new")
			require.ErrorIs(t, err, ErrNotExist, "a failed Put creates no object")

			put(t, s, "failed/old", []byte("old"))
			t.Cleanup(func() { del(t, s, "failed/old") })
			r := tc.r
			if fr, ok := r.(*failingReader); ok {
				r = &failingReader{data: randomBytes(t, 100_000), err: fr.err}
			}
			_, err = s.Put(tc.ctx, "failed/old", r)
			require.ErrorIs(t, err, tc.wantErr)
			require.Equal(t, "old", string(get(t, s, "failed/old")), "a failed Put leaves the old object")
		})
	}
}

func testInvalidKeys(t *testing.T, s Store) {
	for _, tc := range []struct {
		key  string
		want string
	}{
		{"", "empty"},
		{"/abs", "absolute"},
		{"/", "absolute"},
		{"..", `".." segment`},
		{"a/../b", `".." segment`},
		{"../a", `".." segment`},
		{".", `"." segment`},
		{"a/./b", `"." segment`},
		{"a//b", "empty segment"},
		{"a/", "empty segment"},
		{`a\b`, "backslash"},
		{`..\a`, "backslash"},
		{"a\x00b", "NUL"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			ctx := t.Context()
			_, err := s.Put(ctx, tc.key, strings.NewReader("x"))
			require.ErrorContains(t, err, tc.want, "Put")
			_, err = s.Get(ctx, tc.key)
			require.ErrorContains(t, err, tc.want, "Get")
			require.NotErrorIs(t, err, ErrNotExist)
			_, err = s.Stat(ctx, tc.key)
			require.ErrorContains(t, err, tc.want, "Stat")
			require.ErrorContains(t, s.Delete(ctx, tc.key), tc.want, "Delete")
		})
	}
	for _, prefix := range []string{"/abs", "../", "a/../b", "a//", `a\`, "a\x00"} {
		t.Run("List "+prefix, func(t *testing.T) {
			err := s.List(t.Context(), prefix, func(ObjectInfo) error { return nil })
			require.ErrorContains(t, err, "invalid")
		})
	}
}

func testConcurrentPut(t *testing.T, s Store) {
	const writers = 8
	versions := make([][]byte, writers)
	for i := range versions {
		versions[i] = bytes.Repeat([]byte{byte('a' + i)}, 256<<10)
	}
	put(t, s, "race/obj", versions[0])
	t.Cleanup(func() { del(t, s, "race/obj") })

	var wg sync.WaitGroup
	for _, v := range versions {
		wg.Go(func() {
			_, err := s.Put(t.Context(), "race/obj", bytes.NewReader(v))
			assert.NoError(t, err)
		})
		wg.Go(func() {
			rc, err := s.Get(t.Context(), "race/obj")
			if !assert.NoError(t, err) {
				return
			}
			got, err := io.ReadAll(rc)
			assert.NoError(t, err)
			assert.NoError(t, rc.Close())
			assert.Contains(t, versions, got, "readers see whole objects")
		})
	}
	wg.Wait()
	require.Contains(t, versions, get(t, s, "race/obj"))
}

func testList(t *testing.T, s Store) {
	keys := []string{"b", "a/c/d", "ab", "a/b", "a.txt", "a/c/e/f", "a-"}
	for i, key := range keys {
		put(t, s, key, bytes.Repeat([]byte("x"), i))
	}
	sizes := map[string]int64{}
	for i, key := range keys {
		sizes[key] = int64(i)
	}
	t.Cleanup(func() {
		for _, key := range keys {
			del(t, s, key)
		}
	})
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a-", "a.txt", "a/b", "a/c/d", "a/c/e/f", "ab", "b"}},
		{"a", []string{"a-", "a.txt", "a/b", "a/c/d", "a/c/e/f", "ab"}},
		{"a/", []string{"a/b", "a/c/d", "a/c/e/f"}},
		{"a/c", []string{"a/c/d", "a/c/e/f"}},
		{"a/c/", []string{"a/c/d", "a/c/e/f"}},
		{"a/c/d", []string{"a/c/d"}},
		{"a/b/", nil},
		{"b", []string{"b"}},
		{"c", nil},
		{"missing/dir/", nil},
	} {
		t.Run("prefix "+tc.prefix, func(t *testing.T) {
			var got []string
			require.NoError(t, s.List(t.Context(), tc.prefix, func(o ObjectInfo) error {
				got = append(got, o.Key)
				require.Equal(t, sizes[o.Key], o.Size, o.Key)
				require.False(t, o.ModTime.IsZero())
				return nil
			}))
			require.Equal(t, tc.want, got)
		})
	}
	t.Run("callback error stops the listing", func(t *testing.T) {
		errStop := errors.New("stop")
		calls := 0
		err := s.List(t.Context(), "", func(ObjectInfo) error {
			calls++
			return errStop
		})
		require.ErrorIs(t, err, errStop)
		require.Equal(t, 1, calls)
	})
	t.Run("canceled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		err := s.List(ctx, "", func(ObjectInfo) error { return nil })
		require.ErrorIs(t, err, context.Canceled)
	})
}
