package pipeline_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/oracle"
	"github.com/exportd/exportd/internal/stagetest"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
	"github.com/exportd/exportd/storage"
)

// fsPublisher is the filesystem store with signed links served by
// storage.DownloadHandler on a loopback HTTP server.
type fsPublisher struct {
	*storage.FS
	*storage.FSLinker
}

func newFS(t *testing.T) *storage.FS {
	t.Helper()
	dir, err := os.MkdirTemp("", "exportd-fs-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	fs, err := storage.NewFS(dir)
	require.NoError(t, err)
	return fs
}

func newFSPublisher(t *testing.T) *fsPublisher {
	t.Helper()
	fs := newFS(t)
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	signer, err := storage.NewSigner(bytes.Repeat([]byte("k"), 32), srv.URL, time.Now)
	require.NoError(t, err)
	mux.Handle("/download/", storage.DownloadHandler(fs, signer, slog.New(slog.DiscardHandler)))
	return &fsPublisher{FS: fs, FSLinker: &storage.FSLinker{FS: fs, Signer: signer}}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// httpGet downloads url with plain net/http.
func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", url, body)
	return body
}

// masterRow is one row of master.csv.
type masterRow struct {
	Part, FileName, URL string
	Expires             time.Time
	Size                int64
	SHA256              string
	Files               int64
}

func parseMaster(t *testing.T, body []byte) []masterRow {
	t.Helper()
	recs, err := csv.NewReader(bytes.NewReader(body)).ReadAll()
	require.NoError(t, err)
	require.Equal(t, []string{"part", "file_name", "url", "expires_at", "size_bytes", "sha256", "file_count"}, recs[0])
	var out []masterRow
	for _, r := range recs[1:] {
		exp, err := time.Parse(time.RFC3339, r[3])
		require.NoError(t, err)
		require.True(t, strings.HasSuffix(r[3], "Z"), "expires_at %q is not UTC", r[3])
		size, err := strconv.ParseInt(r[4], 10, 64)
		require.NoError(t, err)
		files, err := strconv.ParseInt(r[6], 10, 64)
		require.NoError(t, err)
		out = append(out, masterRow{r[0], r[1], r[2], exp, size, r[5], files})
	}
	return out
}

// download fetches the master CSV by its link, then every bundle by its link,
// checking each bundle's size and sha256 against master.csv.
func download(t *testing.T, get func(string) []byte, m *pipeline.Manifest) map[string]*zip.Reader {
	t.Helper()
	master := parseMaster(t, get(m.Master.URL))
	require.Len(t, master, 3)
	zips := map[string]*zip.Reader{}
	for _, row := range master {
		body := get(row.URL)
		require.EqualValues(t, row.Size, len(body), "%s size", row.Part)
		sum := sha256.Sum256(body)
		require.Equal(t, row.SHA256, hex.EncodeToString(sum[:]), "%s sha256", row.Part)
		require.WithinDuration(t, time.Now().Add(7*24*time.Hour), row.Expires, time.Minute, "%s expiry", row.Part)
		zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
		require.NoError(t, err, row.Part)
		zips[row.Part] = zr
	}
	require.ElementsMatch(t, []string{pipeline.PartData, pipeline.PartAttachments, pipeline.PartCVs}, slices.Collect(mapKeys(zips)))
	return zips
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func readEntry(t *testing.T, f *zip.File) []byte {
	t.Helper()
	rc, err := f.Open()
	require.NoError(t, err)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	require.NoError(t, err, f.Name)
	return b
}

func entry(t *testing.T, zr *zip.Reader, name string) []byte {
	t.Helper()
	for _, f := range zr.File {
		if f.Name == name {
			return readEntry(t, f)
		}
	}
	t.Fatalf("no %s in the bundle", name)
	return nil
}

// checkCSVs compares every CSV of the data bundle with PostgreSQL's COPY of
// the same columns of the tenant's rows (oracle.CheckDataBundle).
func checkCSVs(t *testing.T, ctx context.Context, conn *pgx.Conn, plan *pipeline.Plan, v *snapshot.Version, zr *zip.Reader, tenant string) int {
	t.Helper()
	n, err := oracle.CheckDataBundle(ctx, conn, plan, v.Table, zr, tenant)
	require.NoError(t, err)
	return n
}

// fileRow is an attachment row of production.
type fileRow struct {
	key, name string
	cv        bool
}

// checkFiles checks that the bundle holds exactly the tenant's files of its
// kind, byte for byte, at safe unique paths, and lists the missing ones.
func checkFiles(t *testing.T, ctx context.Context, files storage.Store, zr *zip.Reader, want []fileRow, cv bool, missing map[string]bool) (present, absent int) {
	t.Helper()
	wantSums := map[string]int{}
	wantMissing := map[string]bool{}
	for _, f := range want {
		if f.cv != cv {
			continue
		}
		if missing[f.key] {
			wantMissing[f.key] = true
			continue
		}
		rc, err := files.Get(ctx, f.key)
		require.NoError(t, err)
		h := sha256.New()
		_, err = io.Copy(h, rc)
		require.NoError(t, err)
		rc.Close()
		wantSums[hex.EncodeToString(h.Sum(nil))]++
	}
	gotSums := map[string]int{}
	seen := map[string]bool{}
	var missingCSV []byte
	for _, f := range zr.File {
		checkSafeName(t, f.Name)
		lower := strings.ToLower(f.Name)
		require.False(t, seen[lower], "duplicate path %q", f.Name)
		seen[lower] = true
		if f.Name == "missing_files.csv" {
			missingCSV = readEntry(t, f)
			continue
		}
		sum := sha256.Sum256(readEntry(t, f))
		gotSums[hex.EncodeToString(sum[:])]++
	}
	require.Equal(t, wantSums, gotSums, "files in the bundle (by sha256)")
	require.NotNil(t, missingCSV, "missing_files.csv")
	recs, err := csv.NewReader(bytes.NewReader(missingCSV)).ReadAll()
	require.NoError(t, err)
	gotMissing := map[string]bool{}
	for _, r := range recs[1:] {
		gotMissing[r[1]] = true
		require.NotEmpty(t, r[4], "reason")
	}
	require.Equal(t, wantMissing, gotMissing, "missing_files.csv")
	return len(zr.File) - 1, len(wantMissing)
}

func checkSafeName(t *testing.T, name string) {
	t.Helper()
	require.True(t, utf8.ValidString(name), "invalid UTF-8 in %q", name)
	require.False(t, strings.HasPrefix(name, "/"), "absolute path %q", name)
	require.NotContains(t, name, "\\")
	require.LessOrEqual(t, len(name), 255, "path too long: %q", name)
	for _, seg := range strings.Split(name, "/") {
		require.NotContains(t, []string{"", ".", ".."}, seg, "bad segment in %q", name)
	}
	require.Equal(t, path.Clean(name), name)
}

func productionFiles(t *testing.T, ctx context.Context, conn *pgx.Conn, tenant string) []fileRow {
	t.Helper()
	rows, err := conn.Query(ctx, "SELECT object_key, file_name, category = 'cv' FROM attachments WHERE tenant_id = $1", tenant)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (fileRow, error) {
		var f fileRow
		return f, r.Scan(&f.key, &f.name, &f.cv)
	})
	require.NoError(t, err)
	return out
}

// TestExportOracle exports every tenant of generated data through the
// filesystem store and its signed download links, and checks every CSV
// against PostgreSQL's COPY and every file against the file store.
func TestExportOracle(t *testing.T) {
	ctx := t.Context()
	env := stagetest.StartPG(t)
	files := newFS(t)
	sum, err := gen.Load(ctx, env.Admin, files, gen.Config{Seed: 11, Tenants: 12, Rows: 40_000, Files: true, CreateSchema: true, MissingFileFraction: 0.03})
	require.NoError(t, err)
	rep := env.Replicate(t, env.Config())
	v := rep.CatchUp(t, ctx, env)

	pub := newFSPublisher(t)
	spec := pipeline.DefaultSpec()
	plan, err := spec.Resolve(v.Tables())
	require.NoError(t, err)
	ex := pipeline.NewExporter(spec, files, pub, pipeline.ExportConfig{}, testLogger(t), nil)
	missing := map[string]bool{}
	for _, k := range sum.MissingFiles {
		missing[k] = true
	}

	var rows, present, absent int
	for _, ts := range sum.Tenants {
		tenant := strconv.FormatInt(ts.ID, 10)
		m, err := ex.Export(ctx, v, tenant, "req-"+tenant)
		require.NoError(t, err)
		require.Equal(t, v.LSN().String(), m.LSN)
		zips := download(t, func(u string) []byte { return httpGet(t, u) }, m)
		rows += checkCSVs(t, ctx, env.Admin, plan, v, zips[pipeline.PartData], tenant)
		want := productionFiles(t, ctx, env.Admin, tenant)
		p1, a1 := checkFiles(t, ctx, files, zips[pipeline.PartAttachments], want, false, missing)
		p2, a2 := checkFiles(t, ctx, files, zips[pipeline.PartCVs], want, true, missing)
		require.EqualValues(t, a1+a2, m.MissingFiles())
		present += p1 + p2
		absent += a1 + a2
	}
	require.Positive(t, absent, "the generated data has missing files")
	t.Logf("%d tenants: %d CSV rows byte-identical to COPY, %d files identical, %d missing listed", len(sum.Tenants), rows, present, absent)
}

// TestExportIdempotent: the same request exported twice yields the same
// manifest and rewrites nothing; an export that fails leaves no manifest and
// a retry completes it.
func TestExportIdempotent(t *testing.T) {
	ctx := t.Context()
	env := stagetest.StartPG(t)
	files := newFS(t)
	_, err := gen.Load(ctx, env.Admin, files, gen.Config{Seed: 5, Tenants: 3, Rows: 3000, Files: true, CreateSchema: true})
	require.NoError(t, err)
	rep := env.Replicate(t, env.Config())
	v := rep.CatchUp(t, ctx, env)
	pub := newFSPublisher(t)

	// A store that fails the CV bundle's upload half-way.
	failing := &failingPublisher{fsPublisher: pub, failKey: "internal_cvs.zip"}
	ex := pipeline.NewExporter(pipeline.DefaultSpec(), files, failing, pipeline.ExportConfig{}, testLogger(t), nil)
	_, err = ex.Export(ctx, v, "1", "r1")
	require.ErrorContains(t, err, "injected")
	m, err := ex.Existing(ctx, "1", "r1")
	require.NoError(t, err)
	require.Nil(t, m, "a failed export must not look complete")
	_, err = pub.Stat(ctx, "exports/1/r1/internal_cvs.zip")
	require.ErrorIs(t, err, storage.ErrNotExist, "a failed upload leaves nothing")

	failing.failKey = ""
	first, err := ex.Export(ctx, v, "1", "r1")
	require.NoError(t, err)
	puts := failing.puts.Load()
	second, err := ex.Export(ctx, v, "1", "r1")
	require.NoError(t, err)
	require.Equal(t, first, second)
	require.Equal(t, puts, failing.puts.Load(), "a completed export is not rewritten")
	zips := download(t, func(u string) []byte { return httpGet(t, u) }, second)
	require.NotEmpty(t, zips[pipeline.PartData].File)
}

type failingPublisher struct {
	*fsPublisher
	failKey string
	puts    atomic.Int64
}

func (f *failingPublisher) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	f.puts.Add(1)
	if f.failKey != "" && strings.HasSuffix(key, f.failKey) {
		r = io.MultiReader(io.LimitReader(r, 100), errReader{})
	}
	return f.fsPublisher.Put(ctx, key, r)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("injected upload failure") }
