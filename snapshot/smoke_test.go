package snapshot

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

var (
	schemaOrders = TableSchema{
		Name: "public.orders",
		Columns: []Column{
			{Name: "tenant_id", TypeOID: oidInt8}, {Name: "id", TypeOID: oidInt8}, {Name: "note", TypeOID: oidText},
		},
		KeyColumns:   []int{0, 1},
		TenantColumn: 0,
	}
	schemaItems = TableSchema{
		Name: "public.items",
		Columns: []Column{
			{Name: "id", TypeOID: oidInt4}, {Name: "tenant_id", TypeOID: oidInt8}, {Name: "body", TypeOID: oidText},
		},
		KeyColumns:   []int{0},
		TenantColumn: 1,
	}
)

func TestSmoke(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTestStore(t, dir, Options{})
	l, err := s.BeginLoad(ctx, "slot1", 100, []TableSchema{schemaOrders, schemaItems})
	require.NoError(t, err)
	w, err := l.Writer("public.orders")
	require.NoError(t, err)
	require.NoError(t, w.Append(row("1", "2", "b")))
	require.NoError(t, w.Append(row("1", "1", "a")))
	require.NoError(t, w.Append(row("2", "1", nil)))
	require.NoError(t, w.Close())
	w, err = l.Writer("public.items")
	require.NoError(t, err)
	require.NoError(t, w.Append(row("10", "1", "x")))
	require.NoError(t, w.Append(row("-5", "2", "")))
	require.NoError(t, w.Close())
	require.NoError(t, l.Commit(ctx))
	require.Equal(t, State{LSN: 100, SnapshotDone: true, Slot: "slot1"}, s.State())

	v, err := s.Pin(ctx)
	require.NoError(t, err)
	require.Equal(t, [][]string{{"1", "1", "a"}, {"1", "2", "b"}}, scanAll(t, v, "public.orders", "1"))
	require.Equal(t, [][]string{{"2", "1", nullText}}, scanAll(t, v, "public.orders", "2"))
	require.Equal(t, [][]string{{"-5", "2", ""}}, scanAll(t, v, "public.items", "2"))

	b, err := s.Begin()
	require.NoError(t, err)
	require.NoError(t, b.Insert("public.orders", row("1", "3", "c")))
	require.NoError(t, b.Update("public.items", nil, row("10", "2", nil), []bool{false, false, true})) // move tenant 1 -> 2, body unchanged
	require.NoError(t, b.Delete("public.orders", row("2", "1", nil)))
	require.NoError(t, b.Commit(ctx, 200))
	require.Equal(t, LSN(200), s.State().LSN)

	// The old version is unchanged.
	require.Equal(t, [][]string{{"1", "1", "a"}, {"1", "2", "b"}}, scanAll(t, v, "public.orders", "1"))
	require.NoError(t, v.Close())

	check := func(s *Store) {
		v, err := s.Pin(ctx)
		require.NoError(t, err)
		defer v.Close()
		require.Equal(t, [][]string{{"1", "1", "a"}, {"1", "2", "b"}, {"1", "3", "c"}}, scanAll(t, v, "public.orders", "1"))
		require.Empty(t, scanAll(t, v, "public.orders", "2"))
		require.Empty(t, scanAll(t, v, "public.items", "1"))
		require.Equal(t, [][]string{{"-5", "2", ""}, {"10", "2", "x"}}, scanAll(t, v, "public.items", "2"))
	}
	check(s)
	require.NoError(t, s.Compact(ctx))
	st := s.Stats()
	require.Equal(t, 0, st.Segments)
	require.Equal(t, 2, st.BaseFiles) // orders/1 and items/2
	check(s)
	require.NoError(t, s.Close())
	s2 := openTestStore(t, dir, Options{})
	check(s2)
	require.Equal(t, State{LSN: 200, SnapshotDone: true, Slot: "slot1"}, s2.State())
}
