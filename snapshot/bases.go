package snapshot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// BaseFile is one tenant's base file of a table, as a Version reads it. A
// base file never changes: a fold that changes the tenant's rows writes a
// new file under a new name, so (ID, Schema) identifies the rows a Scan of
// a folded tenant returns.
type BaseFile struct {
	Tenant string // the tenant id's text
	// ID is the file's name prefixed with the store's random id (file
	// names are unique within a store only), e.g.
	// "3f2a…-base-000000000000002a".
	ID   string
	Rows int64
	// Schema is the table's schema generation the version reads the file
	// in: after a schema change the same file reads differently.
	Schema int
}

// BaseFiles returns the table's base files that still hold rows, one per
// tenant, sorted by tenant. It reads metadata only.
func (v *Version) BaseFiles(table string) []BaseFile {
	t, ok := v.dv.byName[table]
	if !ok {
		return nil
	}
	g := t.cur()
	var out []BaseFile
	for _, b := range v.dv.bases {
		if b.Table != t.ID || !v.dv.baseAlive(b) || len(b.Tenant) < 2 || b.Tenant[0] == 0 {
			continue // another table, truncated, or the NULL tenant (never exported)
		}
		out = append(out, BaseFile{Tenant: decodeValue(g.tenantKind, b.Tenant[1:]), ID: v.s.baseID(b), Rows: b.Rows, Schema: len(t.Gens) - 1})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Tenant < out[j].Tenant })
	return out
}

// Folded returns tenant's base file of table when this version's rows of the
// tenant's table are exactly that file's: no segment of the version holds a
// change to them. ok is false when some segment does, or when the tenant
// has no base file.
func (v *Version) Folded(ctx context.Context, table, tenant string) (_ BaseFile, ok bool, err error) {
	if err := ctx.Err(); err != nil {
		return BaseFile{}, false, err
	}
	t, found := v.dv.byName[table]
	if !found {
		return BaseFile{}, false, fmt.Errorf("folded: unknown table %s", table)
	}
	g := t.cur()
	tt := binary.BigEndian.AppendUint32(nil, t.ID)
	if tt, err = appendTenant(tt, g.tenantKind, []byte(tenant)); err != nil {
		return BaseFile{}, false, fmt.Errorf("folded %s: tenant: %w", table, err)
	}
	b := v.dv.bases[string(tt)]
	if b == nil || !v.dv.baseAlive(b) {
		return BaseFile{}, false, nil
	}
	s := v.s
	for _, sg := range v.dv.segs {
		if sg.MaxSeq < t.TruncSeq {
			continue
		}
		has, err := s.segHasPrefix(sg, tt)
		if err != nil {
			return BaseFile{}, false, fmt.Errorf("folded %s: %w", table, err)
		}
		if has {
			return BaseFile{}, false, nil
		}
	}
	return BaseFile{Tenant: tenant, ID: s.baseID(b), Rows: b.Rows, Schema: len(t.Gens) - 1}, true, nil
}

func (s *Store) baseID(b *baseMeta) string {
	return s.id + "-" + strings.TrimSuffix(b.name(), ".parquet")
}

// segHasPrefix reports whether segment sg holds an entry whose sort key
// begins with prefix.
func (s *Store) segHasPrefix(sg *segMeta, prefix []byte) (bool, error) {
	cf, err := s.files.acquire(sg.name())
	if err != nil {
		return false, err
	}
	defer s.files.release(cf)
	it := newSegIter(cf.f, s.lay, prefix, prefix, 1)
	has := it.next()
	return has, errors.Join(it.err(), it.close())
}
