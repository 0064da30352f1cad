package pipeline

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/pgtest"
	"github.com/exportd/exportd/internal/refschema"
	"github.com/exportd/exportd/snapshot"
)

// The ten files of the Full Data Export.
var exportFiles = []string{
	"Attachments.csv", "Audit_Logs.csv", "Candidates.csv", "Companies.csv", "Contacts.csv",
	"Folder_Records.csv", "Job_Pipelines.csv", "Jobs.csv", "Tasks.csv", "Users.csv",
}

func TestDefaultSpec(t *testing.T) {
	s := DefaultSpec()
	require.Equal(t, 1, s.Version)
	require.Equal(t, refschema.TenantColumn, s.TenantColumn)
	require.True(t, s.FormulaProtection)
	require.False(t, s.BOM)
	var names []string
	for _, f := range s.Files {
		names = append(names, f.Name)
		require.Nil(t, f.Columns, "%s exports every column", f.Name)
		require.Nil(t, f.Exclude, f.Name)
		require.Contains(t, refschema.Tables(), qualify(f.Table), f.Name)
	}
	require.Equal(t, exportFiles, names)
	require.Equal(t, refschema.Attachments, s.Attachments.Table)
	require.Equal(t, refschema.Invoices, s.Invoices.Table)
	require.Equal(t, refschema.Users, s.Requesters.Table)

	// Each call returns a new spec.
	s.Files[0].Name = "changed.csv"
	require.Equal(t, "Attachments.csv", DefaultSpec().Files[0].Name)
	require.Equal(t, defaultSpecYAML, DefaultSpecYAML())
}

// describeTables reads the staged form of tables from the catalog, as
// package cdc stages them: columns in attribute order, primary key, tenant
// column.
func describeTables(t *testing.T, conn *pgx.Conn, tables []string, tenantColumn string) []snapshot.TableSchema {
	t.Helper()
	var out []snapshot.TableSchema
	for _, name := range tables {
		ts := snapshot.TableSchema{Name: name, TenantColumn: -1}
		rows, err := conn.Query(t.Context(), `SELECT attname, atttypid FROM pg_attribute
			WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, name)
		require.NoError(t, err)
		cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (snapshot.Column, error) {
			var c snapshot.Column
			return c, r.Scan(&c.Name, &c.TypeOID)
		})
		require.NoError(t, err)
		ts.Columns = cols
		ts.TenantColumn = slices.IndexFunc(cols, func(c snapshot.Column) bool { return c.Name == tenantColumn })
		require.GreaterOrEqual(t, ts.TenantColumn, 0, "%s has no %s", name, tenantColumn)
		var key []string
		require.NoError(t, conn.QueryRow(t.Context(), `SELECT array_agg(a.attname ORDER BY k.ord)
			FROM pg_index i
			CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
			JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
			WHERE i.indrelid = $1::regclass AND i.indisprimary`, name).Scan(&key))
		for _, k := range key {
			ts.KeyColumns = append(ts.KeyColumns, slices.IndexFunc(cols, func(c snapshot.Column) bool { return c.Name == k }))
		}
		out = append(out, ts)
	}
	return out
}

// TestDefaultSpecResolvesReferenceSchema resolves the default spec against
// the reference schema as PostgreSQL describes it.
func TestDefaultSpecResolvesReferenceSchema(t *testing.T) {
	c := pgtest.Start(t)
	conn := pgtest.Connect(t, c.ConnString("postgres"))
	require.NoError(t, conn.PgConn().Exec(t.Context(), refschema.SQL()).Close())
	tables := describeTables(t, conn, refschema.Tables(), refschema.TenantColumn)
	byName := map[string]snapshot.TableSchema{}
	for _, ts := range tables {
		byName[ts.Name] = ts
	}

	plan, err := DefaultSpec().Resolve(tables)
	require.NoError(t, err)
	require.True(t, plan.FormulaProtection)
	require.False(t, plan.BOM)
	require.Len(t, plan.Files, len(exportFiles))
	for i, f := range plan.Files {
		require.Equal(t, exportFiles[i], f.Name)
		ts := byName[f.Table]
		require.Equal(t, ts.TenantColumn, f.TenantColumn, f.Name)
		require.Len(t, f.Columns, len(ts.Columns), "%s has every column", f.Name)
		for j, col := range f.Columns {
			require.Equal(t, j, col, "%s: table order", f.Name)
			require.Equal(t, ts.Columns[j].Name, f.Header[j])
			require.Equal(t, isTextType(ts.Columns[j].TypeOID), f.Protect[j], "%s.%s", f.Name, f.Header[j])
		}
	}
	cand := plan.Files[slices.Index(exportFiles, "Candidates.csv")]
	protected := map[string]bool{}
	for j, h := range cand.Header {
		protected[h] = cand.Protect[j]
	}
	for col, want := range map[string]bool{
		"first_name": true, "phone": true, "headline": true, "country": true, "salary_currency": true, // text, varchar, bpchar
		"tenant_id": false, "id": false, "skills": false, "custom_fields": false, "date_of_birth": false, "photo": false,
	} {
		require.Equal(t, want, protected[col], col)
	}

	att := byName[refschema.Attachments]
	idx := func(ts snapshot.TableSchema, name string) int {
		return slices.IndexFunc(ts.Columns, func(c snapshot.Column) bool { return c.Name == name })
	}
	ap := plan.Attachments
	require.Equal(t, refschema.Attachments, ap.Table)
	require.Equal(t, att.TenantColumn, ap.TenantColumn)
	require.Equal(t, idx(att, "object_key"), ap.ObjectKey)
	require.Equal(t, idx(att, "file_name"), ap.FileName)
	require.Equal(t, idx(att, "size_bytes"), ap.Size)
	require.Equal(t, idx(att, "content_type"), ap.ContentType)
	require.Equal(t, []int{idx(att, "record_type"), idx(att, "record_id")}, ap.Owner)
	row := make([][]byte, len(att.Columns))
	row[idx(att, "category")] = []byte("cv")
	require.True(t, ap.IsCV(row))
	row[idx(att, "category")] = []byte("cover_letter")
	require.False(t, ap.IsCV(row))
	require.Equal(t, "", ap.KeyAllowed("tenants/7/attachments/x", "7"))
	require.NotEqual(t, "", ap.KeyAllowed("tenants/8/attachments/x", "7"))
	require.NotEqual(t, "", ap.KeyAllowed("tenants/77/attachments/x", "7"))

	inv := byName[refschema.Invoices]
	ip := plan.Invoices
	require.Equal(t, refschema.Invoices, ip.Table)
	row = make([][]byte, len(inv.Columns))
	for status, want := range map[string]bool{"open": true, "paid": false, "void": false} {
		row[idx(inv, "status")] = []byte(status)
		require.Equal(t, want, ip.Outstanding(row), status)
	}

	users := byName[refschema.Users]
	rp := plan.Requesters
	require.Equal(t, refschema.Users, rp.Table)
	require.Equal(t, users.TenantColumn, rp.TenantColumn)
	require.Equal(t, idx(users, "id"), rp.ID)
	row = make([][]byte, len(users.Columns))
	for _, tc := range []struct {
		role, active string
		want         bool
	}{{"admin", "t", true}, {"admin", "f", false}, {"recruiter", "t", false}} {
		row[idx(users, "role")], row[idx(users, "is_active")] = []byte(tc.role), []byte(tc.active)
		require.Equal(t, tc.want, rp.Allowed.Match(row), "%+v", tc)
	}

	// A column added to a table is exported by a spec that lists none.
	users.Columns = append(slices.Clone(users.Columns), snapshot.Column{Name: "nickname", TypeOID: oidText})
	byName[refschema.Users] = users
	var changed []snapshot.TableSchema
	for _, ts := range tables {
		changed = append(changed, byName[ts.Name])
	}
	plan, err = DefaultSpec().Resolve(changed)
	require.NoError(t, err)
	up := plan.Files[slices.Index(exportFiles, "Users.csv")]
	require.Equal(t, "nickname", up.Header[len(up.Header)-1])
	require.Equal(t, len(users.Columns)-1, up.Columns[len(up.Columns)-1])
	require.True(t, up.Protect[len(up.Protect)-1])
}

// Type OIDs used by the hand-made schemas.
const (
	oidInt4   = 23
	oidInt8   = 20
	oidUUID   = 2950
	oidTextA  = 1009 // text[]
	oidJSONB  = 3802
	oidTSTZ   = 1184
	oidCustom = 16400 // an enum
)

// table returns a staged schema; cols are "name oid" pairs, the tenant
// column is tenant_id if there is one, the key the first column.
func table(name string, cols ...any) snapshot.TableSchema {
	ts := snapshot.TableSchema{Name: name, KeyColumns: []int{0}, TenantColumn: -1}
	for i := 0; i < len(cols); i += 2 {
		c := snapshot.Column{Name: cols[i].(string), TypeOID: uint32(cols[i+1].(int))}
		if c.Name == "tenant_id" {
			ts.TenantColumn = len(ts.Columns)
		}
		ts.Columns = append(ts.Columns, c)
	}
	return ts
}

// testTables is a small schema in the shape of the reference one.
func testTables() []snapshot.TableSchema {
	return []snapshot.TableSchema{
		table("public.candidates", "tenant_id", oidInt8, "id", oidInt8, "first_name", oidText, "email", oidVarchar,
			"country", oidBpchar, "skills", oidTextA, "custom", oidJSONB, "active", oidBool, "created_at", oidTSTZ),
		table("public.attachments", "id", oidUUID, "tenant_id", oidInt8, "record_type", oidText, "record_id", oidInt8,
			"category", oidCustom, "file_name", oidText, "content_type", oidVarchar, "size_bytes", oidInt8, "object_key", oidText,
			"internal", oidBool),
		table("public.invoices", "tenant_id", oidInt8, "number", oidText, "status", oidCustom, "paid_at", oidTSTZ),
		table("crm.people", "org", oidUUID, "person_no", oidInt4, "name", oidName),
	}
}

// withOrg makes org the tenant column of crm.people.
func withOrg(tables []snapshot.TableSchema) []snapshot.TableSchema {
	tables[3].TenantColumn = 0
	return tables
}

const baseSpec = `version: 1
files:
  - name: Candidates.csv
    table: candidates
`

func TestResolveColumns(t *testing.T) {
	tables := withOrg(testTables())
	for _, tc := range []struct {
		name    string
		spec    string
		header  []string
		columns []int
		protect []bool
	}{
		{
			name:    "all",
			spec:    baseSpec,
			header:  []string{"tenant_id", "id", "first_name", "email", "country", "skills", "custom", "active", "created_at"},
			columns: []int{0, 1, 2, 3, 4, 5, 6, 7, 8},
			protect: []bool{false, false, true, true, true, false, false, false, false},
		},
		{
			name:    "subset renamed",
			spec:    baseSpec + "    columns: [id, {column: first_name, as: First Name}, {column: email}, skills]\n",
			header:  []string{"id", "First Name", "email", "skills"},
			columns: []int{1, 2, 3, 5},
			protect: []bool{false, true, true, false},
		},
		{
			name:    "exclude",
			spec:    baseSpec + "    exclude: [custom, tenant_id]\n",
			header:  []string{"id", "first_name", "email", "country", "skills", "active", "created_at"},
			columns: []int{1, 2, 3, 4, 5, 7, 8},
			protect: []bool{false, true, true, true, false, false, false},
		},
		{
			name:    "no formula protection",
			spec:    "formula_protection: false\n" + baseSpec + "    columns: [first_name, id]\n",
			header:  []string{"first_name", "id"},
			columns: []int{2, 1},
			protect: []bool{false, false},
		},
		{
			name:    "other schema and tenant column",
			spec:    "version: 1\ntenant_column: org\nfiles:\n  - {name: People.csv, table: crm.people}\n",
			header:  []string{"org", "person_no", "name"},
			columns: []int{0, 1, 2},
			protect: []bool{false, false, true},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSpec([]byte(tc.spec), "spec.yaml")
			require.NoError(t, err)
			plan, err := s.Resolve(tables)
			require.NoError(t, err)
			require.Len(t, plan.Files, 1)
			f := plan.Files[0]
			require.Equal(t, tc.header, f.Header)
			require.Equal(t, tc.columns, f.Columns)
			require.Equal(t, tc.protect, f.Protect)
			require.Nil(t, plan.Attachments)
			require.Nil(t, plan.Invoices)
		})
	}
}

func TestResolveTenantColumn(t *testing.T) {
	// Without tenant_column, the staged one counts whatever its name.
	s, err := ParseSpec([]byte(baseSpec+"  - {name: People.csv, table: crm.people}\n"), "spec.yaml")
	require.NoError(t, err)
	plan, err := s.Resolve(withOrg(testTables()))
	require.NoError(t, err)
	require.Equal(t, 0, plan.Files[0].TenantColumn)
	require.Equal(t, 0, plan.Files[1].TenantColumn)

	// An override per file.
	s, err = ParseSpec([]byte("tenant_column: tenant_id\n"+baseSpec+"  - {name: People.csv, table: crm.people, tenant_column: org}\n"), "spec.yaml")
	require.NoError(t, err)
	_, err = s.Resolve(withOrg(testTables()))
	require.NoError(t, err)
}

const filesSpec = baseSpec + `attachments:
  table: attachments
  object_key: object_key
  object_key_prefix: "tenants/{tenant}/"
  file_name: file_name
  size: size_bytes
  owner: [record_type, record_id]
  cv:
    - {column: category, in: [cv, resume]}
    - {column: internal, in: [t]}
invoices:
  table: invoices
  outstanding:
    - {column: status, not_in: [paid, void]}
    - {column: paid_at, is_null: true}
`

func TestResolveFilesAndInvoices(t *testing.T) {
	s, err := ParseSpec([]byte(filesSpec), "spec.yaml")
	require.NoError(t, err)
	plan, err := s.Resolve(testTables())
	require.NoError(t, err)
	ap := plan.Attachments
	require.Equal(t, &AttachmentPlan{
		Table: "public.attachments", TenantColumn: 1, ObjectKey: 8, FileName: 5, Size: 7, ContentType: -1,
		Owner: []int{2, 3}, CV: ap.CV, objectKeyPrefix: "tenants/{tenant}/",
	}, ap)
	require.Equal(t, "category in (cv, resume) and internal in (t)", ap.CV.String())
	row := func(kv ...string) [][]byte {
		r := make([][]byte, 10)
		for i := 0; i < len(kv); i += 2 {
			r[slices.IndexFunc(testTables()[1].Columns, func(c snapshot.Column) bool { return c.Name == kv[i] })] = []byte(kv[i+1])
		}
		return r
	}
	require.True(t, ap.IsCV(row("category", "cv", "internal", "t")))
	require.True(t, ap.IsCV(row("category", "resume", "internal", "t")))
	require.False(t, ap.IsCV(row("category", "cv", "internal", "f")))
	require.False(t, ap.IsCV(row("category", "cv")), "NULL is in no list")
	require.False(t, ap.IsCV(row("category", "CV", "internal", "t")), "values compare exactly")
	require.False(t, ap.IsCV([][]byte{}), "a short row reads as NULLs")

	ip := plan.Invoices
	require.Equal(t, "public.invoices", ip.Table)
	require.Equal(t, "status not in (paid, void) and paid_at is null", ip.Condition.String())
	require.True(t, ip.Outstanding([][]byte{[]byte("1"), []byte("A-1"), []byte("open"), nil}))
	require.False(t, ip.Outstanding([][]byte{[]byte("1"), []byte("A-1"), []byte("open"), []byte("2024-01-01 00:00:00+00")}))
	require.False(t, ip.Outstanding([][]byte{[]byte("1"), []byte("A-1"), []byte("paid"), nil}))
	require.False(t, ip.Outstanding([][]byte{[]byte("1"), []byte("A-1"), nil, nil}), "NULL is not in not_in either")

	// Requesters without conditions: every user of the tenant.
	s, err = ParseSpec([]byte(baseSpec+"requesters: {table: candidates, id: email}\n"), "spec.yaml")
	require.NoError(t, err)
	plan, err = s.Resolve(testTables())
	require.NoError(t, err)
	require.Equal(t, &RequesterPlan{Table: "public.candidates", TenantColumn: 0, ID: 3, Allowed: &Condition{}}, plan.Requesters)
	require.True(t, plan.Requesters.Allowed.Match(nil))
	require.True(t, (*Condition)(nil).Match(nil))

	isNotNull := false
	c := (&resolver{spec: s}).condition("x", []ConditionSpec{{Column: "paid_at", IsNull: &isNotNull}}, &testTables()[2])
	require.Equal(t, "paid_at is not null", c.String())
	require.True(t, c.Match([][]byte{nil, nil, nil, {}}), "an empty string is not NULL")
	require.False(t, c.Match([][]byte{nil, nil, nil, nil}))
	require.True(t, (&Condition{}).Match(nil), "no conditions: every row")
}

func TestKeyAllowed(t *testing.T) {
	ap := &AttachmentPlan{objectKeyPrefix: "tenants/{tenant}/"}
	for key, want := range map[string]string{
		"tenants/7/attachments/a.pdf": "",
		"tenants/7/x/../../8/a.pdf":   "object key has a . or .. segment",
		"tenants/7/./a":               "object key has a . or .. segment",
		"tenants/8/attachments/a.pdf": "object key is outside the tenant's prefix tenants/7/",
		"tenants/77/a.pdf":            "object key is outside the tenant's prefix tenants/7/",
		"/tenants/7/a.pdf":            "object key is an absolute path",
		"":                            "no object key",
		"tenants/7/\xff":              "object key is not valid UTF-8",
		"tenants/7/a\x00b":            "object key holds control characters",
	} {
		require.Equal(t, want, ap.KeyAllowed(key, "7"), key)
	}
	// Without a prefix only the key's shape is checked.
	ap = &AttachmentPlan{}
	require.Equal(t, "", ap.KeyAllowed("anything/at/all", "7"))
	require.Equal(t, "object key has a . or .. segment", ap.KeyAllowed("a/../b", "7"))
}

// specErr returns the only *SpecError of err.
func specErr(t *testing.T, err error) *SpecError {
	t.Helper()
	require.Error(t, err)
	var se *SpecError
	require.True(t, errors.As(err, &se), "%T: %v", err, err)
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		require.Len(t, j.Unwrap(), 1, "one problem: %v", err)
	}
	return se
}

func TestParseSpecErrors(t *testing.T) {
	file := func(extra string) string { return baseSpec + extra }
	for _, tc := range []struct {
		name string
		spec string
		key  string
		line int
		msg  string // part of the message
	}{
		{"empty", "", "", 0, "empty spec"},
		{"comment only", "# nothing\n", "", 0, "empty spec"},
		{"not a mapping", "- a\n", "", 1, "want a mapping, got a list"},
		{"syntax", "version: 1\nfiles: [\n", "", 2, "did not find expected node content"},
		{"tab indent", "version: 1\n\tfiles: []\n", "", 2, "found a tab character that violates indentation"},
		{"two documents", baseSpec + "---\nversion: 1\n", "", 5, "more than one YAML document"},
		{"version missing", "files:\n  - {name: a.csv, table: a}\n", "version", 0, "required: set version: 1"},
		{"version 2", "version: 2\nfiles:\n  - {name: a.csv, table: a}\n", "version", 1, "unsupported version 2: want 1"},
		{"version string", "version: \"1\"\nfiles:\n  - {name: a.csv, table: a}\n", "version", 1, `want an integer, got "1"`},
		{"unknown key", baseSpec + "fils: []\n", "fils", 5, "unknown key (known: attachments, bom, files, formula_protection, invoices, requesters, tenant_column, version)"},
		{"repeated key", baseSpec + "version: 1\n", "version", 5, "repeated key"},
		{"merge key", "<<: {version: 1}\n", "<<", 1, "merge keys are not supported"},
		{"bool", "formula_protection: yes\n" + baseSpec, "formula_protection", 1, `want true or false, got "yes"`},
		{"bom null", "bom:\n" + baseSpec, "bom", 1, "want true or false, got null"},
		{"files missing", "version: 1\n", "files", 0, "at least one file is required"},
		{"files empty", "version: 1\nfiles: []\n", "files", 2, "at least one file is required"},
		{"files mapping", "version: 1\nfiles: {name: a.csv}\n", "files", 2, "want a list, got a mapping"},
		{"file scalar", "version: 1\nfiles: [a.csv]\n", "files[0]", 2, `want a mapping, got "a.csv"`},
		{"file unknown key", file("    colums: [id]\n"), "files[0].colums", 5, "unknown key (known: columns, exclude, name, table, tenant_column)"},
		{"name missing", "version: 1\nfiles:\n  - table: a\n", "files[0].name", 3, "required"},
		{"name traversal", "version: 1\nfiles:\n  - {name: ../x.csv, table: a}\n", "files[0].name", 3, `"../x.csv" is not a safe file name`},
		{"name absolute", "version: 1\nfiles:\n  - {name: /x.csv, table: a}\n", "files[0].name", 3, "is not a safe file name"},
		{"name backslash", "version: 1\nfiles:\n  - {name: 'a\\x.csv', table: a}\n", "files[0].name", 3, "is not a safe file name"},
		{"name not csv", "version: 1\nfiles:\n  - {name: x.txt, table: a}\n", "files[0].name", 3, "is not a safe file name"},
		{"name CSV", "version: 1\nfiles:\n  - {name: x.CSV, table: a}\n", "files[0].name", 3, "is not a safe file name"},
		{"name hidden", "version: 1\nfiles:\n  - {name: .x.csv, table: a}\n", "files[0].name", 3, "is not a safe file name"},
		{"name only ext", "version: 1\nfiles:\n  - {name: .csv, table: a}\n", "files[0].name", 3, "is not a safe file name"},
		{"name unicode", "version: 1\nfiles:\n  - {name: Kandidaten_ü.csv, table: a}\n", "files[0].name", 3, "is not a safe file name"},
		{"name long", "version: 1\nfiles:\n  - {name: " + strings.Repeat("a", 97) + ".csv, table: a}\n", "files[0].name", 3, "is not a safe file name"},
		{"name README", "version: 1\nfiles:\n  - {name: readme.csv, table: a}\n", "files[0].name", 3, "reserved for the bundle's own files"},
		{"name missing_files", "version: 1\nfiles:\n  - {name: Missing_Files.csv, table: a}\n", "files[0].name", 3, "reserved for the bundle's own files"},
		{"name device", "version: 1\nfiles:\n  - {name: com1.csv, table: a}\n", "files[0].name", 3, "reserved device name on Windows"},
		{"name duplicate case", baseSpec + "  - {name: CANDIDATES.csv, table: a}\n", "files[1].name", 5, `"CANDIDATES.csv" is also the name of files[0] (names are compared ignoring case)`},
		{"table missing", "version: 1\nfiles:\n  - name: a.csv\n", "files[0].table", 3, "required"},
		{"table uppercase", "version: 1\nfiles:\n  - {name: a.csv, table: Public.X}\n", "files[0].table", 3, `"Public.X" is not a table name`},
		{"table three parts", "version: 1\nfiles:\n  - {name: a.csv, table: a.b.c}\n", "files[0].table", 3, `"a.b.c" is not a table name`},
		{"table list", "version: 1\nfiles:\n  - {name: a.csv, table: [a]}\n", "files[0].table", 3, "want a string, got a list"},
		{"columns empty", file("    columns: []\n"), "files[0].columns", 5, "empty: omit it to export every column"},
		{"columns null", file("    columns:\n"), "files[0].columns", 5, "want a list, got null"},
		{"columns and exclude", file("    columns: [id]\n    exclude: [email]\n"), "files[0].exclude", 6, "cannot be combined with columns"},
		{"column twice", file("    columns: [id, email, id]\n"), "files[0].columns[2]", 5, `column "id" is also columns[0]`},
		{"column twice renamed", file("    columns: [id, {column: id, as: ID}]\n"), "files[0].columns[1]", 5, `column "id" is also columns[0]`},
		{"header twice", file("    columns: [id, {column: email, as: id}]\n"), "files[0].columns[1]", 5, `header "id" is also the header of columns[0]`},
		{"column without name", file("    columns:\n      - as: Name\n"), "files[0].columns[0].column", 6, "required"},
		{"column unknown key", file("    columns:\n      - {column: a, rename: b}\n"), "files[0].columns[0].rename", 6, "unknown key (known: as, column)"},
		{"column list", file("    columns: [[a]]\n"), "files[0].columns[0]", 5, "want a mapping, got a list"},
		{"header control", file("    columns: [{column: a, as: \"a\\nb\"}]\n"), "files[0].columns[0].as", 5, "holds control characters"},
		{"exclude empty", file("    exclude: []\n"), "files[0].exclude", 5, "empty: omit it"},
		{"exclude twice", file("    exclude: [a, a]\n"), "files[0].exclude[1]", 5, `column "a" is also exclude[0]`},
		{"exclude empty name", file("    exclude: ['']\n"), "files[0].exclude[0]", 5, "required"},
		{"attachments scalar", baseSpec + "attachments: yes\n", "attachments", 5, `want a mapping, got "yes"`},
		{"attachments missing keys", baseSpec + "attachments:\n  table: a\n  object_key: k\n  file_name: f\n  owner: [o]\n", "attachments.size", 5, "required: the column holding the file's size"},
		{"attachments owner", baseSpec + "attachments: {table: a, object_key: k, file_name: f, size: s}\n", "attachments.owner", 5, "required: the columns naming the file's owning record"},
		{"attachments owner empty", baseSpec + "attachments: {table: a, object_key: k, file_name: f, size: s, owner: []}\n", "attachments.owner", 5, "required"},
		{"attachments prefix", baseSpec + "attachments: {table: a, object_key: k, file_name: f, size: s, owner: [o], object_key_prefix: '{tenant_id}/'}\n", "attachments.object_key_prefix", 5, "the only placeholder is {tenant}"},
		{"attachments prefix tenant last", baseSpec + "attachments: {table: a, object_key: k, file_name: f, size: s, owner: [o], object_key_prefix: 'tenants/{tenant}'}\n", "attachments.object_key_prefix", 5, "end it with a separator after {tenant}"},
		{"cv empty", baseSpec + "attachments: {table: a, object_key: k, file_name: f, size: s, owner: [o], cv: []}\n", "attachments.cv", 5, "empty: give at least one condition"},
		{"cv two tests", baseSpec + "attachments:\n  {table: a, object_key: k, file_name: f, size: s, owner: [o], cv: {column: c, in: [cv], is_null: true}}\n", "attachments.cv", 6, "want exactly one of in, not_in and is_null"},
		{"cv no test", baseSpec + "attachments:\n  {table: a, object_key: k, file_name: f, size: s, owner: [o], cv: [{column: c}]}\n", "attachments.cv[0]", 6, "want exactly one of in, not_in and is_null"},
		{"cv in empty", baseSpec + "attachments:\n  {table: a, object_key: k, file_name: f, size: s, owner: [o], cv: {column: c, in: []}}\n", "attachments.cv.in", 6, "empty: nothing would match"},
		{"cv in null", baseSpec + "attachments:\n  {table: a, object_key: k, file_name: f, size: s, owner: [o], cv: {column: c, in: [~]}}\n", "attachments.cv.in[0]", 6, "null never equals a value: use is_null"},
		{"cv column", baseSpec + "attachments:\n  {table: a, object_key: k, file_name: f, size: s, owner: [o], cv: {in: [cv]}}\n", "attachments.cv.column", 6, "required"},
		{"invoices outstanding", baseSpec + "invoices:\n  table: invoices\n", "invoices.outstanding", 5, "required: the conditions an outstanding invoice meets"},
		{"invoices not_in empty", baseSpec + "invoices:\n  table: invoices\n  outstanding:\n    - column: status\n      not_in: []\n", "invoices.outstanding[0].not_in", 9, "empty: use is_null: false"},
		{"requesters id", baseSpec + "requesters: {table: users}\n", "requesters.id", 5, "required: the column holding the requester id"},
		{"requesters allowed empty", baseSpec + "requesters: {table: users, id: id, allowed: []}\n", "requesters.allowed", 5, "empty: give at least one condition"},
		{"requesters unknown", baseSpec + "requesters:\n  table: users\n  id: id\n  admins: [a]\n", "requesters.admins", 8, "unknown key (known: allowed, id, table, tenant_column)"},
		{"invoices is_null string", baseSpec + "invoices:\n  table: invoices\n  outstanding: [{column: paid_at, is_null: 'true'}]\n", "invoices.outstanding[0].is_null", 7, `want true or false, got "true"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(tc.spec), "spec.yaml")
			se := specErr(t, err)
			require.Equal(t, "spec.yaml", se.Source)
			require.Equal(t, tc.key, se.Key, "%v", err)
			require.Equal(t, tc.line, se.Line, "%v", err)
			require.Contains(t, se.Msg, tc.msg)
			want := "spec.yaml"
			if tc.line > 0 {
				want += ":" + strconv.Itoa(tc.line)
			}
			if tc.key != "" {
				want += ": " + tc.key
			}
			require.True(t, strings.HasPrefix(err.Error(), want+": "), "%q does not start with %q", err.Error(), want)
		})
	}
}

func TestParseSpecReportsEveryProblem(t *testing.T) {
	_, err := ParseSpec([]byte(`version: 1
files:
  - {name: ../a.csv, table: a}
  - {name: b.csv, table: B}
  - {name: c.csv, table: c, columns: []}
`), "spec.yaml")
	require.Error(t, err)
	require.Equal(t, `spec.yaml:3: files[0].name: "../a.csv" is not a safe file name: want at most 100 letters, digits, _ . - or spaces, not starting with . - or a space, ending in .csv
spec.yaml:4: files[1].table: "B" is not a table name: want schema.table or table (in public), in lowercase letters, digits and _
spec.yaml:5: files[2].columns: empty: omit it to export every column`, err.Error())

	var many strings.Builder
	many.WriteString("version: 1\nfiles:\n")
	for range 30 {
		many.WriteString("  - {name: x.txt, table: a}\n")
	}
	_, err = ParseSpec([]byte(many.String()), "many.yaml")
	require.ErrorContains(t, err, "many.yaml: and 10 more problems")
}

func TestParseSpecAliases(t *testing.T) {
	s, err := ParseSpec([]byte(`version: 1
files:
  - name: A.csv
    table: candidates
    columns: &cols [id, {column: first_name, as: Name}]
  - name: B.csv
    table: candidates
    columns: *cols
`), "spec.yaml")
	require.NoError(t, err)
	require.Equal(t, s.Files[0].Columns, s.Files[1].Columns)
	require.True(t, s.FormulaProtection, "on unless turned off")
}

func TestResolveErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec string
		key  string
		msg  string
	}{
		{"table not staged", "version: 1\nfiles:\n  - {name: a.csv, table: nope}\n", "files[0].table", "table public.nope is not staged"},
		{"column not found", baseSpec + "    columns: [id, frist_name]\n", "files[0].columns[1]", `column "frist_name" not found in public.candidates`},
		{"exclude not found", baseSpec + "    exclude: [nope]\n", "files[0].exclude[0]", `column "nope" not found in public.candidates`},
		{"exclude all", "version: 1\nfiles:\n  - {name: a.csv, table: crm.people, exclude: [org, person_no, name]}\n", "files[0].exclude", "excludes every column of crm.people"},
		{"tenant column not staged", "tenant_column: account_id\n" + baseSpec, "tenant_column", `column "account_id" not found in public.candidates (it is staged by tenant column "tenant_id")`},
		{"tenant column other", "tenant_column: id\n" + baseSpec, "tenant_column", `"id" is not the tenant column of public.candidates: it is staged by "tenant_id"`},
		{"tenant column override", "version: 1\nfiles:\n  - {name: a.csv, table: crm.people, tenant_column: person_no}\n", "files[0].tenant_column", `"person_no" is not the tenant column of crm.people: it is staged by "org"`},
		{"tenant column default", "tenant_column: tenant_id\nversion: 1\nfiles:\n  - {name: a.csv, table: crm.people}\n", "tenant_column", `column "tenant_id" not found in crm.people`},
		{"attachments table", baseSpec + "attachments: {table: files, object_key: k, file_name: f, size: s, owner: [o]}\n", "attachments.table", "table public.files is not staged"},
		{"attachments column", strings.Replace(filesSpec, "file_name: file_name", "file_name: name", 1), "attachments.file_name", `column "name" not found in public.attachments`},
		{"attachments content type", strings.Replace(filesSpec, "file_name: file_name", "file_name: file_name\n  content_type: mime", 1), "attachments.content_type", `column "mime" not found`},
		{"attachments owner", strings.Replace(filesSpec, "record_id]", "record]", 1), "attachments.owner[1]", `column "record" not found`},
		{"cv column", strings.Replace(filesSpec, "{column: category", "{column: kind", 1), "attachments.cv[0].column", `column "kind" not found in public.attachments`},
		{"cv boolean", strings.Replace(filesSpec, "in: [t]", "in: [true]", 1), "attachments.cv[1]", `"true" never matches boolean column internal: PostgreSQL prints booleans as t and f`},
		{"invoices column", strings.Replace(filesSpec, "column: status", "column: state", 1), "invoices.outstanding[0].column", `column "state" not found in public.invoices`},
		{"requesters table", baseSpec + "requesters: {table: users, id: id}\n", "requesters.table", "table public.users is not staged"},
		{"requesters id", strings.Replace(baseSpec, "table: candidates", "table: candidates\nrequesters: {table: candidates, id: login}", 1), "requesters.id", `column "login" not found in public.candidates`},
		{"requesters allowed", baseSpec + "requesters: {table: candidates, id: id, allowed: {column: active, in: [yes]}}\n", "requesters.allowed", `"yes" never matches boolean column active`},
		{"invoices tenant", strings.Replace(filesSpec, "table: invoices", "table: invoices\n  tenant_column: number", 1), "invoices.tenant_column", `"number" is not the tenant column`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSpec([]byte(tc.spec), "spec.yaml")
			require.NoError(t, err)
			_, err = s.Resolve(withOrg(testTables()))
			se := specErr(t, err)
			require.Equal(t, tc.key, se.Key, "%v", err)
			require.Contains(t, se.Msg, tc.msg)
			require.Positive(t, se.Line, "%v", err)
			require.Contains(t, err.Error(), "spec.yaml:")
		})
	}

	// A table staged without a tenant column is refused, not guessed.
	tables := testTables()
	tables[0].TenantColumn = -1
	s, err := ParseSpec([]byte(baseSpec), "spec.yaml")
	require.NoError(t, err)
	_, err = s.Resolve(tables)
	require.ErrorContains(t, err, "spec.yaml:4: files[0].table: table public.candidates is staged without a tenant column")
}

// TestResolveSpecInCode checks a Spec built in code like a parsed one.
func TestResolveSpecInCode(t *testing.T) {
	s := &Spec{Files: []FileSpec{{Name: "a.csv", Table: "candidates", Columns: []ColumnSpec{{Column: "id"}, {Column: "first_name", As: "Name"}}}}}
	_, err := s.Resolve(testTables())
	require.EqualError(t, err, "spec: version: required: set version: 1")
	s.Version = 1
	plan, err := s.Resolve(testTables())
	require.NoError(t, err)
	require.Equal(t, []string{"id", "Name"}, plan.Files[0].Header)
	require.Equal(t, []bool{false, false}, plan.Files[0].Protect, "FormulaProtection is off in a zero Spec")
	s.Files[0].Columns[1].Column = "nope"
	_, err = s.Resolve(testTables())
	require.EqualError(t, err, `spec: files[0].columns[1]: column "nope" not found in public.candidates`)
}

func TestLoadSpec(t *testing.T) {
	s, err := LoadSpec(filepath.Join("testdata", "spec", "other.yaml"))
	require.NoError(t, err)
	plan, err := s.Resolve(withOrg(testTables()))
	require.NoError(t, err)
	require.Equal(t, "People.csv", plan.Files[0].Name)
	require.True(t, plan.BOM)

	_, err = LoadSpec(filepath.Join("testdata", "spec", "bad.yaml"))
	require.ErrorContains(t, err, filepath.Join("testdata", "spec", "bad.yaml")+":6: files[0].columns[0].alias: unknown key (known: as, column)")

	_, err = LoadSpec(filepath.Join(t.TempDir(), "none.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, "read export spec: ")
}

func FuzzParseSpec(f *testing.F) {
	f.Add(defaultSpecYAML)
	f.Add([]byte(filesSpec))
	f.Add([]byte("version: 1\nfiles:\n  - {name: a.csv, table: crm.people, columns: [&a org, *a]}\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("version: 1\nfiles: [{name: x.csv, table: candidates, exclude: [id]}]\ninvoices: {table: invoices, outstanding: {column: paid_at, is_null: false}}\n"))
	entries, err := os.ReadDir(filepath.Join("testdata", "spec"))
	require.NoError(f, err)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join("testdata", "spec", e.Name()))
		require.NoError(f, err)
		f.Add(data)
	}
	tables := withOrg(testTables())
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSpec(data, "fuzz.yaml")
		if err != nil {
			require.Nil(t, s)
			require.NotEmpty(t, err.Error())
			return
		}
		require.Equal(t, 1, s.Version)
		require.NotEmpty(t, s.Files)
		plan, err := s.Resolve(tables)
		if err != nil {
			return
		}
		require.Len(t, plan.Files, len(s.Files))
		for _, fp := range plan.Files {
			require.Len(t, fp.Header, len(fp.Columns))
			require.Len(t, fp.Protect, len(fp.Columns))
		}
		row := make([][]byte, 10)
		if plan.Attachments != nil {
			plan.Attachments.IsCV(row)
		}
		if plan.Invoices != nil {
			plan.Invoices.Outstanding(row)
		}
	})
}
