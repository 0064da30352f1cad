package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
)

// Order-preserving encodings.
//
// A sort key ("sk") is table id (4 bytes big-endian) || tenant || key, where
// tenant is a tag byte (0 = NULL, 1 = value) followed by the value's
// encoding, and key is the concatenation of the key columns' encodings. Every
// value encoding is prefix-free and memcmp-ordered like the PostgreSQL type
// (text in the "C" collation), so sort keys order like the tuples
// (table, tenant, key...).

// valueKind is how a key or tenant value is encoded.
type valueKind uint8

const (
	kindInt  valueKind = iota + 1 // int2, int4, int8: 8 bytes, big-endian, sign bit flipped
	kindUUID                      // uuid: 16 raw bytes
	kindText                      // text, varchar, bpchar, name: 0x00 escaped as 0x00 0xFF, terminated by 0x00 0x01
)

// PostgreSQL type OIDs of the supported key and tenant types.
const (
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidText    = 25
	oidName    = 19
	oidBpchar  = 1042
	oidVarchar = 1043
	oidUUID    = 2950
)

func kindOf(oid uint32) (valueKind, error) {
	switch oid {
	case oidInt2, oidInt4, oidInt8:
		return kindInt, nil
	case oidUUID:
		return kindUUID, nil
	case oidText, oidVarchar, oidBpchar, oidName:
		return kindText, nil
	}
	return 0, fmt.Errorf("unsupported key or tenant type oid %d", oid)
}

var errBadValue = errors.New("malformed key value")

// appendValue appends the order-preserving encoding of the text value v.
func appendValue(dst []byte, k valueKind, v []byte) ([]byte, error) {
	switch k {
	case kindInt:
		n, ok := parseInt(v)
		if !ok {
			return dst, fmt.Errorf("%w: integer %q", errBadValue, v)
		}
		return binary.BigEndian.AppendUint64(dst, uint64(n)^(1<<63)), nil
	case kindUUID:
		return appendUUID(dst, v)
	case kindText:
		for {
			i := bytes.IndexByte(v, 0)
			if i < 0 {
				dst = append(dst, v...)
				break
			}
			dst = append(dst, v[:i]...)
			dst = append(dst, 0, 0xFF)
			v = v[i+1:]
		}
		return append(dst, 0, 1), nil
	}
	return dst, fmt.Errorf("%w: unknown kind %d", errBadValue, k)
}

// valueLen returns the length of the encoded value at the start of b, or -1.
func valueLen(k valueKind, b []byte) int {
	switch k {
	case kindInt:
		if len(b) < 8 {
			return -1
		}
		return 8
	case kindUUID:
		if len(b) < 16 {
			return -1
		}
		return 16
	case kindText:
		for i := 0; i+1 < len(b); i++ {
			if b[i] == 0 {
				if b[i+1] == 1 {
					return i + 2
				}
				i++ // escaped 0x00 0xFF
			}
		}
	}
	return -1
}

// decodeValue returns the text form of an encoded value (for logs and
// metadata only).
func decodeValue(k valueKind, b []byte) string {
	switch k {
	case kindInt:
		if len(b) >= 8 {
			return strconv.FormatInt(int64(binary.BigEndian.Uint64(b)^(1<<63)), 10)
		}
	case kindUUID:
		if len(b) >= 16 {
			const hex = "0123456789abcdef"
			out := make([]byte, 0, 36)
			for i := 0; i < 16; i++ {
				if i == 4 || i == 6 || i == 8 || i == 10 {
					out = append(out, '-')
				}
				out = append(out, hex[b[i]>>4], hex[b[i]&15])
			}
			return string(out)
		}
	case kindText:
		n := valueLen(k, b)
		if n >= 2 {
			return string(bytes.ReplaceAll(b[:n-2], []byte{0, 0xFF}, []byte{0}))
		}
	}
	return fmt.Sprintf("%x", b)
}

func parseInt(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 20 {
		return 0, false
	}
	neg := false
	i := 0
	if v[0] == '-' || v[0] == '+' {
		neg = v[0] == '-'
		i = 1
		if len(v) == 1 {
			return 0, false
		}
	}
	var n uint64
	for ; i < len(v); i++ {
		c := v[i] - '0'
		if c > 9 {
			return 0, false
		}
		if n > (1<<63)/10 {
			return 0, false
		}
		n = n*10 + uint64(c)
	}
	if neg {
		if n > 1<<63 {
			return 0, false
		}
		return -int64(n), true
	}
	if n > 1<<63-1 {
		return 0, false
	}
	return int64(n), true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// appendUUID accepts 32 hex digits with optional hyphens and braces, as
// PostgreSQL's uuid input does.
func appendUUID(dst []byte, v []byte) ([]byte, error) {
	var out [16]byte
	n := 0
	hi := true
	for _, c := range v {
		if c == '-' || c == '{' || c == '}' {
			continue
		}
		d, ok := unhex(c)
		if !ok || n >= 16 {
			return dst, fmt.Errorf("%w: uuid %q", errBadValue, v)
		}
		if hi {
			out[n] = d << 4
		} else {
			out[n] |= d
			n++
		}
		hi = !hi
	}
	if n != 16 || !hi {
		return dst, fmt.Errorf("%w: uuid %q", errBadValue, v)
	}
	return append(dst, out[:]...), nil
}

// appendTenant appends the tagged tenant encoding (NULL allowed).
func appendTenant(dst []byte, k valueKind, v []byte) ([]byte, error) {
	if v == nil {
		return append(dst, 0), nil
	}
	return appendValue(append(dst, 1), k, v)
}

// tenantLen returns the length of the tagged tenant encoding at the start of b, or -1.
func tenantLen(k valueKind, b []byte) int {
	if len(b) == 0 {
		return -1
	}
	if b[0] == 0 {
		return 1
	}
	n := valueLen(k, b[1:])
	if n < 0 {
		return -1
	}
	return n + 1
}

// Row payloads: uvarint(schema generation) uvarint(ncols), then per value
// uvarint(0) for NULL or uvarint(len+1) followed by the bytes.

func appendPayload(dst []byte, gen int, row Row) []byte {
	dst = binary.AppendUvarint(dst, uint64(gen))
	dst = binary.AppendUvarint(dst, uint64(len(row)))
	for _, v := range row {
		if v == nil {
			dst = append(dst, 0)
			continue
		}
		dst = binary.AppendUvarint(dst, uint64(len(v))+1)
		dst = append(dst, v...)
	}
	return dst
}

// payloadSize is len(appendPayload(nil, gen, row)).
func payloadSize(gen int, row Row) int {
	n := uvarintLen(uint64(gen)) + uvarintLen(uint64(len(row)))
	for _, v := range row {
		if v == nil {
			n++
			continue
		}
		n += uvarintLen(uint64(len(v))+1) + len(v)
	}
	return n
}

// uvarintLen is the length of binary.AppendUvarint's encoding of x.
func uvarintLen(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

var errBadPayload = errors.New("malformed row payload")

// payloadGen returns the schema generation of a payload.
func payloadGen(p []byte) (int, error) {
	g, n := binary.Uvarint(p)
	if n <= 0 {
		return 0, errBadPayload
	}
	return int(g), nil
}

// decodePayload appends the payload's values (slices of p, nil for NULL) to dst.
func decodePayload(dst [][]byte, p []byte) (gen int, vals [][]byte, err error) {
	g, n := binary.Uvarint(p)
	if n <= 0 {
		return 0, dst, errBadPayload
	}
	p = p[n:]
	c, n := binary.Uvarint(p)
	if n <= 0 {
		return 0, dst, errBadPayload
	}
	p = p[n:]
	for i := uint64(0); i < c; i++ {
		l, n := binary.Uvarint(p)
		if n <= 0 {
			return 0, dst, errBadPayload
		}
		p = p[n:]
		if l == 0 {
			dst = append(dst, nil)
			continue
		}
		l--
		if uint64(len(p)) < l {
			return 0, dst, errBadPayload
		}
		dst = append(dst, p[:l:l])
		p = p[l:]
	}
	return int(g), dst, nil
}
