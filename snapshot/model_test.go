package snapshot

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// The model: every table's rows by identity (encoded key), values in the
// table's current schema.

type mTable struct {
	schema TableSchema
	g      *genMeta // for key/tenant encoding
	rows   map[string]Row
}

type model struct {
	tables  map[string]*mTable
	dropped map[string][]Column // dropped column names per table, for re-adding
}

func newModel() *model {
	return &model{tables: map[string]*mTable{}, dropped: map[string][]Column{}}
}

func (m *model) clone() *model {
	c := newModel()
	for n, t := range m.tables {
		rows := make(map[string]Row, len(t.rows))
		for k, r := range t.rows {
			rows[k] = r
		}
		c.tables[n] = &mTable{schema: t.schema, g: t.g, rows: rows}
	}
	for n, d := range m.dropped {
		c.dropped[n] = slices.Clone(d)
	}
	return c
}

func mustGen(ts TableSchema) *genMeta {
	g, err := newGen(ts, nil, 0)
	if err != nil {
		panic(err)
	}
	return &g
}

func (m *model) setSchema(ts TableSchema) {
	t := m.tables[ts.Name]
	if t == nil {
		m.tables[ts.Name] = &mTable{schema: ts, g: mustGen(ts), rows: map[string]Row{}}
		return
	}
	idx := map[string]int{}
	for i, c := range t.schema.Columns {
		idx[c.Name] = i
	}
	for k, r := range t.rows {
		nr := make(Row, len(ts.Columns))
		for i, c := range ts.Columns {
			if j, ok := idx[c.Name]; ok {
				nr[i] = r[j]
			}
		}
		t.rows[k] = nr
	}
	t.schema = ts
	t.g = mustGen(ts)
}

func (t *mTable) key(r Row) string {
	k, err := encodeKey(nil, t.g, r)
	if err != nil {
		panic(err)
	}
	return string(k)
}

func (t *mTable) tenantOf(r Row) string { return string(r[t.schema.TenantColumn]) }

// expected returns a tenant's rows in key order.
func (m *model) expected(table, tenant string) [][]string {
	t := m.tables[table]
	var keys []string
	for k, r := range t.rows {
		if t.tenantOf(r) == tenant {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out [][]string
	for _, k := range keys {
		out = append(out, rowStrings(t.rows[k]))
	}
	return out
}

// The workload: four tables covering the key/tenant shapes.

var (
	tenantsInt  = []string{"1", "2", "3", "4", "-5", "600"}
	tenantsUUID = []string{
		"00000000-0000-0000-0000-000000000001", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
		"ffffffff-0000-0000-0000-000000000000", "12345678-1234-1234-1234-123456789abc",
	}
)

func workloadTables() []TableSchema {
	return []TableSchema{
		{ // key holds the tenant
			Name:       "public.kt",
			Columns:    []Column{{"tenant_id", oidInt8}, {"id", oidInt8}, {"name", oidText}, {"data", oidText}, {"extra", oidVarchar}},
			KeyColumns: []int{0, 1}, TenantColumn: 0,
		},
		{ // key lacks the tenant: index
			Name:       "public.nt",
			Columns:    []Column{{"id", oidInt8}, {"a", oidText}, {"tenant_id", oidInt4}, {"b", oidText}},
			KeyColumns: []int{0}, TenantColumn: 2,
		},
		{ // composite text key without tenant
			Name:       "public.ck",
			Columns:    []Column{{"org", oidText}, {"v", oidText}, {"code", oidText}, {"tenant_id", oidInt8}},
			KeyColumns: []int{0, 2}, TenantColumn: 3,
		},
		{ // uuid key and tenant
			Name:       "public.ut",
			Columns:    []Column{{"id", oidUUID}, {"tenant", oidUUID}, {"payload", oidText}},
			KeyColumns: []int{0}, TenantColumn: 1,
		},
	}
}

func tenantsOf(ts TableSchema) []string {
	if ts.Columns[ts.TenantColumn].TypeOID == oidUUID {
		return tenantsUUID
	}
	return tenantsInt
}

type opKind int

const (
	opInsert opKind = iota
	opUpdate
	opDeleteRow
	opTruncate
	opSetSchema
)

type op struct {
	kind      opKind
	table     string
	old, row  Row
	unchanged []bool
	schema    TableSchema
	wantErr   error // expected error (errors.Is)
}

func (o op) String() string {
	return fmt.Sprintf("%d %s old=%q row=%q unchanged=%v", o.kind, o.table, o.old, o.row, o.unchanged)
}

// gen generates random operations against a working model.
type gen struct {
	r *rand.Rand
	m *model
}

func (g *gen) str() []byte {
	switch g.r.IntN(8) {
	case 0:
		return nil
	case 1:
		return []byte{}
	case 2:
		return []byte("with\x00nul\xff")
	}
	b := make([]byte, g.r.IntN(24))
	for i := range b {
		b[i] = byte('a' + g.r.IntN(26))
	}
	return b
}

func (g *gen) keyValue(c Column) []byte {
	switch c.TypeOID {
	case oidUUID:
		return fmt.Appendf(nil, "%08x-%04x-%04x-%04x-%012x", g.r.Uint32(), g.r.IntN(1<<16), g.r.IntN(1<<16), g.r.IntN(1<<16), g.r.Uint64()&(1<<48-1))
	case oidText, oidVarchar:
		opts := []string{"", "a", "a\x00", "a\x00b", "b", "ab", "zz", "Z", "é"}
		return []byte(opts[g.r.IntN(len(opts))] + strconv.Itoa(g.r.IntN(4)))
	}
	return []byte(strconv.Itoa(g.r.IntN(2000) - 1000))
}

func (g *gen) tenant(t *mTable) []byte {
	ts := tenantsOf(t.schema)
	return []byte(ts[g.r.IntN(len(ts))])
}

func isKey(ts TableSchema, i int) bool { return slices.Contains(ts.KeyColumns, i) }

// newRow makes a row with a key that is not in use.
func (g *gen) newRow(t *mTable) Row {
	for {
		r := make(Row, len(t.schema.Columns))
		for i, c := range t.schema.Columns {
			switch {
			case i == t.schema.TenantColumn:
				r[i] = g.tenant(t)
			case isKey(t.schema, i):
				r[i] = g.keyValue(c)
			default:
				r[i] = g.str()
			}
		}
		if _, used := t.rows[t.key(r)]; !used {
			return r
		}
	}
}

func (g *gen) pickRow(t *mTable) (string, Row, bool) {
	if len(t.rows) == 0 {
		return "", nil, false
	}
	keys := make([]string, 0, len(t.rows))
	for k := range t.rows {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	k := keys[g.r.IntN(len(keys))]
	return k, t.rows[k], true
}

func (g *gen) pickTable() *mTable {
	names := make([]string, 0, len(g.m.tables))
	for n := range g.m.tables {
		names = append(names, n)
	}
	sort.Strings(names)
	return g.m.tables[names[g.r.IntN(len(names))]]
}

// oldTuple returns what pgoutput sends as old tuple: the key columns only
// (REPLICA IDENTITY DEFAULT) or the whole row (FULL).
func (g *gen) oldTuple(t *mTable, r Row) Row {
	if g.r.IntN(3) == 0 {
		return slices.Clone(r)
	}
	old := make(Row, len(r))
	for _, i := range t.schema.KeyColumns {
		old[i] = r[i]
	}
	return old
}

// next generates one operation and applies it to the working model.
func (g *gen) next() op {
	t := g.pickTable()
	ts := t.schema
	x := g.r.IntN(100)
	switch {
	case x < 35:
		r := g.newRow(t)
		t.rows[t.key(r)] = r
		return op{kind: opInsert, table: ts.Name, row: r}
	case x < 75:
		k, prev, ok := g.pickRow(t)
		if !ok || g.r.IntN(25) == 0 {
			// An update with unchanged values of a row that is not staged.
			r := g.newRow(t)
			unchanged := make([]bool, len(r))
			for i := range r {
				if !isKey(ts, i) && i != ts.TenantColumn {
					unchanged[i] = true
					r[i] = nil
				}
			}
			if !slices.Contains(unchanged, true) {
				r = g.newRow(t)
				t.rows[t.key(r)] = r
				return op{kind: opInsert, table: ts.Name, row: r}
			}
			return op{kind: opUpdate, table: ts.Name, row: r, unchanged: unchanged, wantErr: ErrInconsistent}
		}
		r := make(Row, len(prev))
		copy(r, prev)
		var old Row
		switch g.r.IntN(4) {
		case 0: // key change (for kt also a tenant move), maybe with a tenant move
			nr := g.newRow(t)
			for _, i := range ts.KeyColumns {
				r[i] = nr[i]
			}
			if g.r.IntN(2) == 0 {
				r[ts.TenantColumn] = nr[ts.TenantColumn]
			}
			old = g.oldTuple(t, prev)
		case 1: // tenant move with the key unchanged
			if !isKey(ts, ts.TenantColumn) {
				r[ts.TenantColumn] = g.tenant(t)
			}
			if g.r.IntN(2) == 0 {
				old = g.oldTuple(t, prev)
			}
		default:
			if g.r.IntN(4) == 0 {
				old = g.oldTuple(t, prev)
			}
		}
		var unchanged []bool
		if g.r.IntN(2) == 0 {
			unchanged = make([]bool, len(r))
		}
		want := slices.Clone(r)
		for i := range r {
			if isKey(ts, i) || i == ts.TenantColumn {
				continue
			}
			if unchanged != nil && g.r.IntN(3) == 0 {
				unchanged[i] = true
				r[i] = nil // not sent
				want[i] = prev[i]
				continue
			}
			if g.r.IntN(2) == 0 {
				r[i] = g.str()
				want[i] = r[i]
			}
		}
		delete(t.rows, k)
		t.rows[t.key(want)] = want
		return op{kind: opUpdate, table: ts.Name, old: old, row: r, unchanged: unchanged}
	case x < 92:
		k, prev, ok := g.pickRow(t)
		if !ok || g.r.IntN(10) == 0 {
			return op{kind: opDeleteRow, table: ts.Name, old: g.oldTuple(t, g.newRow(t))} // not staged: no-op
		}
		delete(t.rows, k)
		return op{kind: opDeleteRow, table: ts.Name, old: g.oldTuple(t, prev)}
	case x < 94:
		t.rows = map[string]Row{}
		return op{kind: opTruncate, table: ts.Name}
	default:
		ns := g.schemaChange(ts)
		g.m.setSchema(ns)
		return op{kind: opSetSchema, table: ts.Name, schema: ns}
	}
}

// schemaChange adds a column (maybe one dropped before) or drops a non-key column.
func (g *gen) schemaChange(ts TableSchema) TableSchema {
	cols := slices.Clone(ts.Columns)
	keyNames := make([]string, len(ts.KeyColumns))
	for i, k := range ts.KeyColumns {
		keyNames[i] = cols[k].Name
	}
	tenantName := cols[ts.TenantColumn].Name
	var droppable []int
	for i, c := range cols {
		if !slices.Contains(keyNames, c.Name) && c.Name != tenantName {
			droppable = append(droppable, i)
		}
	}
	if len(droppable) > 0 && g.r.IntN(2) == 0 {
		i := droppable[g.r.IntN(len(droppable))]
		g.m.dropped[ts.Name] = append(g.m.dropped[ts.Name], cols[i])
		cols = slices.Delete(cols, i, i+1)
	} else {
		d := g.m.dropped[ts.Name]
		if len(d) > 0 && g.r.IntN(2) == 0 {
			j := g.r.IntN(len(d))
			cols = append(cols, d[j])
			g.m.dropped[ts.Name] = slices.Delete(d, j, j+1)
		} else {
			cols = append(cols, Column{Name: fmt.Sprintf("c%d", g.r.IntN(1_000_000)), TypeOID: oidText})
		}
	}
	ns := TableSchema{Name: ts.Name, Columns: cols, TenantColumn: slices.IndexFunc(cols, func(c Column) bool { return c.Name == tenantName })}
	for _, n := range keyNames {
		ns.KeyColumns = append(ns.KeyColumns, slices.IndexFunc(cols, func(c Column) bool { return c.Name == n }))
	}
	return ns
}

func applyOp(b *Batch, o op) error {
	switch o.kind {
	case opInsert:
		return b.Insert(o.table, o.row)
	case opUpdate:
		return b.Update(o.table, o.old, o.row, o.unchanged)
	case opDeleteRow:
		return b.Delete(o.table, o.old)
	case opTruncate:
		return b.Truncate(o.table)
	case opSetSchema:
		return b.SetSchema(o.schema)
	}
	return errors.New("unknown op")
}

// step is one unit of the deterministic workload: a Load or a Batch.
type step struct {
	load  bool
	rows  map[string][]Row // load: rows per table
	ops   []op
	abort bool
	after *model // the model after the step (if committed)
}

// makeStep generates step i from the model before it (which it does not change).
func makeStep(seed uint64, i int, m *model, maxOps int) step {
	r := rand.New(rand.NewPCG(seed, uint64(i)))
	if len(m.tables) == 0 || r.IntN(60) == 0 {
		// A (re)load: the current rows, some changed, plus new ones.
		w := m.clone()
		if len(m.tables) == 0 {
			w = newModel()
			for _, ts := range workloadTables() {
				w.setSchema(ts)
			}
		}
		g := &gen{r: r, m: w}
		for _, n := range sortedTables(w) {
			t := w.tables[n]
			for range r.IntN(40) {
				nr := g.newRow(t)
				t.rows[t.key(nr)] = nr
			}
			if k, _, ok := g.pickRow(t); ok && r.IntN(2) == 0 {
				delete(t.rows, k)
			}
		}
		st := step{load: true, rows: map[string][]Row{}, after: w}
		for _, n := range sortedTables(w) {
			t := w.tables[n]
			keys := make([]string, 0, len(t.rows))
			for k := range t.rows {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			r.Shuffle(len(keys), func(a, b int) { keys[a], keys[b] = keys[b], keys[a] })
			for _, k := range keys {
				st.rows[n] = append(st.rows[n], t.rows[k])
			}
		}
		return st
	}
	w := m.clone()
	g := &gen{r: r, m: w}
	n := 1 + r.IntN(maxOps)
	if r.IntN(10) == 0 {
		n *= 10
	}
	st := step{abort: r.IntN(10) == 0, after: w}
	for range n {
		st.ops = append(st.ops, g.next())
	}
	return st
}

func sortedTables(m *model) []string {
	var names []string
	for n := range m.tables {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func stepLSN(i int) LSN { return LSN(1000 + 10*i) }

// runStep applies a step to the store; it reports whether it committed.
func runStep(ctx context.Context, t testing.TB, s *Store, i int, st step) (bool, error) {
	if st.load {
		l, err := s.BeginLoad(ctx, "slot"+strconv.Itoa(i), stepLSN(i), schemasOf(st.after))
		if err != nil {
			return false, err
		}
		errc := make(chan error, 2*len(st.rows))
		for table, rows := range st.rows {
			half := len(rows) / 2
			for _, part := range [][]Row{rows[:half], rows[half:]} {
				w, err := l.Writer(table)
				if err != nil {
					return false, err
				}
				go func() {
					for _, r := range part {
						if err := w.Append(r); err != nil {
							errc <- err
							return
						}
					}
					errc <- w.Close()
				}()
			}
		}
		for range 2 * len(st.rows) {
			if err := <-errc; err != nil {
				return false, err
			}
		}
		if st.abort {
			return false, l.Abort()
		}
		return true, l.Commit(ctx)
	}
	b, err := s.Begin()
	if err != nil {
		return false, err
	}
	for _, o := range st.ops {
		err := applyOp(b, o)
		if o.wantErr != nil {
			if !errors.Is(err, o.wantErr) {
				b.Abort()
				return false, fmt.Errorf("op %v: got error %v, want %v", o, err, o.wantErr)
			}
			continue
		}
		if err != nil {
			b.Abort()
			return false, fmt.Errorf("op %v: %w", o, err)
		}
	}
	if st.abort {
		b.Abort()
		return false, nil
	}
	return true, b.Commit(ctx, stepLSN(i))
}

func schemasOf(m *model) []TableSchema {
	out := []TableSchema{}
	for _, n := range sortedTables(m) {
		out = append(out, m.tables[n].schema)
	}
	return out
}

// checkVersion compares every tenant of every table of v with the model.
func checkVersion(t testing.TB, v *Version, m *model) {
	t.Helper()
	require.Equal(t, schemasOf(m), v.Tables())
	for _, n := range sortedTables(m) {
		for _, tenant := range tenantsOf(m.tables[n].schema) {
			require.Equal(t, m.expected(n, tenant), scanAll(t, v, n, tenant), "table %s tenant %s at %d", n, tenant, v.LSN())
		}
	}
}

func checkStore(t testing.TB, s *Store, m *model) {
	t.Helper()
	v, err := s.Pin(context.Background())
	require.NoError(t, err)
	defer v.Close()
	checkVersion(t, v, m)
}
