// Package pgcsv writes CSV exactly as PostgreSQL's COPY ... TO STDOUT WITH
// (FORMAT csv, HEADER) prints it: comma-separated, LF line ends, NULL as an
// empty unquoted field, the empty string as "", and a value quoted only when it
// holds a comma, a double quote, CR or LF (or is empty, or is \. alone in a
// one-column row). encoding/csv differs (it quotes a leading space and rewrites
// CR), so exportd has its own writer.
package pgcsv

import (
	"bufio"
	"bytes"
	"io"
)

// Writer writes rows of text values (nil is NULL) as COPY CSV.
type Writer struct {
	w *bufio.Writer
	// Protect, if set, reports for each column whether spreadsheet formula
	// protection applies: a value starting with =, +, -, @, tab, CR or LF gets
	// a leading apostrophe.
	Protect []bool
}

// NewWriter returns a Writer buffering into w. Call Flush when done.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: bufio.NewWriterSize(w, 64<<10)}
}

// WriteHeader writes the column names (never formula-protected).
func (w *Writer) WriteHeader(names []string) error {
	for i, n := range names {
		if i > 0 {
			w.w.WriteByte(',')
		}
		w.field([]byte(n), len(names) == 1, false)
	}
	_, err := w.w.WriteString("\n")
	return err
}

// Write writes one row.
func (w *Writer) Write(row [][]byte) error {
	for i, v := range row {
		if i > 0 {
			w.w.WriteByte(',')
		}
		if v == nil {
			continue
		}
		w.field(v, len(row) == 1, i < len(w.Protect) && w.Protect[i])
	}
	return w.w.WriteByte('\n')
}

// Flush writes buffered data to the underlying writer.
func (w *Writer) Flush() error { return w.w.Flush() }

// NeedsProtection reports whether a text value would be read as a formula by
// a spreadsheet (OWASP CSV injection).
func NeedsProtection(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	switch v[0] {
	case '=', '+', '-', '@', '\t', '\r', '\n':
		return true
	}
	return false
}

func (w *Writer) field(v []byte, single, protect bool) {
	protect = protect && NeedsProtection(v)
	quote := len(v) == 0 || needsQuotes(v) || (single && string(v) == `\.`)
	if !quote {
		if protect {
			w.w.WriteByte('\'')
		}
		w.w.Write(v)
		return
	}
	w.w.WriteByte('"')
	if protect {
		w.w.WriteByte('\'')
	}
	for {
		i := bytes.IndexByte(v, '"')
		if i < 0 {
			w.w.Write(v)
			break
		}
		w.w.Write(v[:i+1])
		w.w.WriteByte('"')
		v = v[i+1:]
	}
	w.w.WriteByte('"')
}

// special marks the bytes that make COPY quote a value.
var special = [256]bool{',': true, '"': true, '\r': true, '\n': true}

// needsQuotes reports whether v holds a comma, a double quote, CR or LF. It
// is bytes.ContainsAny without building a set per call: rendering calls it
// for every value.
func needsQuotes(v []byte) bool {
	for _, c := range v {
		if special[c] {
			return true
		}
	}
	return false
}
