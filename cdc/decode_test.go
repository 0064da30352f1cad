package cdc

import (
	"encoding/binary"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/snapshot"
)

// tupleBytes encodes values as pgoutput TupleData: nil is NULL, "\x00u" an
// unchanged TOAST marker, anything else text.
func tupleBytes(vals ...*string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(vals)))
	for _, v := range vals {
		switch {
		case v == nil:
			b = append(b, 'n')
		case *v == "\x00u":
			b = append(b, 'u')
		default:
			b = append(b, 't')
			b = binary.BigEndian.AppendUint32(b, uint32(len(*v)))
			b = append(b, *v...)
		}
	}
	return b
}

func msgBytes(kind byte, rel uint32, parts ...any) []byte {
	b := binary.BigEndian.AppendUint32([]byte{kind}, rel)
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b = append(b, p)
		case []byte:
			b = append(b, p...)
		}
	}
	return b
}

func TestDecodeChangeMatchesPglogrepl(t *testing.T) {
	u := "\x00u"
	tests := []struct {
		name string
		msg  []byte
	}{
		{"insert", msgBytes('I', 7, byte('N'), tupleBytes(sp("1"), nil, sp(""), sp("a\tb\nc")))},
		{"update without old", msgBytes('U', 7, byte('N'), tupleBytes(sp("1"), &u, sp("x")))},
		{"update with key", msgBytes('U', 9, byte('K'), tupleBytes(sp("1"), nil, nil), byte('N'), tupleBytes(sp("2"), sp("t"), &u))},
		{"update with old row", msgBytes('U', 9, byte('O'), tupleBytes(sp("1"), sp("a"), sp("b")), byte('N'), tupleBytes(sp("1"), sp("a"), sp("c")))},
		{"delete key", msgBytes('D', 3, byte('K'), tupleBytes(sp("5"), nil))},
		{"delete old row", msgBytes('D', 3, byte('O'), tupleBytes(sp("5"), sp("")))},
	}
	var d decoder
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok, err := d.decodeChange(tt.msg)
			require.NoError(t, err)
			require.True(t, ok)
			want, err := pglogrepl.Parse(tt.msg)
			require.NoError(t, err)
			switch m := want.(type) {
			case *pglogrepl.InsertMessage:
				require.Equal(t, m.RelationID, c.relation)
				requireTuple(t, m.Tuple, c.row, c.unchanged)
				require.Nil(t, c.old)
			case *pglogrepl.UpdateMessage:
				require.Equal(t, m.RelationID, c.relation)
				requireTuple(t, m.NewTuple, c.row, c.unchanged)
				if m.OldTuple == nil {
					require.Nil(t, c.old)
				} else {
					requireTuple(t, m.OldTuple, c.old, nil)
				}
			case *pglogrepl.DeleteMessage:
				require.Equal(t, m.RelationID, c.relation)
				requireTuple(t, m.OldTuple, c.old, nil)
			default:
				t.Fatalf("pglogrepl parsed %T", want)
			}
		})
	}
}

func requireTuple(t *testing.T, td *pglogrepl.TupleData, row snapshot.Row, unchanged []bool) {
	t.Helper()
	require.Len(t, row, len(td.Columns))
	for i, col := range td.Columns {
		switch col.DataType {
		case 'n':
			require.Nil(t, row[i], "column %d", i)
		case 'u':
			require.True(t, unchanged[i], "column %d", i)
		case 't':
			require.NotNil(t, row[i], "column %d: text must not read as NULL", i)
			require.Equal(t, string(col.Data), string(row[i]), "column %d", i)
		}
	}
}

func TestDecodeChangeErrors(t *testing.T) {
	var d decoder
	for name, msg := range map[string][]byte{
		"short":              {'I', 0, 0},
		"truncated value":    msgBytes('I', 1, byte('N'), []byte{0, 1, 't', 0, 0, 0, 9, 'a'}),
		"missing column":     msgBytes('I', 1, byte('N'), []byte{0, 2, 'n'}),
		"unknown kind":       msgBytes('I', 1, byte('N'), []byte{0, 1, 'z'}),
		"delete without key": msgBytes('D', 1, byte('N'), tupleBytes(sp("1"))),
		"trailing bytes":     append(msgBytes('I', 1, byte('N'), tupleBytes(sp("1"))), 'x'),
		"unchanged in old":   msgBytes('D', 1, byte('K'), []byte{0, 1, 'u'}),
		"unchanged insert":   msgBytes('I', 1, byte('N'), []byte{0, 1, 'u'}),
	} {
		_, ok, err := d.decodeChange(msg)
		require.True(t, ok, name)
		require.Error(t, err, name)
	}
	_, ok, err := d.decodeChange([]byte{'B', 0, 0})
	require.NoError(t, err)
	require.False(t, ok, "a Begin message is left to pglogrepl")
}

func FuzzDecodeChange(f *testing.F) {
	f.Add(msgBytes('I', 7, byte('N'), tupleBytes(sp("1"), nil, sp(""))))
	f.Add(msgBytes('U', 9, byte('K'), tupleBytes(sp("1"), nil), byte('N'), tupleBytes(sp("2"), sp("t"))))
	f.Add(msgBytes('D', 3, byte('O'), tupleBytes(sp("5"), sp(""))))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var d decoder
		c, ok, err := d.decodeChange(msg)
		if !ok || err != nil {
			return
		}
		// Whatever decodes must agree with pglogrepl.
		want, perr := pglogrepl.Parse(msg)
		if perr != nil {
			return // pglogrepl is laxer or stricter on malformed input; no panic is what matters
		}
		switch m := want.(type) {
		case *pglogrepl.InsertMessage:
			requireTuple(t, m.Tuple, c.row, c.unchanged)
		case *pglogrepl.DeleteMessage:
			requireTuple(t, m.OldTuple, c.old, nil)
		}
	})
}
