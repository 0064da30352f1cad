package cdc

import (
	"encoding/binary"
	"fmt"

	"github.com/exportd/exportd/snapshot"
)

// Row changes are most of the stream, and pglogrepl's decoder allocates a
// struct per column and copies every value byte by byte. decodeChange parses
// Insert, Update and Delete messages into reusable rows whose values alias
// the message buffer (valid while the message is applied: staging copies what
// it keeps). Other messages go through pglogrepl.Parse.

// change is a decoded Insert ('I'), Update ('U') or Delete ('D').
type change struct {
	kind      byte
	relation  uint32
	old       snapshot.Row // nil when the message carries no old tuple
	row       snapshot.Row // the new tuple (Insert, Update)
	unchanged []bool       // nil unless a value is an unchanged TOAST marker
}

// decoder holds the scratch memory reused from one message to the next.
type decoder struct {
	old, row  snapshot.Row
	unchanged []bool
}

// decodeChange decodes msg if it is an Insert, Update or Delete message;
// ok is false for any other message type.
func (d *decoder) decodeChange(msg []byte) (c change, ok bool, err error) {
	if len(msg) == 0 {
		return c, false, nil
	}
	c.kind = msg[0]
	switch c.kind {
	case 'I', 'U', 'D':
	default:
		return c, false, nil
	}
	if len(msg) < 6 {
		return c, true, fmt.Errorf("decode %c message: %d bytes", c.kind, len(msg))
	}
	c.relation = binary.BigEndian.Uint32(msg[1:])
	p := msg[5:]
	tag := p[0]
	p = p[1:]
	if tag == 'K' || tag == 'O' {
		if c.kind == 'I' {
			return c, true, fmt.Errorf("decode insert: unexpected old tuple")
		}
		var unchanged bool
		if c.old, p, unchanged, err = decodeTuple(p, d.old[:0], nil); err != nil {
			return c, true, fmt.Errorf("decode old tuple: %w", err)
		}
		if unchanged {
			return c, true, fmt.Errorf("decode old tuple: unchanged TOAST value in an old tuple")
		}
		d.old = c.old
		if c.kind == 'D' {
			return c, true, trailing(p)
		}
		if len(p) == 0 {
			return c, true, fmt.Errorf("decode update: missing new tuple")
		}
		tag, p = p[0], p[1:]
	}
	if tag != 'N' || c.kind == 'D' {
		return c, true, fmt.Errorf("decode %c message: unexpected tuple tag %q", c.kind, tag)
	}
	var anyUnchanged bool
	if c.row, p, anyUnchanged, err = decodeTuple(p, d.row[:0], &d.unchanged); err != nil {
		return c, true, fmt.Errorf("decode new tuple: %w", err)
	}
	d.row = c.row
	if anyUnchanged {
		if c.kind == 'I' {
			return c, true, fmt.Errorf("decode insert: unchanged TOAST value in a new row")
		}
		c.unchanged = d.unchanged
	}
	return c, true, trailing(p)
}

func trailing(p []byte) error {
	if len(p) != 0 {
		return fmt.Errorf("decode change: %d trailing bytes", len(p))
	}
	return nil
}

// decodeTuple parses TupleData into row. With unchanged non-nil, it records
// unchanged TOAST markers there (resized to the column count).
func decodeTuple(p []byte, row snapshot.Row, unchanged *[]bool) (snapshot.Row, []byte, bool, error) {
	if len(p) < 2 {
		return nil, nil, false, fmt.Errorf("tuple data: %d bytes", len(p))
	}
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	any := false
	if unchanged != nil {
		u := (*unchanged)[:0]
		for range n {
			u = append(u, false)
		}
		*unchanged = u
	}
	for i := 0; i < n; i++ {
		if len(p) == 0 {
			return nil, nil, false, fmt.Errorf("tuple data: column %d of %d missing", i+1, n)
		}
		kind := p[0]
		p = p[1:]
		switch kind {
		case 'n':
			row = append(row, nil)
		case 'u':
			if unchanged == nil {
				return nil, nil, true, nil
			}
			(*unchanged)[i] = true
			any = true
			row = append(row, nil)
		case 't':
			if len(p) < 4 {
				return nil, nil, false, fmt.Errorf("tuple data: column %d: truncated length", i+1)
			}
			l := int(binary.BigEndian.Uint32(p))
			p = p[4:]
			if l > len(p) {
				return nil, nil, false, fmt.Errorf("tuple data: column %d: %d bytes announced, %d left", i+1, l, len(p))
			}
			row = append(row, p[:l:l])
			p = p[l:]
		default:
			return nil, nil, false, fmt.Errorf("tuple data: column %d: unexpected kind %q", i+1, kind)
		}
	}
	return row, p, any, nil
}
