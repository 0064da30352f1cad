package snapshot

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
)

// Metadata keys in pebble. Everything under "m/" is the manifest; "i/" is the
// key-to-tenant index; "p/" holds a Batch's spilled index updates until they
// are committed (index.go).
const (
	keyState     = "m/state"
	prefixTable  = "m/t/" // + table id (4 bytes)          -> tableMeta JSON
	prefixSeg    = "m/s/" // + file number (8 bytes)       -> segMeta JSON
	prefixBase   = "m/b/" // + table id + tenant encoding  -> baseMeta JSON
	prefixIndex  = "i/"   // + table id + index gen (4) + key encoding -> tenant encoding
	prefixManif  = "m/"
	manifestStop = "m0" // "m/" < all manifest keys < "m0"
)

// stateMeta is the store-wide part of the manifest.
type stateMeta struct {
	LSN          LSN    `json:"lsn"`
	NextSeq      int64  `json:"next_seq"`
	NextFile     uint64 `json:"next_file"`
	NextTable    uint32 `json:"next_table"`
	SnapshotDone bool   `json:"snapshot_done"`
	Slot         string `json:"slot"`
	// Epoch counts committed Loads; compaction results of an older epoch are dropped.
	Epoch uint64 `json:"epoch"`
	// ID is chosen at random when the store is created: file names are
	// unique within a store only.
	ID string `json:"id,omitempty"`
	// Term and Writer: in shared staging, the writer's term (each Acquire
	// starts a new one) and replica id.
	Term   uint64 `json:"term,omitempty"`
	Writer string `json:"writer,omitempty"`
}

// colMeta is one column of one schema generation. A column is identified by
// (Name, Since): a column dropped and re-added under the same name gets a
// new Since, so old values are not resurrected.
type colMeta struct {
	Name    string `json:"name"`
	TypeOID uint32 `json:"type_oid"`
	Since   int64  `json:"since"`
}

// genMeta is one schema generation of a table. Payloads record the
// generation they were written under.
type genMeta struct {
	Seq          int64     `json:"seq"`
	Cols         []colMeta `json:"cols"`
	KeyCols      []int     `json:"key_cols"`
	TenantCol    int       `json:"tenant_col"`
	keyKinds     []valueKind
	tenantKind   valueKind
	tenantInKey  bool
	colsByIdent  map[colIdent]int
	cachedSchema TableSchema
}

type colIdent struct {
	name  string
	since int64
}

// tableMeta is a table's manifest entry. It is immutable once published in
// a dataVer; writers copy it before changing it.
type tableMeta struct {
	ID   uint32    `json:"id"`
	Name string    `json:"name"`
	Gens []genMeta `json:"gens"`
	// TruncSeq: changes with a smaller seq are gone (TRUNCATE).
	TruncSeq int64 `json:"trunc_seq"`
	// IdxGen is the generation of the table's key-to-tenant index entries;
	// it changes on TRUNCATE so old entries are ignored (and range-deleted).
	IdxGen uint32 `json:"idx_gen"`
}

// segMeta describes a delta segment.
type segMeta struct {
	Num    uint64 `json:"num"`
	MinSeq int64  `json:"min_seq"`
	MaxSeq int64  `json:"max_seq"`
	Rows   int64  `json:"rows"`
	Size   int64  `json:"size"`
	// Created is the Unix time the segment was written (for age-based folds).
	Created int64 `json:"created,omitempty"`
}

func (s *segMeta) name() string { return segName(s.Num) }

func segName(num uint64) string  { return fmt.Sprintf("seg-%016x.parquet", num) }
func baseName(num uint64) string { return fmt.Sprintf("base-%016x.parquet", num) }

// baseMeta describes a base file: the rows of one (table, tenant) with every
// change up to seq H folded in.
type baseMeta struct {
	Num    uint64 `json:"num"`
	Table  uint32 `json:"table"`
	Tenant []byte `json:"tenant"`
	H      int64  `json:"h"`
	Rows   int64  `json:"rows"`
	Size   int64  `json:"size"`
}

func (b *baseMeta) name() string { return baseName(b.Num) }

// ttKey is the (table, tenant) prefix of sort keys, used as map key for bases.
func ttKey(table uint32, tenant []byte) string {
	b := make([]byte, 4, 4+len(tenant))
	binary.BigEndian.PutUint32(b, table)
	return string(append(b, tenant...))
}

func (t *tableMeta) cur() *genMeta { return &t.Gens[len(t.Gens)-1] }

// clone copies t deeply enough for a writer to change it.
func (t *tableMeta) clone() *tableMeta {
	c := *t
	c.Gens = slices.Clone(t.Gens)
	return &c
}

// prepare fills the derived fields of every generation.
func (t *tableMeta) prepare() error {
	for i := range t.Gens {
		if err := t.Gens[i].prepare(t.Name); err != nil {
			return fmt.Errorf("prepare table %s: %w", t.Name, err)
		}
	}
	return nil
}

func (g *genMeta) prepare(name string) error {
	if len(g.KeyCols) == 0 {
		return fmt.Errorf("no key columns")
	}
	if g.TenantCol < 0 || g.TenantCol >= len(g.Cols) {
		return fmt.Errorf("tenant column %d out of range", g.TenantCol)
	}
	g.keyKinds = make([]valueKind, len(g.KeyCols))
	g.tenantInKey = false
	for i, c := range g.KeyCols {
		if c < 0 || c >= len(g.Cols) {
			return fmt.Errorf("key column %d out of range", c)
		}
		k, err := kindOf(g.Cols[c].TypeOID)
		if err != nil {
			return fmt.Errorf("key column %s: %w", g.Cols[c].Name, err)
		}
		g.keyKinds[i] = k
		if c == g.TenantCol {
			g.tenantInKey = true
		}
	}
	k, err := kindOf(g.Cols[g.TenantCol].TypeOID)
	if err != nil {
		return fmt.Errorf("tenant column %s: %w", g.Cols[g.TenantCol].Name, err)
	}
	g.tenantKind = k
	g.colsByIdent = make(map[colIdent]int, len(g.Cols))
	seen := make(map[string]bool, len(g.Cols))
	cols := make([]Column, len(g.Cols))
	for i, c := range g.Cols {
		if c.Name == baseKeyColumn {
			return fmt.Errorf("column name %s is reserved", c.Name)
		}
		if seen[c.Name] {
			return fmt.Errorf("duplicate column %s", c.Name)
		}
		seen[c.Name] = true
		g.colsByIdent[colIdent{c.Name, c.Since}] = i
		cols[i] = Column{Name: c.Name, TypeOID: c.TypeOID}
	}
	g.cachedSchema = TableSchema{Name: name, Columns: cols, KeyColumns: slices.Clone(g.KeyCols), TenantColumn: g.TenantCol}
	return nil
}

// schema returns a copy of the generation's TableSchema.
func (g *genMeta) schema() TableSchema {
	s := g.cachedSchema
	s.Columns = slices.Clone(s.Columns)
	s.KeyColumns = slices.Clone(s.KeyColumns)
	return s
}

// colMap maps the columns of generation "to" onto the value indexes of
// generation "from": result[i] is the index in from of to's column i, or -1
// (the column did not exist then: NULL).
func colMap(from, to *genMeta) []int {
	m := make([]int, len(to.Cols))
	for i, c := range to.Cols {
		j, ok := from.colsByIdent[colIdent{c.Name, c.Since}]
		if !ok {
			j = -1
		}
		m[i] = j
	}
	return m
}

// sameKey reports whether two generations encode keys and tenants alike.
func sameKey(a, b *genMeta) bool {
	if len(a.KeyCols) != len(b.KeyCols) || a.tenantKind != b.tenantKind ||
		a.Cols[a.TenantCol].Name != b.Cols[b.TenantCol].Name {
		return false
	}
	for i := range a.KeyCols {
		if a.keyKinds[i] != b.keyKinds[i] || a.Cols[a.KeyCols[i]].Name != b.Cols[b.KeyCols[i]].Name {
			return false
		}
	}
	return true
}

// newGen builds the generation for schema s. Columns whose name exists in
// prev keep their Since; new ones get since.
func newGen(s TableSchema, prev *genMeta, seq int64) (genMeta, error) {
	g := genMeta{Seq: seq, KeyCols: slices.Clone(s.KeyColumns), TenantCol: s.TenantColumn}
	for _, c := range s.Columns {
		since := seq
		if prev != nil {
			for _, pc := range prev.Cols {
				if pc.Name == c.Name {
					since = pc.Since
					break
				}
			}
		}
		g.Cols = append(g.Cols, colMeta{Name: c.Name, TypeOID: c.TypeOID, Since: since})
	}
	if err := g.prepare(s.Name); err != nil {
		return genMeta{}, fmt.Errorf("table %s: %w", s.Name, err)
	}
	return g, nil
}

func tableKey(id uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte(prefixTable), id)
}

func segKey(num uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(prefixSeg), num)
}

func baseKey(table uint32, tenant []byte) []byte {
	return append(binary.BigEndian.AppendUint32([]byte(prefixBase), table), tenant...)
}

func indexPrefix(table, gen uint32) []byte {
	return appendIndexPrefix(nil, table, gen)
}

func appendIndexPrefix(dst []byte, table, gen uint32) []byte {
	dst = append(dst, prefixIndex...)
	dst = binary.BigEndian.AppendUint32(dst, table)
	return binary.BigEndian.AppendUint32(dst, gen)
}

func indexTablePrefix(table uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte(prefixIndex), table)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := slices.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("marshal manifest entry: %v", err))
	}
	return b
}
