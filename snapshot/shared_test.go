package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/s3test"
	"github.com/exportd/exportd/storage"
)

// sharedEnv, when set, runs the package's tests against shared staging in
// the S3 bucket it describes (JSON of sharedS3): TestSharedStaging sets it
// for a child run of the conformance tests.
const sharedEnv = "EXPORTD_TEST_SHARED_S3"

type sharedS3 struct {
	Endpoint, Region, AccessKey, SecretKey, Bucket string
}

// testBucket is the bucket of a run against shared staging (nil: local
// staging). Set once by TestMain.
var testBucket Bucket

func sharedFromEnv() error {
	v := os.Getenv(sharedEnv)
	if v == "" {
		return nil
	}
	var c sharedS3
	if err := json.Unmarshal([]byte(v), &c); err != nil {
		return fmt.Errorf("%s: %w", sharedEnv, err)
	}
	b, err := newTestS3(c, "")
	if err != nil {
		return err
	}
	testBucket = b
	return nil
}

func newTestS3(c sharedS3, prefix string) (*storage.S3, error) {
	return storage.NewS3(context.Background(), storage.S3Config{
		Bucket: c.Bucket, Prefix: prefix, Region: c.Region, Endpoint: c.Endpoint, PathStyle: true,
		AccessKeyID: c.AccessKey, SecretAccessKey: c.SecretKey,
	}, slog.New(slog.DiscardHandler))
}

// prefixFor is the bucket prefix of the store in dir: reopening dir reopens it.
func prefixFor(dir string) string {
	h := sha256.Sum256([]byte(dir))
	return "t-" + hex.EncodeToString(h[:8]) + "/"
}

// openForTest opens the store of dir: in local staging, or, in a run
// against shared staging, as the writer of dir's bucket prefix.
func openForTest(ctx context.Context, dir string, opts Options) (*Store, error) {
	if testBucket == nil {
		return Open(ctx, dir, opts)
	}
	opts.Shared = &SharedOptions{Bucket: testBucket, Prefix: prefixFor(dir), ReplicaID: "test-writer",
		PollInterval: 10 * time.Millisecond, DeleteDelay: time.Hour}
	s, err := Open(ctx, dir, opts)
	if err != nil {
		return nil, err
	}
	if err := s.Acquire(ctx); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

// openTestFollower opens a follower of dir's bucket prefix, closed at the
// end of the test.
func openTestFollower(t testing.TB, dir string) *Store {
	t.Helper()
	f, err := Open(context.Background(), t.TempDir(), Options{Logger: testLogger(), Shared: &SharedOptions{
		Bucket: testBucket, Prefix: prefixFor(dir), ReplicaID: "test-follower", PollInterval: 10 * time.Millisecond}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// checkFollower checks that the follower early, and a follower opened now,
// of the writer w's bucket prefix hold what w holds once they have caught
// up: the state, every tenant's rows of every table, and the same
// key-to-tenant index.
func checkFollower(t testing.TB, w, early *Store, dir string) {
	t.Helper()
	w.mu.Lock()
	closed := w.closed
	w.mu.Unlock()
	if closed || t.Failed() || !w.Shared().Writer {
		return
	}
	// Hold the writer still (compaction and position updates wait).
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	compareFollower(t, w, early, "early")
	compareFollower(t, w, openTestFollower(t, dir), "late")
}

func compareFollower(t testing.TB, w, f *Store, which string) {
	t.Helper()
	ws := w.Shared()
	ctx := context.Background()
	require.Eventually(t, func() bool {
		fs := f.Shared()
		return fs.Entry >= ws.Entry && fs.IndexBehind == 0
	}, 60*time.Second, 10*time.Millisecond, "follower catches up with entry %d", ws.Entry)
	require.Equal(t, w.State(), f.State(), "state")
	wv, err := w.Pin(ctx)
	require.NoError(t, err)
	defer wv.Close()
	fv, err := f.Pin(ctx)
	require.NoError(t, err)
	defer fv.Close()
	require.Equal(t, wv.Tables(), fv.Tables(), "tables")
	for table, tenants := range versionTenants(t, w, wv.dv) {
		for _, tenant := range tenants {
			require.Equal(t, scanAll(t, wv, table, tenant), scanAll(t, fv, table, tenant), "table %s tenant %s", table, tenant)
		}
	}
	// The follower derived its index from the files; the writer kept its own.
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	require.Equal(t, indexEntries(t, w), indexEntries(t, f), "key-to-tenant index")
	t.Logf("%s follower at entry %d matches the writer", which, ws.Entry)
}

func indexEntries(t testing.TB, s *Store) map[string]string {
	got := map[string]string{}
	require.NoError(t, scanPrefix(s.db, []byte(prefixIndex), func(k, v []byte) error {
		got[string(k)] = string(v)
		return nil
	}))
	return got
}

// versionTenants lists the tenants (as text) each table of dv holds rows
// or changes of.
func versionTenants(t testing.TB, s *Store, dv *dataVer) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	add := func(tm *tableMeta, enc []byte) {
		g := tm.cur()
		if len(enc) == 0 || enc[0] == 0 {
			return
		}
		name := decodeValue(g.tenantKind, enc[1:])
		if !slices.Contains(out[tm.Name], name) {
			out[tm.Name] = append(out[tm.Name], name)
		}
	}
	for _, b := range dv.bases {
		if tm := dv.tables[b.Table]; tm != nil {
			add(tm, b.Tenant)
		}
	}
	for _, sg := range dv.segs {
		r, f, err := s.openData(sg.name())
		require.NoError(t, err)
		it := newSegIter(f, s.lay, nil, nil, readBatchRows)
		for it.next() {
			tm := dv.tables[binary.BigEndian.Uint32(it.sk)]
			if tm == nil {
				continue
			}
			n := tenantLen(tm.cur().tenantKind, it.sk[4:])
			require.Positive(t, n)
			add(tm, it.sk[4:4+n])
		}
		require.NoError(t, it.close())
		require.NoError(t, r.Close())
	}
	return out
}

// sharedConformance are the tests TestSharedStaging runs against shared
// staging, unchanged: every test of the store's behaviour (not of local
// files, encodings or memory use), but TestManyTenants, which checks the
// bound on open files over 2,000 base files and, against S3, spends a
// minute of CI uploading and downloading them.
var sharedConformance = []string{
	"TestWaitForAndAdvance", "TestBusyAndClosed", "TestLoadReplacesEverything", "TestLoadAbortLeavesNothing",
	"TestSchemaEvolution", "TestUnchangedValuesAndMoves", "TestTruncate", "TestMetricsAndStats",
	"TestBaseFilesReadable", "TestPinnedFilesKept", "TestCloseDuringCompaction",
	"TestFolded", "TestPageBoundsOnKeyOnly", "TestCrash", "TestCrashKill", "TestIndexPending",
	"TestLoadCompressionAuto", "TestMergeWindows", "TestParallelCompaction", "TestSmoke", "TestModel",
}

// TestSharedStaging runs the store's tests against shared staging in a
// bucket of versitygw, the S3 server that checks signatures: in a child
// process of this test binary, where openTestStore opens shared stores.
func TestSharedStaging(t *testing.T) {
	if testBucket != nil {
		t.Skip("this is the child run")
	}
	srv := s3test.Start(t)
	cfg, err := json.Marshal(sharedS3{Endpoint: srv.Endpoint, Region: srv.Region, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: srv.Bucket})
	require.NoError(t, err)
	// -test.short: the crash and model tests run fewer rounds (as in a
	// short local run); every test still runs.
	args := []string{"-test.run=^(" + strings.Join(sharedConformance, "|") + ")$", "-test.count=1", "-test.v", "-test.timeout=15m", "-test.short"}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), sharedEnv+"="+string(cfg))
	logPath := filepath.Join(t.TempDir(), "child.log")
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	err = cmd.Run()
	require.NoError(t, logf.Close())
	out, rerr := os.ReadFile(logPath)
	require.NoError(t, rerr)
	if err != nil {
		t.Fatalf("child run against shared staging: %v\n%s", err, tailOf(string(out), 12000))
	}
	for _, name := range sharedConformance {
		require.Contains(t, string(out), "--- PASS: "+name+" ", "the child ran and passed %s", name)
	}
	t.Logf("%d tests passed against shared staging in %s", len(sharedConformance), time.Since(start).Round(time.Millisecond))
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// startTestBucket starts versitygw for a test and returns a bucket under
// prefix.
func startTestBucket(t *testing.T, prefix string) (*storage.S3, *s3test.Server) {
	t.Helper()
	srv := s3test.Start(t)
	b, err := newTestS3(sharedS3{Endpoint: srv.Endpoint, Region: srv.Region, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: srv.Bucket}, prefix)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b, srv
}

// TestBucketObjects runs the objects conformance suite against data files
// in a bucket, and checks that an object one cache uploads is readable
// through another, empty cache.
func TestBucketObjects(t *testing.T) {
	if testBucket != nil {
		t.Skip("this is the child run")
	}
	b, _ := startTestBucket(t, "")
	n := 0
	newObjects := func(t *testing.T) *bucketObjects {
		n++
		o, err := newBucketObjects(context.Background(), b, fmt.Sprintf("objs-%d/", n), t.TempDir())
		require.NoError(t, err)
		return o
	}
	objectsAcceptance(t, func(t *testing.T) objects { return newObjects(t) })

	o := newObjects(t)
	w, err := o.Create("seg-1.parquet")
	require.NoError(t, err)
	_, err = w.Write([]byte("0123456789"))
	require.NoError(t, err)
	require.NoError(t, w.Commit())
	other, err := newBucketObjects(context.Background(), b, o.prefix, t.TempDir())
	require.NoError(t, err)
	_, err = other.Open("seg-1.parquet")
	require.Error(t, err, "not in the bucket before Sync")
	require.NoError(t, o.Sync([]string{"seg-1.parquet"}))
	r, err := other.Open("seg-1.parquet")
	require.NoError(t, err)
	require.Equal(t, int64(10), r.Size())
	buf := make([]byte, 4)
	_, err = r.ReadAt(buf, 6)
	require.NoError(t, err)
	require.Equal(t, "6789", string(buf))
	require.NoError(t, r.Close())
	require.NoError(t, o.Remove("seg-1.parquet"))
	require.NoError(t, other.dropLocal("seg-1.parquet"))
	_, err = other.Open("seg-1.parquet")
	require.ErrorIs(t, err, os.ErrNotExist, "removed from the bucket")
}

// openShared opens a store of the shared staging at prefix of b.
func openShared(t *testing.T, b Bucket, prefix, replica string, opts Options) *Store {
	t.Helper()
	opts.Logger = testLogger()
	opts.Shared = &SharedOptions{Bucket: b, Prefix: prefix, ReplicaID: replica, PollInterval: 10 * time.Millisecond}
	s, err := Open(context.Background(), t.TempDir(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestFencedWriter: a writer that another replica took over from (it lost
// the replication slot but still runs) tries to commit, and is refused;
// nothing it wrote after the takeover becomes visible.
func TestFencedWriter(t *testing.T) {
	if testBucket != nil {
		t.Skip("this is the child run")
	}
	ctx := context.Background()
	b, _ := startTestBucket(t, "")
	opts := Options{policy: policy{fanIn: 32, manual: true}}
	a := openShared(t, b, "fence/", "a", opts)
	c := openShared(t, b, "fence/", "c", opts)
	_, err := c.Begin()
	require.ErrorIs(t, err, ErrNotWriter, "a follower cannot write")
	require.ErrorIs(t, c.Advance(ctx, 1), ErrNotWriter)

	require.NoError(t, a.Acquire(ctx))
	require.Equal(t, SharedState{Shared: true, Writer: true, Term: 1, WriterID: "a", Entry: 1, LastPoll: a.Shared().LastPoll}, a.Shared())
	loadRows(t, a, 10, []TableSchema{schemaOrders, schemaItems}, map[string][]Row{
		schemaOrders.Name: {row("1", "1", "one")}, schemaItems.Name: {row("5", "1", "five")}})
	require.NoError(t, c.WaitFor(ctx, 10))

	// c takes over (it won the slot) while a still runs and has a batch open.
	ba, err := a.Begin()
	require.NoError(t, err)
	require.NoError(t, ba.Insert(schemaOrders.Name, row("1", "2", "lost")))
	require.NoError(t, c.Acquire(ctx))
	require.Equal(t, uint64(2), c.Shared().Term)
	err = ba.Commit(ctx, 20)
	require.ErrorIs(t, err, ErrFenced, "the fenced writer's commit is refused")
	ba.Abort()
	require.False(t, a.Shared().Writer)
	_, err = a.Begin()
	require.ErrorIs(t, err, ErrNotWriter)
	_, err = a.BeginLoad(ctx, "slot", 30, []TableSchema{schemaOrders})
	require.ErrorIs(t, err, ErrNotWriter)
	require.ErrorIs(t, a.Compact(ctx), ErrNotWriter)

	// The new writer goes on from the committed version; the fenced one
	// follows it.
	bc, err := c.Begin()
	require.NoError(t, err)
	require.NoError(t, bc.Insert(schemaOrders.Name, row("1", "3", "three")))
	require.NoError(t, bc.Delete(schemaItems.Name, row("5", nil, nil))) // tenant found through the index
	require.NoError(t, bc.Commit(ctx, 40))
	require.NoError(t, a.WaitFor(ctx, 40))
	for _, s := range []*Store{a, c} {
		v, err := s.Pin(ctx)
		require.NoError(t, err)
		require.Equal(t, [][]string{{"1", "1", "one"}, {"1", "3", "three"}}, scanAll(t, v, schemaOrders.Name, "1"))
		require.Empty(t, scanAll(t, v, schemaItems.Name, "1"))
		require.NoError(t, v.Close())
	}

	// A stale writer that never noticed: its term's entries are refused too,
	// whatever it tries to write (here the position).
	a.mu.Lock()
	a.sh.writer = true // as if it had missed the takeover
	a.mu.Unlock()
	require.NoError(t, a.Advance(ctx, 50))
	err = a.persistState(true)
	require.ErrorIs(t, err, ErrFenced)
	require.False(t, a.Shared().Writer)
	require.Equal(t, LSN(40), c.State().LSN, "nothing the fenced writer wrote is committed")
}

// TestTakeover: the writer dies; a follower that kept up with it takes
// over from the last committed version, its key-to-tenant index ready, and
// the first writer, reopened, follows it.
func TestTakeover(t *testing.T) {
	if testBucket != nil {
		t.Skip("this is the child run")
	}
	ctx := context.Background()
	b, _ := startTestBucket(t, "")
	opts := Options{MemoryLimit: 32 << 10, policy: policy{fanIn: 3, maxSegments: 2, foldMinBytes: 1, foldRatio: 1, foldMaxAge: time.Hour, manual: true}}
	aDir := t.TempDir()
	opts.Logger = testLogger()
	opts.Shared = &SharedOptions{Bucket: b, Prefix: "take/", ReplicaID: "a", PollInterval: 10 * time.Millisecond}
	a, err := Open(ctx, aDir, opts)
	require.NoError(t, err)
	require.NoError(t, a.Acquire(ctx))
	f := openShared(t, b, "take/", "f", Options{policy: opts.policy, MemoryLimit: opts.MemoryLimit})

	var items []Row
	for i := range 300 {
		items = append(items, row(fmt.Sprint(i), fmt.Sprint(i%7), "v"))
	}
	loadRows(t, a, 10, []TableSchema{schemaItems}, map[string][]Row{schemaItems.Name: items})
	require.NoError(t, a.Compact(ctx)) // base files
	ba, err := a.Begin()
	require.NoError(t, err)
	for i := 300; i < 600; i++ {
		require.NoError(t, ba.Insert(schemaItems.Name, row(fmt.Sprint(i), fmt.Sprint(i%7), "w")))
	}
	require.NoError(t, ba.Update(schemaItems.Name, nil, row("3", "100", "moved"), nil)) // tenant 3 -> 100
	require.NoError(t, ba.Commit(ctx, 20))
	require.Eventually(t, func() bool { s := f.Shared(); return s.Entry == a.Shared().Entry && s.IndexBehind == 0 },
		30*time.Second, 10*time.Millisecond)
	a.crash()

	require.NoError(t, f.Acquire(ctx))
	require.Equal(t, LSN(20), f.State().LSN)
	bf, err := f.Begin()
	require.NoError(t, err)
	// Deletes by key alone: the tenant comes from the follower's index.
	for i := 0; i < 600; i += 2 {
		require.NoError(t, bf.Delete(schemaItems.Name, row(fmt.Sprint(i), nil, nil)))
	}
	require.NoError(t, bf.Delete(schemaItems.Name, row("3", nil, nil)))
	require.NoError(t, bf.Commit(ctx, 30))
	v, err := f.Pin(ctx)
	require.NoError(t, err)
	total := 0
	for tenant := range 7 {
		rows := scanAll(t, v, schemaItems.Name, fmt.Sprint(tenant))
		for _, r := range rows {
			var id int
			_, err := fmt.Sscan(r[0], &id)
			require.NoError(t, err)
			require.Equal(t, 1, id%2, "row %d was deleted", id)
		}
		total += len(rows)
	}
	require.Empty(t, scanAll(t, v, schemaItems.Name, "100"), "the moved row was deleted in its new tenant")
	require.Equal(t, 299, total) // 300 odd ids but 3
	require.NoError(t, v.Close())

	// The dead writer comes back: it follows, and cannot write.
	a2, err := Open(ctx, aDir, opts)
	require.NoError(t, err)
	defer a2.Close()
	require.NoError(t, a2.WaitFor(ctx, 30))
	require.False(t, a2.Shared().Writer)
	require.Equal(t, uint64(2), a2.Shared().Term)
	require.Eventually(t, func() bool { return a2.Shared().IndexBehind == 0 }, 30*time.Second, 10*time.Millisecond)
	f.writeMu.Lock()
	a2.writeMu.Lock()
	require.Equal(t, indexEntries(t, f), indexEntries(t, a2), "the returning replica's index caught up from the log")
	a2.writeMu.Unlock()
	f.writeMu.Unlock()
}
