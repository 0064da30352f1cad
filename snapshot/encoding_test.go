package snapshot

import (
	"bytes"
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func enc(t testing.TB, k valueKind, v string) []byte {
	t.Helper()
	b, err := appendValue(nil, k, []byte(v))
	require.NoError(t, err)
	require.Equal(t, len(b), valueLen(k, append(b, 0xAA, 0xBB)))
	return b
}

func TestIntKeyOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	vals := []int64{math.MinInt64, math.MinInt64 + 1, -1, 0, 1, math.MaxInt64}
	for range 500 {
		vals = append(vals, r.Int64()-r.Int64(), int64(r.IntN(1000)-500))
	}
	for _, a := range vals {
		ea := enc(t, kindInt, strconv.FormatInt(a, 10))
		require.Equal(t, strconv.FormatInt(a, 10), decodeValue(kindInt, ea))
		for _, b := range vals[:40] {
			eb := enc(t, kindInt, strconv.FormatInt(b, 10))
			require.Equal(t, cmp.Compare(a, b), bytes.Compare(ea, eb), "%d vs %d", a, b)
		}
	}
	for _, bad := range []string{"", "-", "1x", "99999999999999999999", "9223372036854775808", " 1"} {
		_, err := appendValue(nil, kindInt, []byte(bad))
		require.Error(t, err, bad)
	}
	_, err := appendValue(nil, kindInt, []byte("-9223372036854775808"))
	require.NoError(t, err)
}

func TestTextKeyOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte{0, 1, 'a', 'b', 0xFF}
	var vals []string
	for range 300 {
		n := r.IntN(5)
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		vals = append(vals, string(b))
	}
	for _, a := range vals {
		ea := enc(t, kindText, a)
		require.Equal(t, a, decodeValue(kindText, ea))
		for _, b := range vals[:60] {
			eb := enc(t, kindText, b)
			require.Equal(t, cmp.Compare(a, b), bytes.Compare(ea, eb), "%q vs %q", a, b)
			// Composite keys order like tuples.
			ca := append(slices.Clone(ea), enc(t, kindInt, "5")...)
			cb := append(slices.Clone(eb), enc(t, kindInt, "-7")...)
			want := cmp.Compare(a, b)
			if want == 0 {
				want = 1
			}
			require.Equal(t, want, bytes.Compare(ca, cb))
		}
	}
}

func TestUUIDKey(t *testing.T) {
	u := "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
	e := enc(t, kindUUID, u)
	require.Len(t, e, 16)
	require.Equal(t, u, decodeValue(kindUUID, e))
	require.Equal(t, e, enc(t, kindUUID, "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}"))
	require.Equal(t, -1, bytes.Compare(enc(t, kindUUID, "00000000-0000-0000-0000-0000000000ff"), e))
	for _, bad := range []string{"", "a0eebc99", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"} {
		_, err := appendValue(nil, kindUUID, []byte(bad))
		require.Error(t, err, bad)
	}
}

func TestTenantEncoding(t *testing.T) {
	n, err := appendTenant(nil, kindInt, nil)
	require.NoError(t, err)
	require.Equal(t, 1, tenantLen(kindInt, n))
	v, err := appendTenant(nil, kindText, []byte("x"))
	require.NoError(t, err)
	require.Equal(t, len(v), tenantLen(kindText, append(v, 9)))
	require.Equal(t, -1, bytes.Compare(n, v)) // NULL first
}

func TestPayloadRoundTrip(t *testing.T) {
	in := Row{nil, {}, []byte("abc"), bytes.Repeat([]byte{0}, 300)}
	p := appendPayload(nil, 7, in)
	gen, out, err := decodePayload(nil, p)
	require.NoError(t, err)
	require.Equal(t, 7, gen)
	require.Len(t, out, 4)
	require.Nil(t, out[0])
	require.NotNil(t, out[1])
	require.Empty(t, out[1])
	require.Equal(t, in[2], out[2])
	require.Equal(t, in[3], out[3])
	_, _, err = decodePayload(nil, p[:len(p)-1])
	require.Error(t, err)
}

func FuzzDecodePayload(f *testing.F) {
	f.Add(appendPayload(nil, 1, Row{nil, []byte("x")}))
	f.Add([]byte{0xFF, 0xFF})
	f.Fuzz(func(t *testing.T, p []byte) {
		_, vals, err := decodePayload(nil, p)
		if err == nil {
			// Re-encoding what was decoded decodes to the same values.
			gen, _ := payloadGen(p)
			_, again, err := decodePayload(nil, appendPayload(nil, gen, vals))
			require.NoError(t, err)
			require.Equal(t, len(vals), len(again))
		}
	})
}

func FuzzTextKeyOrder(f *testing.F) {
	f.Add([]byte("a"), []byte("a\x00"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		ea, err := appendValue(nil, kindText, a)
		require.NoError(t, err)
		eb, err := appendValue(nil, kindText, b)
		require.NoError(t, err)
		require.Equal(t, bytes.Compare(a, b), bytes.Compare(ea, eb))
		require.Equal(t, len(ea), valueLen(kindText, append(ea, b...)))
	})
}
