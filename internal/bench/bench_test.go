package bench

import (
	"encoding/json"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/pipeline"
)

// TestScaleS is the smoke test of the benchmark tool: it runs scale S (with
// shorter freshness loads) end to end and checks that every figure is there
// and sane, never how fast anything is.
func TestScaleS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	sc, err := ScaleByName("s")
	require.NoError(t, err)
	sc.Freshness, sc.CatchUp = 2*time.Second, 30*time.Second
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	res, err := Run(t.Context(), Config{Scale: sc, Rates: []int{200, 1000}, Logger: log})
	require.NoError(t, err)

	out := t.TempDir()
	md, plots := filepath.Join(out, "BENCHMARKS.md"), filepath.Join(out, "bench")
	require.NoError(t, Write(res, WriteOptions{Markdown: md, PlotsDir: plots}))
	for _, f := range []string{"results-S.json", "lag-S.png", "export-S.png"} {
		fi, err := os.Stat(filepath.Join(plots, f))
		require.NoError(t, err)
		require.Positive(t, fi.Size(), f)
	}
	b, err := os.ReadFile(filepath.Join(plots, "results-S.json"))
	require.NoError(t, err)
	var back Results
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, len(res.Figures), len(back.Figures))
	report, err := os.ReadFile(md)
	require.NoError(t, err)
	for _, want := range []string{"| Initial snapshot |", "| Apply |", "| Freshness |", "| Export |", "| CSV render |", "| Peak RSS |", "| Size |", "| Failover |",
		res.Command, res.Machine.CPU, "lag-S.png", "export-S.png"} {
		require.Contains(t, string(report), want)
	}

	// The figures are all there and sane.
	groups := map[string]int{}
	for _, f := range res.Figures {
		groups[f.Group]++
		require.False(t, math.IsNaN(f.Value) || math.IsInf(f.Value, 0), "%s %s: %v", f.Group, f.Name, f.Value)
		if f.Unit == "rows" { // rows read from production by exportd: 0 is the target
			require.Positive(t, f.BaseVal, f.Name)
			continue
		}
		require.Positive(t, f.Value, "%s %s", f.Group, f.Name)
		if f.BaseVal != 0 && f.Group != "Peak RSS" { // memory is shown beside pg_recvlogical's, not divided
			require.Positive(t, f.Ratio, "%s %s: ratio", f.Group, f.Name)
			require.False(t, math.IsInf(f.Ratio, 0) || math.IsNaN(f.Ratio), f.Name)
		}
		if f.Target != "" {
			require.Contains(t, []string{"PASS", "MISS"}, f.Verdict, f.Name)
		}
	}
	require.Equal(t, map[string]int{"Initial snapshot": 4, "Apply": 1, "Freshness": 2, "Export": 4, "CSV render": 1, "Peak RSS": 12, "Size": 1, "Failover": 5}, groups)

	require.Equal(t, res.Data.Rows, res.Snapshot.SnapshotRows, "exportd snapshot rows")
	require.Equal(t, res.Apply.Changes, res.Apply.Applied, "changes applied")
	require.Len(t, res.Exports, 3)
	for _, x := range res.Exports {
		require.Zero(t, x.ExportdTuplesRead, "exportd read production during the export of tenant %d", x.Tenant)
		require.Positive(t, x.ProdTuplesRead, "tenant %d", x.Tenant)
		require.Equal(t, x.ProdRows, x.Rows, "tenant %d: rows exported", x.Tenant)
		require.Positive(t, x.ExportdZipBytes)
		require.Positive(t, x.ProdZipBytes)
	}
	for _, x := range res.Freshness {
		require.Positive(t, x.Samples)
		require.NotEmpty(t, x.Series)
		require.LessOrEqual(t, x.P50, x.P99)
		require.LessOrEqual(t, x.P99, x.Max)
		require.Positive(t, x.SlotP50, "lag against the slot's confirmed position")
	}
	require.False(t, res.Render.DuckDB.Ran)
	fo := res.Failover
	require.Len(t, fo.Kills, failoverKills(sc))
	for _, k := range fo.Kills {
		require.Positive(t, k.ToStream)
		require.GreaterOrEqual(t, k.ToApplied, k.ToStream)
	}
	require.Positive(t, fo.ExportLocal.Rows)
	require.Equal(t, fo.ExportCold.Rows, fo.ExportWarm.Rows)
	require.Positive(t, res.Staging.DataBytes)
}

func TestLagSeries(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	samples := []walSample{{at(0), 100}, {at(100), 200}, {at(200), 300}, {at(300), 900}}
	polls := []appliedPoll{{at(10), 50, 1}, {at(30), 150, 2}, {at(150), 250, 3}, {at(170), 250, 3}, {at(400), 300, 4}}
	got := lagSeries(samples, polls, t0)
	want := []LagPoint{
		{T: 0, Lag: 0.030, LSN: pglogrepl.LSN(100).String()},
		{T: 0.1, Lag: 0.050, LSN: pglogrepl.LSN(200).String()},
		{T: 0.2, Lag: 0.200, LSN: pglogrepl.LSN(300).String()},
		{T: 0.3, Lag: 0.100, LSN: pglogrepl.LSN(900).String(), LowerBound: true},
	}
	require.Len(t, got, len(want))
	for i := range want {
		require.InDelta(t, want[i].T, got[i].T, 1e-9, i)
		require.InDelta(t, want[i].Lag, got[i].Lag, 1e-9, i)
		require.Equal(t, want[i].LSN, got[i].LSN, i)
		require.Equal(t, want[i].LowerBound, got[i].LowerBound, i)
	}
	require.Empty(t, lagSeries(samples, nil, t0))
}

func TestPercentile(t *testing.T) {
	xs := make([]float64, 200)
	for i := range xs {
		xs[i] = float64(200 - i) // 200..1, unsorted
	}
	require.Equal(t, 100.0, percentile(xs, 0.5))
	require.Equal(t, 198.0, percentile(xs, 0.99))
	require.Equal(t, 200.0, percentile(xs, 1))
	require.Equal(t, 7.0, percentile([]float64{7}, 0.99))
	require.Zero(t, percentile(nil, 0.5))
}

func TestPickTenants(t *testing.T) {
	rows := map[int64]int64{1: 100_000, 2: 50_000, 3: 30_000, 4: 10_000, 5: 3_000, 6: 1_000}
	got := pickTenants(rows)
	require.Equal(t, []exportTenant{{"small", 6, 1_000}, {"medium", 4, 10_000}, {"largest", 1, 100_000}}, got)
	require.Equal(t, []exportTenant{{"small", 9, 5}}, pickTenants(map[int64]int64{9: 5}))
	require.Empty(t, pickTenants(nil))
}

func TestParsePgbench(t *testing.T) {
	out := `transaction type: multiple scripts
scaling factor: 1
number of clients: 4
number of transactions actually processed: 29987
number of failed transactions: 0 (0.000%)
latency average = 0.553 ms
rate limit schedule lag: avg 0.090 (max 3.211) ms
tps = 999.512 (without initial connection time)
`
	n, lat := parsePgbench(out)
	require.Equal(t, int64(29987), n)
	require.Equal(t, 0.553, lat)
}

func TestDataOnlySpec(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spec.yaml")
	require.NoError(t, writeDataOnlySpec(path))
	spec, err := pipeline.LoadSpec(path)
	require.NoError(t, err)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NotContains(t, string(b), "attachments:")
	require.Contains(t, string(b), "Candidates.csv")
	require.NotNil(t, spec)
}

func TestFormat(t *testing.T) {
	require.Equal(t, "1,234,567", fmtInt(1234567))
	require.Equal(t, "-1,000", fmtInt(-1000))
	require.Equal(t, "999", fmtInt(999))
	require.Equal(t, "12,346", fmtNum(12345.6))
	require.Equal(t, "0.123", fmtNum(0.12345))
	require.Equal(t, "1.50 GB", fmtBytes(1_500_000_000))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
