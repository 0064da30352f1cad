package snapshot

import (
	"encoding/binary"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/stretchr/testify/require"
)

// TestPageBoundsOnKeyOnly checks that segments and base files keep page
// bounds (min/max in the page index) for their sort key only. The writer
// holds every page's bounds, whole values, until the file is closed: with
// bounds on the payload, merging the runs of scale L's initial snapshot
// peaked at 913 MiB.
func TestPageBoundsOnKeyOnly(t *testing.T) {
	s := openTestStore(t, t.TempDir(), Options{policy: policy{fanIn: 32, manual: true}})
	loadWide(t, s)
	tb := s.cur.byName[wideSchema.Name]
	g := newWideRowGen(3)
	seg, err := newSegWriter(s.objs, segName(1<<40), s.lay, s.segCodec)
	require.NoError(t, err)
	base, err := newBaseWriter(s.objs, baseName(1<<41), tb.Name, "7", tb.cur(), s.codec)
	require.NoError(t, err)
	const n = 30000
	for i := range n {
		r := g.make(int64(i), 7)
		key, err := encodeKey(nil, tb.cur(), r)
		require.NoError(t, err)
		sk := binary.BigEndian.AppendUint32(nil, tb.ID)
		sk, _ = appendTenant(sk, kindInt, r[1])
		sk = append(sk, key...)
		require.NoError(t, seg.add(sk, int64(i), opUpsert, appendPayload(nil, 0, r)))
		require.NoError(t, base.add(key, r))
	}
	_, err = seg.finish()
	require.NoError(t, err)
	_, err = base.finish()
	require.NoError(t, err)

	check := func(name, keyCol string) {
		t.Helper()
		r, err := s.objs.Open(name)
		require.NoError(t, err)
		defer r.Close()
		pf, err := parquet.OpenFile(r, r.Size())
		require.NoError(t, err)
		kc, ok := pf.Schema().Lookup(keyCol)
		require.True(t, ok)
		pages := 0
		byteCols := map[int]bool{}
		for _, rg := range pf.RowGroups() {
			for ci, cc := range rg.ColumnChunks() {
				idx, err := cc.ColumnIndex()
				require.NoError(t, err)
				for p := range idx.NumPages() {
					pages++
					lo, hi := idx.MinValue(p), idx.MaxValue(p)
					if ci == kc.ColumnIndex {
						require.NotEmpty(t, lo.ByteArray(), "%s: key page %d has no lower bound", name, p)
						require.NotEmpty(t, hi.ByteArray(), "%s: key page %d has no upper bound", name, p)
					} else if cc.Type().Kind() == parquet.ByteArray {
						// (Fixed-size columns keep zeros instead: no cost.)
						byteCols[ci] = true
						require.Empty(t, lo.Bytes(), "%s: column %d page %d keeps a lower bound", name, ci, p)
						require.Empty(t, hi.Bytes(), "%s: column %d page %d keeps an upper bound", name, ci, p)
					}
				}
			}
		}
		require.Greater(t, pages, 20, "%s: too few pages to tell", name)
		require.NotEmpty(t, byteCols, "%s: no byte-array column besides the key", name)
	}
	check(segName(1<<40), "sk")
	check(baseName(1<<41), baseKeyColumn)
}
