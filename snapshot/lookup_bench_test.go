package snapshot

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkSegGet measures a point lookup in a segment (what an Update with
// unchanged values costs per segment that holds the row).
func BenchmarkSegGet(b *testing.B) {
	for _, codec := range []string{"zstd", "snappy", "none"} {
		b.Run(codec, func(b *testing.B) {
			s := openTestStore(b, b.TempDir(), Options{SegmentCompression: codec, policy: policy{fanIn: 32, manual: true}})
			loadWide(b, s)
			g := newWideRowGen(1)
			sg := &segMeta{Num: 1 << 40}
			w, err := newSegWriter(s.objs, sg.name(), s.lay, s.segCodec)
			require.NoError(b, err)
			tb := s.cur.byName[wideSchema.Name]
			const n = 200000
			var sks [][]byte
			for i := range n {
				r := g.make(int64(i), 7)
				sk := binary.BigEndian.AppendUint32(nil, tb.ID)
				sk, _ = appendTenant(sk, kindInt, r[1])
				sk, _ = encodeKey(sk, tb.cur(), r)
				sks = append(sks, sk)
				require.NoError(b, w.add(sk, int64(i), opUpsert, appendPayload(nil, 0, r)))
			}
			size, err := w.finish()
			require.NoError(b, err)
			b.ReportMetric(float64(size)/n, "file_bytes/row")
			i := 0
			for b.Loop() {
				i++
				ok, _, _, _, err := s.segGet(sg, sks[(i*7919)%n], 0)
				if err != nil || !ok {
					b.Fatal(err, ok)
				}
			}
		})
	}
}
