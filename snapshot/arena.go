package snapshot

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"slices"
)

// arena holds pending row data in large chunks so buffering a change costs
// no per-value allocation. Chunks are kept across resets.
type arena struct {
	chunks    [][]byte
	cur       int
	chunkSize int
}

// span locates bytes in an arena.
type span struct {
	c, off, n uint32
}

func newArena(chunkSize int) *arena { return &arena{chunkSize: chunkSize} }

func (a *arena) add(b []byte) span {
	for {
		if a.cur < len(a.chunks) {
			c := a.chunks[a.cur]
			if cap(c)-len(c) >= len(b) {
				off := len(c)
				a.chunks[a.cur] = append(c, b...)
				return span{c: uint32(a.cur), off: uint32(off), n: uint32(len(b))}
			}
			if len(c) == 0 {
				// Too large for an empty chunk: give it its own.
				a.chunks[a.cur] = append(make([]byte, 0, len(b)), b...)
				return span{c: uint32(a.cur), off: 0, n: uint32(len(b))}
			}
			a.cur++
			continue
		}
		a.chunks = append(a.chunks, make([]byte, 0, max(a.chunkSize, len(b))))
	}
}

func (a *arena) get(s span) []byte {
	return a.chunks[s.c][s.off : s.off+s.n : s.off+s.n]
}

// reset forgets the content; oversized chunks are dropped.
func (a *arena) reset() {
	k := 0
	for _, c := range a.chunks {
		if cap(c) == a.chunkSize {
			a.chunks[k] = c[:0]
			k++
		}
	}
	clear(a.chunks[k:])
	a.chunks = a.chunks[:k]
	a.cur = 0
}

// sortRef is one entry to be sorted by (sk, seq) before it is written.
type sortRef struct {
	sk            []byte
	pfx, px2, px3 uint64 // the first 24 bytes of sk, zero-padded: most comparisons end here
	seq           int64
	ref           uint64 // caller's locator of the entry
}

func newSortRef(sk []byte, seq int64, ref uint64) sortRef {
	r := sortRef{sk: sk, seq: seq, ref: ref}
	if len(sk) >= 24 {
		r.pfx = binary.BigEndian.Uint64(sk)
		r.px2 = binary.BigEndian.Uint64(sk[8:])
		r.px3 = binary.BigEndian.Uint64(sk[16:])
		return r
	}
	var b [24]byte
	copy(b[:], sk)
	r.pfx = binary.BigEndian.Uint64(b[:])
	r.px2 = binary.BigEndian.Uint64(b[8:])
	r.px3 = binary.BigEndian.Uint64(b[16:])
	return r
}

// refCompare orders by sk.
func refCompare(a, b *sortRef) int {
	if a.pfx != b.pfx {
		return cmp.Compare(a.pfx, b.pfx)
	}
	if a.px2 != b.px2 {
		return cmp.Compare(a.px2, b.px2)
	}
	if a.px3 != b.px3 {
		return cmp.Compare(a.px3, b.px3)
	}
	if len(a.sk) <= 24 || len(b.sk) <= 24 {
		return bytes.Compare(a.sk, b.sk)
	}
	// Keys of one tenant's table share their first 24 bytes; their next 8
	// (the id, mostly) decide without a call to bytes.Compare.
	if len(a.sk) >= 32 && len(b.sk) >= 32 {
		x, y := binary.BigEndian.Uint64(a.sk[24:]), binary.BigEndian.Uint64(b.sk[24:])
		if x != y {
			return cmp.Compare(x, y)
		}
		return bytes.Compare(a.sk[32:], b.sk[32:])
	}
	return bytes.Compare(a.sk[24:], b.sk[24:])
}

// sortRefs sorts by (sk, seq).
func sortRefs(refs []sortRef) {
	slices.SortFunc(refs, func(a, b sortRef) int {
		if c := refCompare(&a, &b); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
}
