package pipeline_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/stagetest"
	"github.com/exportd/exportd/pipeline"
)

// counterValue returns the value of an unlabelled counter in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestPrerenderedExport checks that exports copy prerendered CSV entries
// where the staged rows are their base files' and render the others: every
// CSV is compared with PostgreSQL's COPY after the entries are written,
// after production changes a tenant's rows (not yet folded), after the
// fold and a new pass, with a damaged entry, and with a spec whose CSVs
// differ (a BOM).
func TestPrerenderedExport(t *testing.T) {
	ctx := t.Context()
	env := stagetest.StartPG(t)
	files := newFS(t)
	_, err := gen.Load(ctx, env.Admin, files, gen.Config{Seed: 3, Tenants: 3, Rows: 30_000, CreateSchema: true})
	require.NoError(t, err)
	rep := env.Replicate(t, env.Config())
	rep.CatchUp(t, ctx, env)
	require.NoError(t, rep.Store.Compact(ctx))

	spec := pipeline.DefaultSpec()
	dir := t.TempDir()
	// A base file is prerendered once it has been seen for Settle.
	const settle = 300 * time.Millisecond
	slow, err := pipeline.NewPrerenderer(spec, pipeline.PrerenderConfig{Dir: dir, MinRows: 1, Settle: settle}, testLogger(t), nil)
	require.NoError(t, err)
	start := time.Now()
	st, err := slow.Once(ctx, rep.Store)
	require.NoError(t, err)
	require.Equal(t, pipeline.PrerenderStats{Settling: 30}, st, "10 CSVs of 3 tenants")
	for deadline := time.Now().Add(30 * time.Second); st.Entries == 0; {
		require.True(t, time.Now().Before(deadline), "no entry written within 30s")
		time.Sleep(20 * time.Millisecond)
		st, err = slow.Once(ctx, rep.Store)
		require.NoError(t, err)
	}
	require.GreaterOrEqual(t, time.Since(start), settle)
	require.NoError(t, os.RemoveAll(dir))

	pre, err := pipeline.NewPrerenderer(spec, pipeline.PrerenderConfig{Dir: dir, MinRows: 1, Settle: -1, Background: true}, testLogger(t), nil)
	require.NoError(t, err)
	st, err = pre.Once(ctx, rep.Store)
	require.NoError(t, err)
	require.Equal(t, 30, st.Entries, "10 CSVs of 3 tenants")
	require.Zero(t, st.Pending)
	t.Logf("first pass: %+v", st)
	again, err := pre.Once(ctx, rep.Store)
	require.NoError(t, err)
	require.Equal(t, pipeline.PrerenderStats{Kept: st.Entries}, again, "a second pass has nothing to do")

	reg := prometheus.NewRegistry()
	ex := pipeline.NewExporter(spec, files, newFSPublisher(t), pipeline.ExportConfig{PrerenderDir: dir},
		testLogger(t), pipeline.NewExportMetrics(reg))
	// export exports tenant from the current version with ex (whose metrics
	// are on reg), checks every CSV against production and returns the
	// rows of each CSV and how many were copied from entries.
	n := 0
	export := func(ex *pipeline.Exporter, spec *pipeline.Spec, reg *prometheus.Registry, tenant string) (map[string]int64, int64) {
		t.Helper()
		v, err := rep.Store.Pin(ctx)
		require.NoError(t, err)
		defer v.Close()
		plan, err := spec.Resolve(v.Tables())
		require.NoError(t, err)
		before := counterValue(t, reg, "exportd_export_rows_prerendered_total")
		n++
		m, err := ex.Export(ctx, v, tenant, "req-"+strconv.Itoa(n))
		require.NoError(t, err)
		zips := download(t, func(u string) []byte { return httpGet(t, u) }, m)
		checkCSVs(t, ctx, env.Admin, plan, v, zips[pipeline.PartData], tenant)
		return m.Rows, int64(counterValue(t, reg, "exportd_export_rows_prerendered_total") - before)
	}
	sum := func(rows map[string]int64, except ...string) int64 {
		var n int64
		for name, r := range rows {
			if !slices.Contains(except, name) {
				n += r
			}
		}
		return n
	}

	for _, tenant := range []string{"1", "2", "3"} {
		rows, c := export(ex, spec, reg, tenant)
		require.Positive(t, sum(rows))
		require.Equal(t, sum(rows), c, "tenant %s: every CSV copied from its entry", tenant)
	}

	// Production changes tenant 1's candidates and tasks: until the fold,
	// those two CSVs are rendered (with the changes), the others copied.
	_, err = env.Admin.Exec(ctx, `UPDATE candidates SET first_name = '=1+1' WHERE tenant_id = 1 AND id IN (SELECT id FROM candidates WHERE tenant_id = 1 ORDER BY id LIMIT 5)`)
	require.NoError(t, err)
	_, err = env.Admin.Exec(ctx, `DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE tenant_id = 1 ORDER BY id LIMIT 3)`)
	require.NoError(t, err)
	rep.CatchUp(t, ctx, env)
	st, err = pre.Once(ctx, rep.Store)
	require.NoError(t, err)
	require.Equal(t, pipeline.PrerenderStats{Kept: 30}, st, "the base files are unchanged until the fold")
	rows1, c := export(ex, spec, reg, "1")
	require.Equal(t, sum(rows1, "Candidates.csv", "Tasks.csv"), c)
	rows, c := export(ex, spec, reg, "2")
	require.Equal(t, sum(rows), c, "tenant 2 is untouched")

	// The fold gives both tables new base files; a change to the
	// candidates before the next pass leaves that one waiting.
	require.NoError(t, rep.Store.Compact(ctx))
	_, err = env.Admin.Exec(ctx, `UPDATE candidates SET last_name = 'x,"y"' WHERE tenant_id = 1 AND id IN (SELECT id FROM candidates WHERE tenant_id = 1 ORDER BY id DESC LIMIT 2)`)
	require.NoError(t, err)
	rep.CatchUp(t, ctx, env)
	st, err = pre.Once(ctx, rep.Store)
	require.NoError(t, err)
	require.Equal(t, pipeline.PrerenderStats{Entries: 1, Rows: rows1["Tasks.csv"], Bytes: st.Bytes, Removed: 2, Kept: 28, Pending: 1}, st)
	rows, c = export(ex, spec, reg, "1")
	require.Equal(t, sum(rows, "Candidates.csv"), c)
	require.NoError(t, rep.Store.Compact(ctx))
	st, err = pre.Once(ctx, rep.Store)
	require.NoError(t, err)
	require.Equal(t, 1, st.Entries)
	rows, c = export(ex, spec, reg, "1")
	require.Equal(t, sum(rows), c)

	// Damaged entries are not used (their CSVs are rendered), and the next
	// pass replaces them.
	des, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, de := range des {
		p := filepath.Join(dir, de.Name())
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(p, bytes.Repeat([]byte{'x'}, len(b)), 0o644))
	}
	rows, c = export(ex, spec, reg, "1")
	require.Positive(t, sum(rows))
	require.Zero(t, c)
	st, err = pre.Once(ctx, rep.Store)
	require.NoError(t, err)
	require.Equal(t, len(des), st.Entries)
	rows, c = export(ex, spec, reg, "1")
	require.Equal(t, sum(rows), c)

	// Another spec (CSVs with a BOM) does not use the default spec's entries.
	bomSpec, err := pipeline.ParseSpec(bytes.Replace(pipeline.DefaultSpecYAML(), []byte("bom: false"), []byte("bom: true"), 1), "bom.yaml")
	require.NoError(t, err)
	bomReg := prometheus.NewRegistry()
	bomEx := pipeline.NewExporter(bomSpec, files, newFSPublisher(t), pipeline.ExportConfig{PrerenderDir: dir},
		testLogger(t), pipeline.NewExportMetrics(bomReg))
	rows, c = export(bomEx, bomSpec, bomReg, "1")
	require.Positive(t, sum(rows))
	require.Zero(t, c)
}
