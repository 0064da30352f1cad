package refschema_test

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/exportd/exportd/internal/pgtest"
	"github.com/exportd/exportd/internal/refschema"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestMetadata(t *testing.T) {
	tables := refschema.Tables()
	require.Len(t, tables, 12)
	require.NotContains(t, tables, refschema.TenantsTable)
	seen := map[string]bool{}
	for _, table := range tables {
		require.True(t, strings.HasPrefix(table, "public."), table)
		require.False(t, seen[table], "duplicate %s", table)
		seen[table] = true
		require.NotEmpty(t, refschema.PrimaryKey(table), table)
	}
	require.Equal(t, []string{"id"}, refschema.PrimaryKey(refschema.TenantsTable))
	require.Nil(t, refschema.PrimaryKey("public.nope"))

	// Callers own what they get.
	tables[0] = "changed"
	require.Equal(t, refschema.Users, refschema.Tables()[0])
	pk := refschema.PrimaryKey(refschema.Users)
	pk[0] = "changed"
	require.Equal(t, refschema.TenantColumn, refschema.PrimaryKey(refschema.Users)[0])
}

// query collects single-column string rows.
func query(t *testing.T, conn *pgx.Conn, sql string, args ...any) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), sql, args...)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

func TestSchema(t *testing.T) {
	c := pgtest.Start(t)
	ctx := t.Context()
	conn := pgtest.Connect(t, c.ConnString("postgres"))
	require.NoError(t, conn.PgConn().Exec(ctx, refschema.SQL()).Close())

	t.Run("tables", func(t *testing.T) {
		got := query(t, conn, "SELECT 'public.' || tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
		want := append(refschema.Tables(), refschema.TenantsTable)
		slices.Sort(want)
		require.Equal(t, want, got)
	})

	for _, table := range append(refschema.Tables(), refschema.TenantsTable) {
		t.Run(table, func(t *testing.T) {
			// Primary key as declared, of supported key types.
			var keyCols, keyTypes []string
			rows, err := conn.Query(ctx, `SELECT a.attname, format_type(a.atttypid, NULL)
				FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
				JOIN pg_attribute a ON a.attrelid = $1::regclass AND a.attnum = k.attnum
				WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.n`, table)
			require.NoError(t, err)
			var col, typ string
			_, err = pgx.ForEachRow(rows, []any{&col, &typ}, func() error {
				keyCols = append(keyCols, col)
				keyTypes = append(keyTypes, typ)
				return nil
			})
			require.NoError(t, err)
			require.Equal(t, refschema.PrimaryKey(table), keyCols)
			for _, typ := range keyTypes {
				require.Contains(t, []string{"smallint", "integer", "bigint", "uuid", "text"}, typ)
			}

			// Column names are lower-case snake case.
			for _, name := range query(t, conn, "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped", table) {
				require.Regexp(t, regexp.MustCompile(`^[a-z][a-z0-9_]*$`), name)
			}
			if table == refschema.TenantsTable {
				return
			}

			// tenant_id bigint NOT NULL REFERENCES tenants.
			var typName string
			var notNull bool
			require.NoError(t, conn.QueryRow(ctx, `SELECT format_type(atttypid, NULL), attnotnull FROM pg_attribute
				WHERE attrelid = $1::regclass AND attname = $2`, table, refschema.TenantColumn).Scan(&typName, &notNull))
			require.Equal(t, "bigint", typName)
			require.True(t, notNull)
			fks := query(t, conn, `SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f'`, table)
			require.Contains(t, fks, "FOREIGN KEY (tenant_id) REFERENCES tenants(id)")

			// An index leads with tenant_id.
			idx := query(t, conn, `SELECT indexrelid::regclass::text FROM pg_index
				WHERE indrelid = $1::regclass AND indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'tenant_id')`, table)
			require.NotEmpty(t, idx)
		})
	}

	t.Run("keys without tenant", func(t *testing.T) {
		for _, table := range []string{refschema.AuditLogs, refschema.Attachments} {
			require.NotContains(t, refschema.PrimaryKey(table), refschema.TenantColumn, table)
		}
	})

	t.Run("column types", func(t *testing.T) {
		got := query(t, conn, `SELECT DISTINCT format_type(a.atttypid, NULL) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0`)
		for _, typ := range []string{"bigint", "integer", "smallint", "uuid", "text", "character varying", "character",
			"numeric", "double precision", "real", "boolean", "date", "timestamp with time zone", "interval",
			"jsonb", "text[]", "bytea", "inet", "user_role", "attachment_category", "invoice_status", "job_status"} {
			require.Contains(t, got, typ)
		}
	})

	t.Run("rows move between tenants", func(t *testing.T) {
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		defer func() { require.NoError(t, tx.Rollback(ctx)) }()
		for _, q := range []string{
			`INSERT INTO tenants (id, name, slug) VALUES (1, 'one', 'one'), (2, 'two', 'two')`,
			`INSERT INTO users (tenant_id, email, role) VALUES (1, 'a@example.com', 'admin')`,
			`INSERT INTO candidates (tenant_id, first_name) VALUES (1, 'Zoë')`,
			`INSERT INTO jobs (tenant_id, title) VALUES (1, 'Engineer')`,
			`INSERT INTO job_pipelines (tenant_id, job_id, candidate_id, stage) SELECT 1, j.id, c.id, 'Applied' FROM jobs j, candidates c`,
			`INSERT INTO audit_logs (tenant_id, action) VALUES (1, 'create')`,
			`INSERT INTO attachments (id, tenant_id, record_type, record_id, category, file_name, size_bytes, object_key)
				VALUES ('6f1c8a2e-1f0b-4a7e-9a55-1d2c3b4a5f60', 1, 'candidate', 1, 'cv', 'CV.pdf', 100, 'k')`,
			// A key change with a referencing row, and moves of rows whose key lacks the tenant.
			`UPDATE candidates SET tenant_id = 2`,
			`UPDATE jobs SET tenant_id = 2`,
			`UPDATE audit_logs SET tenant_id = 2`,
			`UPDATE attachments SET tenant_id = 2`,
		} {
			_, err := tx.Exec(ctx, q)
			require.NoError(t, err, q)
		}
		var n int
		require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM job_pipelines p JOIN candidates c ON c.id = p.candidate_id WHERE c.tenant_id = 2`).Scan(&n))
		require.Equal(t, 1, n)
	})
}
