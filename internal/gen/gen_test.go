package gen_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/pgcluster"
	"github.com/exportd/exportd/internal/pgtest"
	"github.com/exportd/exportd/internal/refschema"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// dirStore is an ObjectPutter that writes under a directory.
type dirStore struct{ dir string }

var _ gen.ObjectPutter = dirStore{}

func (s dirStore) Put(_ context.Context, key string, r io.Reader) (n int64, err error) {
	if !filepath.IsLocal(key) {
		return 0, fmt.Errorf("put %q: not a local path", key)
	}
	p := filepath.Join(s.dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return 0, fmt.Errorf("put %q: %w", key, err)
	}
	f, err := os.Create(p)
	if err != nil {
		return 0, fmt.Errorf("put %q: %w", key, err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("put %q: %w", key, cerr)
		}
	}()
	n, err = io.Copy(f, r)
	if err != nil {
		return n, fmt.Errorf("put %q: %w", key, err)
	}
	return n, nil
}

// loadDB creates database name in c and loads cfg into it.
func loadDB(t testing.TB, c *pgcluster.Cluster, name string, files gen.ObjectPutter, cfg gen.Config) (*pgx.Conn, *gen.Summary) {
	t.Helper()
	ctx := t.Context()
	require.NoError(t, c.CreateDatabase(ctx, name))
	conn := pgtest.Connect(t, c.ConnString(name))
	sum, err := gen.Load(ctx, conn, files, cfg)
	require.NoError(t, err)
	return conn, sum
}

// orderBy returns the ORDER BY list of a table's primary key.
func orderBy(table string) string {
	return strings.Join(refschema.PrimaryKey(table), ", ")
}

// tableHash returns the sha256 of a table's COPY text output in key order.
func tableHash(t *testing.T, conn *pgx.Conn, table string) string {
	t.Helper()
	h := sha256.New()
	_, err := conn.PgConn().CopyTo(t.Context(), h, "COPY (SELECT * FROM "+table+" ORDER BY "+orderBy(table)+") TO STDOUT")
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// treeHashes returns the sha256 of every file under dir by relative path.
func treeHashes(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		s := sha256.Sum256(b)
		out[filepath.ToSlash(rel)] = hex.EncodeToString(s[:])
		return nil
	})
	require.NoError(t, err)
	return out
}

func allTables() []string { return append([]string{refschema.TenantsTable}, refschema.Tables()...) }

func TestLoad(t *testing.T) {
	c := pgtest.Start(t)
	cfg := gen.Config{
		Seed:               42,
		Tenants:            20,
		Rows:               20_000,
		Files:              true,
		CreateSchema:       true,
		OpenInvoiceTenants: []int64{3, 7},
		Logger:             testLogger(t),
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	connA, sumA := loadDB(t, c, "a", dirStore{dirA}, cfg)
	connB, sumB := loadDB(t, c, "b", dirStore{dirB}, cfg)
	ctx := t.Context()

	t.Run("summary", func(t *testing.T) {
		require.Len(t, sumA.Tenants, 20)
		require.InDelta(t, 20_000, sumA.TotalRows, 2_000)
		require.Equal(t, []int64{3, 7}, sumA.OpenInvoiceTenants)
		require.NotEmpty(t, sumA.MissingFiles)
		require.Positive(t, sumA.FilesWritten)
		var total int64
		for _, n := range sumA.TableRows {
			total += n
		}
		require.Equal(t, sumA.TotalRows, total)
		// Tenant 1 is the biggest, and sizes are skewed.
		size := func(ts gen.TenantSummary) (n int64) {
			for _, c := range ts.Rows {
				n += c
			}
			return n
		}
		for _, ts := range sumA.Tenants[1:] {
			require.Greater(t, size(sumA.Tenants[0]), size(ts), "tenant %d", ts.ID)
		}
		require.Greater(t, size(sumA.Tenants[0]), 5*size(sumA.Tenants[19]))
	})

	t.Run("counts", func(t *testing.T) {
		for _, table := range refschema.Tables() {
			rows, err := connA.Query(ctx, "SELECT tenant_id, count(*) FROM "+table+" GROUP BY tenant_id")
			require.NoError(t, err)
			got := map[int64]int64{}
			for rows.Next() {
				var tenant, n int64
				require.NoError(t, rows.Scan(&tenant, &n))
				got[tenant] = n
			}
			require.NoError(t, rows.Err())
			want := map[int64]int64{}
			for _, ts := range sumA.Tenants {
				if n := ts.Rows[table]; n > 0 {
					want[ts.ID] = n
				}
			}
			require.Equal(t, want, got, table)
			require.Equal(t, sumA.TableRows[table], sumOf(got), table)
		}
	})

	t.Run("deterministic", func(t *testing.T) {
		for _, table := range allTables() {
			require.Equal(t, tableHash(t, connA, table), tableHash(t, connB, table), table)
		}
		require.Equal(t, treeHashes(t, dirA), treeHashes(t, dirB))
		sumA.Duration, sumB.Duration = 0, 0
		require.Equal(t, sumA, sumB)
	})

	t.Run("toast", func(t *testing.T) {
		for _, table := range []string{refschema.Candidates, refschema.Contacts, refschema.Tasks} {
			col := "notes"
			if table == refschema.Tasks {
				col = "body"
			}
			var big, toastBytes int64
			require.NoError(t, connA.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE octet_length("+col+") > 8192").Scan(&big))
			require.NoError(t, connA.QueryRow(ctx,
				"SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = $1::regclass", table).Scan(&toastBytes))
			require.Positive(t, big, table)
			require.Positive(t, toastBytes, table)
		}
	})

	t.Run("files", func(t *testing.T) {
		require.Equal(t, len(sumA.MissingFiles), checkFiles(t, connA, dirA, sumA.MissingFiles))
		var n int64
		require.NoError(t, connA.QueryRow(ctx, "SELECT count(*) FROM attachments").Scan(&n))
		require.Equal(t, n-int64(len(sumA.MissingFiles)), sumA.FilesWritten)
	})

	t.Run("invoices and admins", func(t *testing.T) {
		var open []int64
		rows, err := connA.Query(ctx, "SELECT DISTINCT tenant_id FROM invoices WHERE status = 'open' ORDER BY 1")
		require.NoError(t, err)
		open, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		require.Equal(t, sumA.OpenInvoiceTenants, open)
		var withoutAdmin int
		require.NoError(t, connA.QueryRow(ctx, `SELECT count(*) FROM tenants t WHERE NOT EXISTS
			(SELECT 1 FROM users u WHERE u.tenant_id = t.id AND u.role = 'admin' AND u.is_active)`).Scan(&withoutAdmin))
		require.Zero(t, withoutAdmin)
	})

	// Each predicate selects an edge case that must be in the data.
	edges := []struct {
		name, table, where string
	}{
		{"NaN", "candidates", "score = 'NaN'"},
		{"infinity", "candidates", "score = '-Infinity'"},
		{"negative zero", "candidates", "score = 0 AND score::text = '-0'"},
		{"tiny float", "candidates", "score > 0 AND score < 1e-300"},
		{"real NaN", "candidates", "match_ratio = 'NaN'"},
		{"BC date", "candidates", "date_of_birth < '0001-01-01'"},
		{"infinite date", "jobs", "closes_on = 'infinity'"},
		{"microseconds", "candidates", "extract(microseconds from created_at)::bigint % 1000 <> 0"},
		{"negative interval", "candidates", "notice_period < '0'"},
		{"formula =", "candidates", "first_name LIKE '=%'"},
		{"formula +", "contacts", "notes LIKE '+%'"},
		{"formula -", "candidates", "last_name LIKE '-%'"},
		{"formula @", "tasks", "title LIKE '@%'"},
		{"newline", "candidates", "notes LIKE E'%\\n%'"},
		{"carriage return", "contacts", "notes LIKE E'%\\r%'"},
		{"double quote", "candidates", `notes LIKE '%"%'`},
		{"comma", "contacts", "notes LIKE '%,%'"},
		{"leading space", "companies", "name LIKE ' %'"},
		{"empty string", "candidates", "notes = ''"},
		{"null", "candidates", "notes IS NULL"},
		{"CJK", "candidates", "first_name ~ '[一-龥]'"},
		{"emoji", "candidates", "first_name ~ '[🌸🚀]'"},
		{"accent", "candidates", "last_name LIKE '%ü%'"},
		{"array null element", "candidates", "array_position(skills, NULL) IS NOT NULL"},
		{"array comma element", "candidates", "EXISTS (SELECT 1 FROM unnest(skills) s WHERE s LIKE '%,%')"},
		{"empty array", "candidates", "skills = '{}'"},
		{"json null", "candidates", "custom_fields = 'null'::jsonb"},
		{"json object", "candidates", "custom_fields ? 'source_id'"},
		{"empty bytea", "candidates", "photo = ''::bytea"},
		{"bytea", "candidates", "length(photo) > 0"},
		{"ipv6", "audit_logs", "family(ip_address) = 6"},
		{"traversal file name", "attachments", "file_name = '../../etc/passwd'"},
		{"absolute file name", "attachments", "file_name = '/abs/path.pdf'"},
		{"long file name", "attachments", "length(file_name) >= 1000"},
		{"duplicate file name", "attachments", "(tenant_id, file_name) IN (SELECT tenant_id, file_name FROM attachments GROUP BY 1, 2 HAVING count(*) > 1)"},
		{"cv", "attachments", "category = 'cv'"},
		{"inactive admin", "users", "role = 'admin' AND NOT is_active"},
		{"void invoice", "invoices", "status = 'void'"},
	}
	t.Run("edge cases", func(t *testing.T) {
		for _, e := range edges {
			var n int64
			require.NoError(t, connA.QueryRow(ctx, "SELECT count(*) FROM "+e.table+" WHERE "+e.where).Scan(&n), e.name)
			require.Positive(t, n, e.name)
		}
	})

	t.Run("other seed differs", func(t *testing.T) {
		cfg := cfg
		cfg.Seed, cfg.Files = 43, false
		connC, _ := loadDB(t, c, "c", nil, cfg)
		require.NotEqual(t, tableHash(t, connA, refschema.Candidates), tableHash(t, connC, refschema.Candidates))
	})
}

func sumOf(m map[int64]int64) (n int64) {
	for _, v := range m {
		n += v
	}
	return n
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name  string
		cfg   gen.Config
		files gen.ObjectPutter
		want  string
	}{
		{"files without putter", gen.Config{Files: true}, nil, "no ObjectPutter"},
		{"negative rows", gen.Config{Rows: -1}, nil, "rows -1"},
		{"unknown open invoice tenant", gen.Config{Tenants: 3, OpenInvoiceTenants: []int64{4}}, nil, "open invoice tenant 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := gen.Load(t.Context(), nil, tt.files, tt.cfg)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

// BenchmarkLoad loads 1,000,000 rows, without and with attachment files,
// and reports rows/s.
func BenchmarkLoad(b *testing.B) {
	c := pgtest.Start(b)
	dbs := 0 // sub-benchmarks run more than once in the same cluster
	for _, files := range []bool{false, true} {
		b.Run(fmt.Sprintf("files=%t", files), func(b *testing.B) {
			for range b.N {
				var store gen.ObjectPutter
				if files {
					store = dirStore{b.TempDir()}
				}
				dbs++
				name := fmt.Sprintf("bench%d", dbs)
				start := time.Now()
				_, sum := loadDB(b, c, name, store, gen.Config{
					Seed: 1, Tenants: 200, Rows: 1_000_000, Files: files, CreateSchema: true,
					Logger: slog.New(slog.DiscardHandler),
				})
				elapsed := time.Since(start).Seconds()
				b.ReportMetric(float64(sum.TotalRows)/elapsed, "rows/s")
				b.ReportMetric(float64(sum.FileBytes)/elapsed/1e6, "fileMB/s")
			}
		})
	}
}

func TestWorkload(t *testing.T) {
	c := pgtest.Start(t)
	dir := t.TempDir()
	_, sum := loadDB(t, c, "w", dirStore{dir}, gen.Config{
		Seed: 7, Tenants: 20, Rows: 20_000, Files: true, CreateSchema: true, Logger: testLogger(t),
	})
	conn := pgtest.Connect(t, c.ConnString("w"))
	ctx := t.Context()

	var tasksBefore int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM tasks").Scan(&tasksBefore))
	require.Equal(t, sum.TableRows[refschema.Tasks], tasksBefore)

	// A slot shows what logical decoding makes of the workload.
	_, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot('gen_test', 'test_decoding')")
	require.NoError(t, err)

	w := gen.Workload{
		Seed:          7,
		Workers:       4,
		Duration:      3 * time.Second,
		TruncateTable: refschema.Tasks,
		AddColumn:     refschema.Candidates,
		DropColumn:    true,
		Files:         dirStore{dir},
		Logger:        testLogger(t),
	}
	stats, err := w.Run(ctx, c.ConnString("w"))
	require.NoError(t, err)
	t.Logf("workload: %+v", stats)

	kinds := map[string]int64{
		"commits":             stats.Commits,
		"rollbacks":           stats.Rollbacks,
		"inserts":             stats.Inserts,
		"updates":             stats.Updates,
		"toast updates":       stats.ToastUpdates,
		"deletes":             stats.Deletes,
		"tenant moves":        stats.TenantMoves,
		"tenant key moves":    stats.TenantKeyMoves,
		"extra column writes": stats.ExtraColumnWrites,
		"truncates":           stats.Truncates,
		"add columns":         stats.AddColumns,
		"drop columns":        stats.DropColumns,
	}
	for kind, n := range kinds {
		require.Positive(t, n, kind)
	}
	for _, table := range refschema.Tables() {
		require.Positive(t, stats.ByTable[table], table)
	}

	// The column is gone again, and tasks were truncated midway: what is
	// left was inserted afterwards.
	var n int64
	require.NoError(t, conn.QueryRow(ctx,
		"SELECT count(*) FROM information_schema.columns WHERE table_name = 'candidates' AND column_name = 'workload_extra'").Scan(&n))
	require.Zero(t, n)
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM tasks").Scan(&n))
	require.Less(t, n, tasksBefore)

	var unchangedToast, keyChanges, truncates int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT
			count(*) FILTER (WHERE data LIKE '%unchanged-toast-datum%'),
			count(*) FILTER (WHERE data LIKE '%: UPDATE: old-key: tenant_id[bigint]:%'),
			count(*) FILTER (WHERE data LIKE 'table public.tasks: TRUNCATE:%')
		FROM pg_logical_slot_get_changes('gen_test', NULL, NULL)`).Scan(&unchangedToast, &keyChanges, &truncates))
	require.Positive(t, unchangedToast, "updates with unchanged TOAST values")
	require.Positive(t, keyChanges, "updates that change the key")
	require.Equal(t, int64(1), truncates)

	// Attachments inserted by the workload have their files too (and some
	// with a missing file may have been deleted).
	require.LessOrEqual(t, checkFiles(t, conn, dir, sum.MissingFiles), len(sum.MissingFiles))
}

// checkFiles checks that every attachment has its file under dir, of its
// size and checksum, but for the missing ones, and returns how many of
// those it saw.
func checkFiles(t *testing.T, conn *pgx.Conn, dir string, missingKeys []string) (nMissing int) {
	t.Helper()
	missing := map[string]bool{}
	for _, k := range missingKeys {
		missing[k] = true
	}
	rows, err := conn.Query(t.Context(), "SELECT object_key, size_bytes, sha256 FROM attachments")
	require.NoError(t, err)
	var key string
	var size int64
	var sum []byte
	_, err = pgx.ForEachRow(rows, []any{&key, &size, &sum}, func() error {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(key)))
		if missing[key] {
			nMissing++
			require.ErrorIs(t, err, fs.ErrNotExist, key)
			return nil
		}
		require.NoError(t, err, key)
		require.Len(t, b, int(size), key)
		require.GreaterOrEqual(t, size, int64(100))
		require.LessOrEqual(t, size, int64(64*1024))
		s := sha256.Sum256(b)
		require.Equal(t, s[:], sum, key)
		return nil
	})
	require.NoError(t, err)
	return nMissing
}

func TestWorkloadErrors(t *testing.T) {
	tests := []struct {
		name string
		w    gen.Workload
		want string
	}{
		{"truncate a parent", gen.Workload{TruncateTable: refschema.Candidates}, "truncate table"},
		{"truncate unknown", gen.Workload{TruncateTable: "public.nope"}, "truncate table"},
		{"add to unknown", gen.Workload{AddColumn: "public.nope"}, "add column"},
		{"drop without add", gen.Workload{DropColumn: true}, "drop column"},
		{"existing column", gen.Workload{AddColumn: refschema.Candidates, ExtraColumn: "notes"}, "extra column"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.w.Run(t.Context(), "postgres://127.0.0.1:1/none")
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestBigTransaction(t *testing.T) {
	c := pgtest.Start(t)
	conn, _ := loadDB(t, c, "big", nil, gen.Config{Seed: 1, Tenants: 2, Rows: 1_000, CreateSchema: true, Logger: testLogger(t)})
	ctx := t.Context()
	var before, after int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM audit_logs WHERE tenant_id = 2").Scan(&before))
	require.NoError(t, gen.BigTransaction(ctx, conn, 2, 50_000))
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM audit_logs WHERE tenant_id = 2").Scan(&after))
	require.Equal(t, before+50_000, after)
}

// testLogger logs to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
