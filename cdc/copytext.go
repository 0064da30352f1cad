package cdc

import (
	"bytes"
	"fmt"

	"github.com/exportd/exportd/snapshot"
)

// copyTextParser is an io.Writer that parses COPY ... TO STDOUT text-format
// output (tab-separated, \N for NULL, backslash escapes) as it streams in,
// calling emit once per row. The row and its values are only valid during the
// call: the staging copies what it keeps.
type copyTextParser struct {
	ncols   int
	emit    func(snapshot.Row) error
	carry   []byte // an incomplete line from the previous Write
	row     snapshot.Row
	arena   []byte // unescaped values of the current row
	escaped []escapedValue
	rows    int64
	bytes   int64
}

func newCopyTextParser(ncols int, emit func(snapshot.Row) error) *copyTextParser {
	return &copyTextParser{ncols: ncols, emit: emit, row: make(snapshot.Row, 0, ncols)}
}

func (p *copyTextParser) Write(b []byte) (int, error) {
	n := len(b)
	p.bytes += int64(n)
	if len(p.carry) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.carry = append(p.carry, b...)
			return n, nil
		}
		p.carry = append(p.carry, b[:i]...)
		if err := p.line(p.carry); err != nil {
			return 0, err
		}
		p.carry = p.carry[:0]
		b = b[i+1:]
	}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.carry = append(p.carry, b...)
			break
		}
		if err := p.line(b[:i]); err != nil {
			return 0, err
		}
		b = b[i+1:]
	}
	return n, nil
}

// finish reports an incomplete last line, which means the stream was cut.
func (p *copyTextParser) finish() error {
	if len(p.carry) > 0 {
		return fmt.Errorf("parse COPY output: %d bytes after the last complete row", len(p.carry))
	}
	return nil
}

func (p *copyTextParser) line(line []byte) error {
	p.row = p.row[:0]
	p.arena = p.arena[:0]
	p.escaped = p.escaped[:0]
	// bs is the offset in line of its next backslash (len(line) if none):
	// the fields before it are taken as they are, without a scan each.
	bs := bytes.IndexByte(line, '\\')
	if bs < 0 {
		bs = len(line)
	}
	off := 0 // offset in line of the current field
	for {
		end := bytes.IndexByte(line[off:], '\t')
		f := line[off:]
		if end >= 0 {
			f = f[:end]
		}
		switch {
		case off+len(f) <= bs:
			p.row = append(p.row, f)
		case len(f) == 2 && f[0] == '\\' && f[1] == 'N':
			p.row = append(p.row, nil)
		default:
			// The arena may move while it grows: slice it once the row is done.
			start := len(p.arena)
			var err error
			if p.arena, err = unescapeCopyText(p.arena, f); err != nil {
				return err
			}
			p.escaped = append(p.escaped, escapedValue{col: len(p.row), start: start, end: len(p.arena)})
			p.row = append(p.row, nil)
		}
		if end < 0 {
			break
		}
		off += end + 1
		if bs < off {
			if i := bytes.IndexByte(line[off:], '\\'); i >= 0 {
				bs = off + i
			} else {
				bs = len(line)
			}
		}
	}
	if len(p.row) != p.ncols {
		return fmt.Errorf("parse COPY output: row %d has %d fields, want %d", p.rows+1, len(p.row), p.ncols)
	}
	for _, e := range p.escaped {
		p.row[e.col] = p.arena[e.start:e.end:e.end]
	}
	p.rows++
	return p.emit(p.row)
}

type escapedValue struct{ col, start, end int }

// unescapeCopyText appends the value of one COPY text-format field to dst.
func unescapeCopyText(dst, f []byte) ([]byte, error) {
	for i := 0; i < len(f); i++ {
		// Copy the run up to the next backslash in one go.
		j := bytes.IndexByte(f[i:], '\\')
		if j < 0 {
			return append(dst, f[i:]...), nil
		}
		dst = append(dst, f[i:i+j]...)
		i += j + 1
		if i == len(f) {
			return dst, fmt.Errorf("parse COPY output: field ends in a lone backslash")
		}
		switch c := f[i]; c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'v':
			dst = append(dst, '\v')
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(c - '0')
			for j := 0; j < 2 && i+1 < len(f) && f[i+1] >= '0' && f[i+1] <= '7'; j++ {
				i++
				v = v*8 + int(f[i]-'0')
			}
			dst = append(dst, byte(v))
		case 'x':
			v, digits := 0, 0
			for digits < 2 && i+1 < len(f) && isHex(f[i+1]) {
				i++
				v = v*16 + hexVal(f[i])
				digits++
			}
			if digits == 0 {
				dst = append(dst, 'x')
			} else {
				dst = append(dst, byte(v))
			}
		default:
			dst = append(dst, c)
		}
	}
	return dst, nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	default:
		return int(c-'A') + 10
	}
}
