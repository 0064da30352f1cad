package snapshot

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestRefCompareOrder checks that refCompare orders keys as bytes.Compare
// does, for keys around the lengths where it switches strategy.
func TestRefCompareOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	key := func() []byte {
		b := make([]byte, rng.IntN(42))
		for i := range b {
			b[i] = byte(rng.IntN(3)) // few values: long equal prefixes
		}
		return b
	}
	sign := func(c int) int { return min(max(c, -1), 1) }
	for i := 0; i < 200_000; i++ {
		a, b := key(), key()
		if rng.IntN(2) == 0 && len(a) > 0 {
			b = append(append([]byte{}, a[:rng.IntN(len(a))]...), b...)
		}
		ra, rb := newSortRef(a, 0, 0), newSortRef(b, 0, 0)
		if got, want := sign(refCompare(&ra, &rb)), bytes.Compare(a, b); got != want {
			t.Fatalf("refCompare(%x, %x) = %d, bytes.Compare = %d", a, b, got, want)
		}
	}
}

// TestPayloadSize checks payloadSize against appendPayload.
func TestPayloadSize(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 20_000; i++ {
		row := make(Row, rng.IntN(20))
		for c := range row {
			if rng.IntN(5) > 0 {
				n := rng.IntN(300)
				if rng.IntN(50) == 0 {
					n = rng.IntN(1 << 20)
				}
				row[c] = make([]byte, n)
			}
		}
		gen := rng.IntN(1 << uint(rng.IntN(40)))
		if got, want := payloadSize(gen, row), len(appendPayload(nil, gen, row)); got != want {
			t.Fatalf("payloadSize = %d, appendPayload wrote %d bytes", got, want)
		}
	}
}
