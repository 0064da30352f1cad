package snapshot

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// wideSchema is a realistic 10-column table whose key lacks the tenant, so
// every change goes through the key-to-tenant index.
var wideSchema = TableSchema{
	Name: "public.candidates",
	Columns: []Column{
		{"id", oidInt8}, {"account_id", oidInt8}, {"first_name", oidText}, {"last_name", oidText},
		{"email", oidText}, {"phone", oidText}, {"status", oidText}, {"score", 1700},
		{"created_at", 1184}, {"notes", oidText},
	},
	KeyColumns:   []int{0},
	TenantColumn: 1,
}

// wideRow fills a reusable row with realistic values (about 150 bytes of text).
type wideRowGen struct {
	r    *rand.Rand
	buf  []byte
	row  Row
	offs [10][2]int
}

func newWideRowGen(seed uint64) *wideRowGen {
	return &wideRowGen{r: rand.New(rand.NewPCG(seed, seed)), row: make(Row, 10)}
}

var firstNames = []string{"Alice", "Bob", "Carla", "Dmitri", "Eve", "François", "Grace", "Hiro"}
var statuses = []string{"new", "screening", "interview", "offer", "hired", "rejected"}

func (g *wideRowGen) make(id int64, tenant int64) Row {
	b := g.buf[:0]
	add := func(i int, f func([]byte) []byte) {
		s := len(b)
		b = f(b)
		g.offs[i] = [2]int{s, len(b)}
	}
	fn := firstNames[g.r.IntN(len(firstNames))]
	add(0, func(b []byte) []byte { return strconv.AppendInt(b, id, 10) })
	add(1, func(b []byte) []byte { return strconv.AppendInt(b, tenant, 10) })
	add(2, func(b []byte) []byte { return append(b, fn...) })
	add(3, func(b []byte) []byte { return fmt.Appendf(b, "Lastname%d", g.r.IntN(100000)) })
	add(4, func(b []byte) []byte { return fmt.Appendf(b, "%s.%d@example.com", strings.ToLower(fn), id) })
	add(5, func(b []byte) []byte { return fmt.Appendf(b, "+1-555-%07d", g.r.IntN(10000000)) })
	add(6, func(b []byte) []byte { return append(b, statuses[g.r.IntN(len(statuses))]...) })
	add(7, func(b []byte) []byte { return strconv.AppendFloat(b, g.r.Float64()*100, 'f', 2, 64) })
	add(8, func(b []byte) []byte { return append(b, "2024-05-17 13:45:12.123456+00"...) })
	add(9, func(b []byte) []byte {
		return fmt.Appendf(b, "Met at the fair, follow up in %d days about the senior role in team %d.", g.r.IntN(30), g.r.IntN(50))
	})
	g.buf = b
	for i, o := range g.offs {
		g.row[i] = b[o[0]:o[1]:o[1]]
	}
	return g.row
}

// applyBigBatch applies n changes in one Batch: inserts, then updates (some
// moving tenant, some with unchanged values) and deletes of inserted rows.
func applyBigBatch(t testing.TB, s *Store, n int) {
	ctx := context.Background()
	b, err := s.Begin()
	require.NoError(t, err)
	g := newWideRowGen(1)
	const tenants = 5000
	inserts := n * 7 / 10
	tenantOf := func(id int64) int64 { return id%tenants + 1 }
	for i := range inserts {
		id := int64(i)
		require.NoError(t, b.Insert(wideSchema.Name, g.make(id, tenantOf(id))))
	}
	moved := map[int64]int64{}
	unchanged := make([]bool, 10)
	unchanged[9] = true
	for i := range n - inserts {
		id := int64((i * 7919) % inserts)
		switch i % 3 {
		case 0: // move to another tenant, key-only old tuple absent (REPLICA IDENTITY DEFAULT)
			nt := int64(tenants + 1 + i%7)
			moved[id] = nt
			require.NoError(t, b.Update(wideSchema.Name, nil, g.make(id, nt), nil))
		case 1: // unchanged TOASTed column
			tn := tenantOf(id)
			if m, ok := moved[id]; ok {
				tn = m
			}
			r := g.make(id, tn)
			r[9] = nil
			require.NoError(t, b.Update(wideSchema.Name, nil, r, unchanged))
		case 2:
			old := make(Row, 10)
			old[0] = []byte(strconv.FormatInt(id, 10))
			require.NoError(t, b.Delete(wideSchema.Name, old))
			delete(moved, id)
		}
	}
	require.NoError(t, b.Commit(ctx, 5))
}

func loadWide(t testing.TB, s *Store) {
	ctx := context.Background()
	l, err := s.BeginLoad(ctx, "slot", 1, []TableSchema{wideSchema})
	require.NoError(t, err)
	require.NoError(t, l.Commit(ctx))
}

// peakSampler records the peak Go heap and anonymous RSS while running.
type peakSampler struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	peak     uint64
	peakLive uint64
	peakAnon int64 // KiB
}

func startPeakSampler() *peakSampler {
	p := &peakSampler{stop: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		sample := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			rtmetrics.Read(sample)
			p.peak = max(p.peak, sample[0].Value.Uint64())
			p.peakLive = max(p.peakLive, sample[1].Value.Uint64())
			p.peakAnon = max(p.peakAnon, procStatusKiB("RssAnon:"))
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *peakSampler) done() uint64 {
	close(p.stop)
	p.wg.Wait()
	return p.peak
}

// procStatusKiB returns a "kB" field of /proc/self/status (0 if unknown).
func procStatusKiB(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// TestBatchMemory applies one Batch of 2,000,000 changes (on a table whose
// key lacks the tenant) with MemoryLimit 64 MiB in a child process and checks
// its peak RSS.
func TestBatchMemory(t *testing.T) {
	if os.Getenv("EXPORTD_MEM_CHILD") != "" {
		t.Skip("child")
	}
	if testing.Short() || raceEnabled {
		// Still exercise the path at a small size.
		s := openTestStore(t, t.TempDir(), Options{MemoryLimit: 1 << 20})
		loadWide(t, s)
		applyBigBatch(t, s, 20000)
		return
	}
	runMemoryChild(t, "^TestBatchMemoryChild$", "2,000,000 changes in one batch")
}

// TestLoadMemory loads 4,000,000 rows with 4 concurrent writers and
// MemoryLimit 64 MiB in a child process and checks its peak RSS.
func TestLoadMemory(t *testing.T) {
	if os.Getenv("EXPORTD_MEM_CHILD") != "" {
		t.Skip("child")
	}
	if testing.Short() || raceEnabled {
		t.Skip("big load")
	}
	runMemoryChild(t, "^TestLoadMemoryChild$", "load of 4,000,000 rows by 4 writers")
}

func TestLoadMemoryChild(t *testing.T) {
	dir := os.Getenv("EXPORTD_MEM_CHILD")
	if dir == "" {
		t.Skip("only run by TestLoadMemory")
	}
	ctx := context.Background()
	s := openTestStore(t, dir, Options{MemoryLimit: 64 << 20, policy: policy{fanIn: 32, manual: true}})
	runtime.GC()
	p := startPeakSampler()
	start := time.Now()
	l, err := s.BeginLoad(ctx, "slot", 1, []TableSchema{wideSchema})
	require.NoError(t, err)
	const rows, writers = 4_000_000, 4
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lw, err := l.Writer(wideSchema.Name)
			require.NoError(t, err)
			g := newWideRowGen(uint64(w))
			for i := w; i < rows; i += writers {
				require.NoError(t, lw.Append(g.make(int64(i), int64(i%5000))))
			}
			require.NoError(t, lw.Close())
		}()
	}
	wg.Wait()
	require.NoError(t, l.Commit(ctx))
	secs := time.Since(start).Seconds()
	heap := p.done()
	fmt.Printf("RESULT peak_rss_kib=%d peak_anon_kib=%d peak_heap=%d seconds=%f\n", procStatusKiB("VmHWM:"), p.peakAnon, heap, secs)
	fmt.Printf("stats %+v\n", s.Stats())
}

func runMemoryChild(t *testing.T, run, what string) {
	cmd := exec.Command(os.Args[0], "-test.run="+run, "-test.v")
	cmd.Env = append(os.Environ(), "EXPORTD_MEM_CHILD="+t.TempDir())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	var rss, anon, heap int64
	var secs float64
	for _, l := range strings.Split(string(out), "\n") {
		if _, err := fmt.Sscanf(strings.TrimSpace(l), "RESULT peak_rss_kib=%d peak_anon_kib=%d peak_heap=%d seconds=%f", &rss, &anon, &heap, &secs); err == nil {
			break
		}
	}
	require.Positive(t, rss, string(out))
	t.Logf("%s: peak RSS %d MiB (anonymous %d MiB), peak Go heap %d MiB, %.1fs",
		what, rss>>10, anon>>10, heap>>20, secs)
	require.Less(t, rss, int64(400<<10), "peak RSS")
}

func TestBatchMemoryChild(t *testing.T) {
	dir := os.Getenv("EXPORTD_MEM_CHILD")
	if dir == "" {
		t.Skip("only run by TestBatchMemory")
	}
	s := openTestStore(t, dir, Options{MemoryLimit: 64 << 20, policy: policy{fanIn: 32, manual: true}})
	loadWide(t, s)
	runtime.GC()
	p := startPeakSampler()
	start := time.Now()
	applyBigBatch(t, s, 2_000_000)
	secs := time.Since(start).Seconds()
	heap := p.done()
	fmt.Printf("RESULT peak_rss_kib=%d peak_anon_kib=%d peak_heap=%d seconds=%f\n", procStatusKiB("VmHWM:"), p.peakAnon, heap, secs)
	st := s.Stats()
	fmt.Printf("stats %+v\npeak live heap %d MiB\n", st, p.peakLive>>20)

	// Check the result: 1.4M inserted, 200K deleted; moved rows are in their
	// new tenants; unchanged values were kept.
	v, err := s.Pin(context.Background())
	require.NoError(t, err)
	defer v.Close()
	total := 0
	for tenant := 1; tenant <= 5000+7; tenant++ {
		rows, err := v.Scan(context.Background(), wideSchema.Name, strconv.Itoa(tenant))
		require.NoError(t, err)
		for rows.Next() {
			total++
			r := rows.Row()
			require.NotNil(t, r[9], "notes of %s", r[0])
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
	}
	require.Equal(t, 1_200_000, total)
}
