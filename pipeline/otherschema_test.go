package pipeline_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/stagetest"
	"github.com/exportd/exportd/pipeline"
)

// otherSchema is unlike the reference schema: other table and column names,
// a uuid tenant id named org, a composite primary key of three columns, a
// text key, and files described by other columns.
const otherSchema = `
CREATE SCHEMA crm;
CREATE TABLE crm.staff (
    org       uuid    NOT NULL,
    login     text    NOT NULL,
    display   text,
    is_owner  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (org, login)
);
CREATE TABLE crm.people (
    org        uuid          NOT NULL,
    region     text          NOT NULL,
    person_no  integer       NOT NULL,
    full_name  text,
    note       text,
    salary     numeric(10,2),
    tags       text[],
    code       char(4),
    PRIMARY KEY (org, region, person_no)
);
CREATE TABLE crm.documents (
    org           uuid   NOT NULL,
    doc           uuid   NOT NULL,
    title         text   NOT NULL,
    blob_path     text   NOT NULL,
    byte_len      bigint NOT NULL,
    kind          text   NOT NULL,
    owner_region  text,
    owner_no      integer,
    PRIMARY KEY (org, doc)
);
CREATE TABLE crm.bills (
    org    uuid NOT NULL,
    ref    text NOT NULL,
    state  text NOT NULL,
    PRIMARY KEY (org, ref)
);
`

const otherSpec = `
version: 1
tenant_column: org
files:
  - name: Users.csv
    table: crm.staff
  - name: Candidates.csv
    table: crm.people
    columns: [person_no, region, {column: full_name, as: Name}, note, salary, tags, code]
  - name: Attachments.csv
    table: crm.documents
attachments:
  table: crm.documents
  object_key: blob_path
  file_name: title
  size: byte_len
  owner: [owner_region, owner_no]
  cv: {column: kind, in: [resume]}
invoices:
  table: crm.bills
  outstanding: [{column: state, in: [due]}]
`

// TestExportOtherSchema exports a schema that is not the reference one with
// its own spec.
func TestExportOtherSchema(t *testing.T) {
	ctx := t.Context()
	env := stagetest.StartPG(t)
	files := newFS(t)
	_, err := env.Admin.Exec(ctx, otherSchema)
	require.NoError(t, err)

	r := rand.New(rand.NewPCG(3, 4))
	orgs := []string{"6f1c2f7e-0000-4000-8000-000000000001", "6f1c2f7e-0000-4000-8000-000000000002", "a0000000-0000-4000-8000-00000000000f"}
	notes := []string{"plain", "=1+1", "-minus", "comma, here", "quote \" here", "line\nbreak", "", " lead", "@at", "\ttab"}
	regions := []string{"emea", "apac", "amer", "Zürich"}
	missing := map[string]bool{}
	for oi, org := range orgs {
		for i := range 5 {
			_, err := env.Admin.Exec(ctx, "INSERT INTO crm.staff VALUES ($1, $2, $3, $4)", org, fmt.Sprintf("user%d", i), notes[r.IntN(len(notes))], i == 0)
			require.NoError(t, err)
		}
		for i := range 300 + 200*oi {
			var note any = notes[r.IntN(len(notes))]
			if r.IntN(10) == 0 {
				note = nil
			}
			_, err := env.Admin.Exec(ctx, "INSERT INTO crm.people VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
				org, regions[r.IntN(len(regions))], i, fmt.Sprintf("Person %d, %s", i, notes[r.IntN(len(notes))]), note,
				fmt.Sprintf("%d.%02d", r.IntN(100000), r.IntN(100)), []string{"a", "b c", notes[r.IntN(len(notes))]}, "=A1")
			require.NoError(t, err)
		}
		for i := range 20 {
			doc := fmt.Sprintf("%08x-0000-4000-8000-%012x", oi, i)
			key := "orgs/" + org + "/docs/" + doc
			kind := []string{"resume", "note", "contract"}[i%3]
			title := []string{"cv.pdf", "../../etc/passwd", "notes.txt", "CV.PDF"}[i%4]
			body := bytes.Repeat([]byte(fmt.Sprintf("%s %d ", org, i)), 50+i)
			if i == 7 {
				missing[key] = true
			} else {
				_, err := files.Put(ctx, key, bytes.NewReader(body))
				require.NoError(t, err)
			}
			_, err := env.Admin.Exec(ctx, "INSERT INTO crm.documents VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
				org, doc, title, key, len(body), kind, regions[i%len(regions)], i)
			require.NoError(t, err)
		}
		_, err := env.Admin.Exec(ctx, "INSERT INTO crm.bills VALUES ($1, 'B-1', 'paid')", org)
		require.NoError(t, err)
	}

	cfg := env.Config()
	cfg.Tables = []string{"crm.staff", "crm.people", "crm.documents", "crm.bills"}
	cfg.TenantColumn = "org"
	rep := env.Replicate(t, cfg)
	v := rep.CatchUp(t, ctx, env)

	spec, err := pipeline.ParseSpec([]byte(otherSpec), "other.yaml")
	require.NoError(t, err)
	plan, err := spec.Resolve(v.Tables())
	require.NoError(t, err)
	require.Len(t, plan.Files, 3)
	pub := newFSPublisher(t)
	ex := pipeline.NewExporter(spec, files, pub, pipeline.ExportConfig{}, testLogger(t), nil)
	for _, org := range orgs {
		m, err := ex.Export(ctx, v, org, "other-"+org[len(org)-4:])
		require.NoError(t, err)
		zips := download(t, func(u string) []byte { return httpGet(t, u) }, m)
		rows := checkCSVs(t, ctx, env.Admin, plan, v, zips[pipeline.PartData], org)
		want := otherFiles(t, env.Admin, org)
		p1, a1 := checkFiles(t, ctx, files, zips[pipeline.PartAttachments], want, false, missing)
		p2, a2 := checkFiles(t, ctx, files, zips[pipeline.PartCVs], want, true, missing)
		require.Equal(t, 1, a1+a2)
		require.Equal(t, 19, p1+p2)
		t.Logf("org %s: %d rows, %d files, %d missing", org, rows, p1+p2, a1+a2)
		// Formula protection reached the renamed, subset columns.
		require.Contains(t, string(entry(t, zips[pipeline.PartData], "Candidates.csv")), ",'=A1 \n")
		require.True(t, strings.HasPrefix(string(entry(t, zips[pipeline.PartData], "Candidates.csv")), "person_no,region,Name,note,salary,tags,code\n"))
	}
}

func otherFiles(t *testing.T, conn *pgx.Conn, org string) []fileRow {
	t.Helper()
	rows, err := conn.Query(t.Context(), "SELECT blob_path, title, kind = 'resume' FROM crm.documents WHERE org = $1", org)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (fileRow, error) {
		var f fileRow
		return f, r.Scan(&f.key, &f.name, &f.cv)
	})
	require.NoError(t, err)
	return out
}
