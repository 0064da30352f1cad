package snapshot

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFolded checks Version.Folded and BaseFiles: a tenant's table is
// folded while no segment holds a change to it, and a fold of its changes
// gives it a base file with a new id; a truncate leaves no base file.
func TestFolded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTestStore(t, dir, Options{policy: policy{fanIn: 32, manual: true}})
	loadWide(t, s)
	g := newWideRowGen(1)
	lsn := LSN(100)
	commit := func(f func(b *Batch)) {
		t.Helper()
		b, err := s.Begin()
		require.NoError(t, err)
		f(b)
		lsn++
		require.NoError(t, b.Commit(ctx, lsn))
	}
	commit(func(b *Batch) {
		for i := range 300 {
			require.NoError(t, b.Insert(wideSchema.Name, g.make(int64(i), int64(1+i%3))))
		}
	})
	folded := func(tenant string) (BaseFile, bool) {
		t.Helper()
		v, err := s.Pin(ctx)
		require.NoError(t, err)
		defer v.Close()
		bf, ok, err := v.Folded(ctx, wideSchema.Name, tenant)
		require.NoError(t, err)
		return bf, ok
	}
	_, ok := folded("1")
	require.False(t, ok, "rows only in a segment")
	require.NoError(t, s.Compact(ctx))

	v, err := s.Pin(ctx)
	require.NoError(t, err)
	bases := v.BaseFiles(wideSchema.Name)
	require.NoError(t, v.Close())
	require.Len(t, bases, 3)
	for i, b := range bases {
		require.Equal(t, string(rune('1'+i)), b.Tenant)
		require.EqualValues(t, 100, b.Rows)
		require.Equal(t, 0, b.Schema)
		bf, ok := folded(b.Tenant)
		require.True(t, ok, "tenant %s after the fold", b.Tenant)
		require.Equal(t, b, bf)
	}
	_, ok = folded("4")
	require.False(t, ok, "a tenant without rows")

	// A change to tenant 2: only tenant 2 stops being folded.
	commit(func(b *Batch) {
		require.NoError(t, b.Insert(wideSchema.Name, g.make(1000, 2)))
	})
	_, ok = folded("2")
	require.False(t, ok, "tenant 2 has a change in a segment")
	for _, tenant := range []string{"1", "3"} {
		bf, ok := folded(tenant)
		require.True(t, ok, tenant)
		require.Equal(t, bases[tenant[0]-'1'].ID, bf.ID, "tenant %s keeps its base file", tenant)
	}
	require.NoError(t, s.Compact(ctx))
	bf, ok := folded("2")
	require.True(t, ok)
	require.NotEqual(t, bases[1].ID, bf.ID, "the fold wrote a new base file")
	require.EqualValues(t, 101, bf.Rows)

	// The store id survives a reopen and differs between stores.
	id := s.id
	require.Len(t, id, 24)
	require.NoError(t, s.Close())
	s = openTestStore(t, dir, Options{policy: policy{fanIn: 32, manual: true}})
	require.Equal(t, id, s.id)
	other := openTestStore(t, t.TempDir(), Options{})
	require.NotEqual(t, id, other.id)

	commit(func(b *Batch) { require.NoError(t, b.Truncate(wideSchema.Name)) })
	_, ok = folded("1")
	require.False(t, ok, "truncated")
	v, err = s.Pin(ctx)
	require.NoError(t, err)
	require.Empty(t, v.BaseFiles(wideSchema.Name))
	require.NoError(t, v.Close())
}
