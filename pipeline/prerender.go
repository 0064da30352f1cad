package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/exportd/exportd/internal/lowprio"
	"github.com/exportd/exportd/snapshot"
)

// Prerendered CSVs.
//
// Rendering and deflating a large tenant's CSVs is most of its export's
// time: about 10 s of CPU for 2.2 million rows (1.1 GB of CSV), where the
// production queries take 7 s. A Prerenderer, a background worker of the
// daemon, writes for each base file of at least MinRows rows the zip entry
// an export would write for it: the CSV (BOM, header and rows) as deflate
// data, with its CRC-32 and sizes. The entry's file name holds the base
// file's name and a fingerprint of everything its bytes depend on (the
// tenant, the table's schema generation, the plan's columns, header and
// formula protection, the BOM and the compression level).
//
// An export copies such an entry into its zip, instead of rendering the
// CSV, when its version reads the tenant's table from that base file alone
// (snapshot.Version.Folded: no segment holds a change to it): the rows are
// then the base file's, the same the entry was rendered from. Otherwise (no
// entry yet, changes not folded, another spec) the CSV is rendered as
// before. Entries are written to a temporary name, synced and renamed; the
// worker removes those no current base file needs.

// PrerenderDir is the directory of prerendered entries under the state
// directory.
const PrerenderDir = "prerender"

// Defaults of PrerenderConfig.
const (
	DefaultPrerenderMinRows  = 100_000
	DefaultPrerenderInterval = 30 * time.Second
	DefaultPrerenderSettle   = 5 * time.Minute
)

const (
	entryExt     = ".csvz"
	entryMagic   = "exportd\x01"
	entryTrailer = 8 + 8 + 4 + 8 + len(entryMagic) // rows, uncompressed size, crc32, compressed size, magic
)

// entryDir holds prerendered zip entries, one file per (base file, fingerprint).
type entryDir string

// entryName is the file name of base's entry for a file plan's fingerprint.
func entryName(base snapshot.BaseFile, fp string) string {
	return base.ID + "-" + fp + entryExt
}

// fingerprint identifies the bytes of a CSV rendered for f from tenant's
// rows of a base file read in schema generation gen.
func fingerprint(f FilePlan, ts snapshot.TableSchema, gen int, tenant string, bom bool, level int) string {
	h := sha256.New()
	field := func(s string) {
		h.Write(binary.AppendUvarint(nil, uint64(len(s))))
		h.Write([]byte(s))
	}
	field("exportd csv entry v1")
	field(f.Table)
	field(tenant)
	field(strconv.Itoa(gen))
	field(strconv.FormatBool(bom))
	field(strconv.Itoa(level))
	field(strconv.Itoa(f.TenantColumn))
	for i, c := range f.Columns {
		field(f.Header[i])
		field(strconv.FormatBool(f.Protect[i]))
		if c < len(ts.Columns) {
			field(ts.Columns[c].Name)
			field(strconv.FormatUint(uint64(ts.Columns[c].TypeOID), 10))
		} else {
			field("") // a column the schema lacks: NULL
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// entry is a prerendered zip entry, open for reading.
type entry struct {
	f          *os.File
	rows       int64
	size       uint64 // uncompressed
	crc        uint32
	compressed int64
}

// open opens entry name; a missing entry is (nil, nil).
func (d entryDir) open(name string) (*entry, error) {
	f, err := os.Open(filepath.Join(string(d), name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	e, err := readTrailer(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("prerendered entry %s: %w", name, err)
	}
	return e, nil
}

func readTrailer(f *os.File) (*entry, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < int64(entryTrailer) {
		return nil, errors.New("too short")
	}
	var t [entryTrailer]byte
	if _, err := f.ReadAt(t[:], st.Size()-int64(entryTrailer)); err != nil {
		return nil, err
	}
	if string(t[28:]) != entryMagic {
		return nil, errors.New("bad trailer")
	}
	e := &entry{f: f, rows: int64(binary.LittleEndian.Uint64(t[0:])), size: binary.LittleEndian.Uint64(t[8:]),
		crc: binary.LittleEndian.Uint32(t[16:]), compressed: int64(binary.LittleEndian.Uint64(t[20:]))}
	if e.compressed != st.Size()-int64(entryTrailer) || e.rows < 0 {
		return nil, errors.New("sizes do not match the file")
	}
	return e, nil
}

// copyTo writes the entry into zw as name.
func (e *entry) copyTo(zw *zip.Writer, name string, at time.Time) error {
	fw, err := zw.CreateRaw(&zip.FileHeader{Name: name, Method: zip.Deflate, Modified: at,
		CRC32: e.crc, CompressedSize64: uint64(e.compressed), UncompressedSize64: e.size})
	if err != nil {
		return err
	}
	n, err := io.Copy(fw, io.NewSectionReader(e.f, 0, e.compressed))
	if err == nil && n != e.compressed {
		err = fmt.Errorf("copied %d of %d bytes", n, e.compressed)
	}
	return err
}

// crcCounter computes the CRC-32 and size of what passes through it.
type crcCounter struct {
	w   io.Writer
	crc uint32
	n   uint64
}

func (c *crcCounter) Write(p []byte) (int, error) {
	c.crc = crc32.Update(c.crc, crc32.IEEETable, p)
	c.n += uint64(len(p))
	return c.w.Write(p)
}

// write renders an entry with render (which writes the CSV and returns its
// rows) into name: deflated at level, to a temporary file synced and
// renamed; background: the deflate and write goroutines run at a lowered
// CPU priority. It returns the entry's size in bytes.
func (d entryDir) write(name string, level int, background bool, render func(w io.Writer) (int64, error)) (_ int64, rerr error) {
	tmp, err := os.CreateTemp(string(d), name+".tmp-*")
	if err != nil {
		return 0, err
	}
	defer func() {
		if rerr != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	var compressed atomic.Int64
	pools := newDeflatePools(level)
	pools.background = background
	dw, err := pools.newWriter(countingWriter{tmp, &compressed})
	if err != nil {
		return 0, err
	}
	aw := newAsyncWriter(dw, background)
	cc := &crcCounter{w: aw}
	rows, err := render(cc)
	if cerr := aw.Close(); err == nil {
		err = cerr
	}
	if cerr := dw.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	var t [entryTrailer]byte
	binary.LittleEndian.PutUint64(t[0:], uint64(rows))
	binary.LittleEndian.PutUint64(t[8:], cc.n)
	binary.LittleEndian.PutUint32(t[16:], cc.crc)
	binary.LittleEndian.PutUint64(t[20:], uint64(compressed.Load()))
	copy(t[28:], entryMagic)
	if _, err := tmp.Write(t[:]); err != nil {
		return 0, err
	}
	if err := tmp.Sync(); err != nil {
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	return compressed.Load() + int64(entryTrailer), os.Rename(tmp.Name(), filepath.Join(string(d), name))
}

// PrerenderConfig configures a Prerenderer. Zero values take the defaults.
type PrerenderConfig struct {
	// Dir holds the prerendered entries (required).
	Dir string
	// MinRows: base files of fewer rows are not prerendered (their CSVs
	// render in well under a second). Default DefaultPrerenderMinRows.
	MinRows int64
	// Interval between looks for new base files (default DefaultPrerenderInterval).
	Interval time.Duration
	// Settle is how long a base file must have been seen before it is
	// prerendered (default DefaultPrerenderSettle; negative: at once). A
	// tenant's table changing faster than that has changes waiting in
	// segments at most exports, which then render it anyway, and rewriting
	// its entry at every fold would cost the stream its CPU.
	Settle time.Duration
	// CompressionLevel must be the exports' (default 1).
	CompressionLevel int
	// Background runs passes at a lowered CPU priority (lowprio), so the
	// stream and exports come first; the daemon sets it. Off, a pass uses
	// the machine as an export does (a pass in the benchmark took 9.8 s at
	// normal priority and 12.2 s lowered, at scale M).
	Background bool
}

// Pinner pins the current staging version. A *snapshot.Store is one.
type Pinner interface {
	Pin(ctx context.Context) (*snapshot.Version, error)
}

// Prerenderer writes prerendered CSV entries for large base files.
type Prerenderer struct {
	spec   *Spec
	cfg    PrerenderConfig
	dir    entryDir
	logger *slog.Logger
	m      *PrerenderMetrics
	now    func() time.Time
	seen   map[string]time.Time // base file id: when a pass first saw it
}

// PrerenderStats describes one pass of a Prerenderer.
type PrerenderStats struct {
	Entries int   // entries written
	Rows    int64 // their rows
	Bytes   int64 // their compressed bytes
	Removed int   // entries no base file needs any more
	Kept    int   // entries up to date
	Pending int   // large base files with changes not yet folded
	// Settling: large base files seen for less than Settle.
	Settling int
}

// NewPrerenderer returns a Prerenderer writing to cfg.Dir (created if
// needed). m may be nil.
func NewPrerenderer(spec *Spec, cfg PrerenderConfig, logger *slog.Logger, m *PrerenderMetrics) (*Prerenderer, error) {
	if cfg.Dir == "" {
		return nil, errors.New("prerender: no directory")
	}
	if cfg.MinRows <= 0 {
		cfg.MinRows = DefaultPrerenderMinRows
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultPrerenderInterval
	}
	if cfg.Settle == 0 {
		cfg.Settle = DefaultPrerenderSettle
	}
	if cfg.CompressionLevel == 0 {
		cfg.CompressionLevel = 1
	}
	if logger == nil {
		logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("prerender: %w", err)
	}
	return &Prerenderer{spec: spec, cfg: cfg, dir: entryDir(cfg.Dir), logger: logger.With("component", "prerender"), m: m,
		now: time.Now, seen: make(map[string]time.Time)}, nil
}

// Run prerenders every Interval until ctx ends. A failed pass is logged and
// retried at the next.
func (p *Prerenderer) Run(ctx context.Context, st Pinner) error {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := p.Once(ctx, st); err != nil && ctx.Err() == nil {
			p.logger.Warn("prerender pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Once writes the entries missing for the current version's large, folded
// base files seen for at least Settle, and removes those no base file of it
// needs. Passes must not run concurrently.
func (p *Prerenderer) Once(ctx context.Context, st Pinner) (PrerenderStats, error) {
	if p.cfg.Background {
		defer lowprio.Lower()()
	}
	var stats PrerenderStats
	v, err := st.Pin(ctx)
	if err != nil {
		return stats, fmt.Errorf("prerender: %w", err)
	}
	defer v.Close()
	plan, err := p.spec.Resolve(v.Tables())
	if err != nil {
		return stats, fmt.Errorf("prerender: resolve spec: %w", err)
	}
	need := make(map[string]bool)
	now := p.now()
	seen := make(map[string]time.Time, len(p.seen))
	defer func() { p.seen = seen }()
	for _, f := range plan.Files {
		ts, ok := v.Table(f.Table)
		if !ok {
			continue
		}
		for _, b := range v.BaseFiles(f.Table) {
			if b.Rows < p.cfg.MinRows {
				continue
			}
			first, ok := p.seen[b.ID]
			if !ok {
				first = now
			}
			seen[b.ID] = first
			name := entryName(b, fingerprint(f, ts, b.Schema, b.Tenant, plan.BOM, p.cfg.CompressionLevel))
			need[name] = true
			switch en, err := p.dir.open(name); {
			case err != nil:
				p.logger.Warn("replacing a damaged prerendered entry", "file", f.Name, "tenant", b.Tenant, "err", err)
			case en != nil:
				en.f.Close()
				stats.Kept++
				continue
			}
			if now.Sub(first) < p.cfg.Settle {
				stats.Settling++
				continue
			}
			fb, ok, err := v.Folded(ctx, f.Table, b.Tenant)
			if err != nil {
				return stats, fmt.Errorf("prerender: %w", err)
			}
			if !ok || fb.ID != b.ID {
				stats.Pending++ // rendered once the changes are folded (a new base file)
				continue
			}
			start := time.Now()
			var rows int64
			size, err := p.dir.write(name, p.cfg.CompressionLevel, p.cfg.Background, func(w io.Writer) (int64, error) {
				n, err := RenderCSV(ctx, w, v, f, b.Tenant, plan.BOM)
				rows = n
				return n, err
			})
			if err != nil {
				return stats, fmt.Errorf("prerender %s of tenant %s: %w", f.Name, b.Tenant, err)
			}
			stats.Entries++
			stats.Rows += rows
			stats.Bytes += size
			p.m.written(rows, time.Since(start))
			p.logger.Debug("prerendered", "file", f.Name, "tenant", b.Tenant, "rows", rows, "bytes", size,
				"seconds", time.Since(start).Seconds())
		}
	}
	removed, kept, bytes, err := p.dir.removeExcept(need)
	stats.Removed = removed
	p.m.stored(kept, bytes)
	if err != nil {
		return stats, fmt.Errorf("prerender: %w", err)
	}
	if stats.Entries > 0 || stats.Removed > 0 {
		p.logger.Info("prerender pass", "written", stats.Entries, "rows", stats.Rows, "bytes", stats.Bytes,
			"removed", stats.Removed, "kept", stats.Kept, "pending_fold", stats.Pending, "settling", stats.Settling)
	}
	return stats, nil
}

// removeExcept removes the entries (and temporary files) not in keep and
// returns how many it removed, and how many are left and their bytes.
func (d entryDir) removeExcept(keep map[string]bool) (removed, kept int, left int64, _ error) {
	des, err := os.ReadDir(string(d))
	if err != nil {
		return 0, 0, 0, err
	}
	var errs []error
	for _, de := range des {
		if keep[de.Name()] {
			if fi, err := de.Info(); err == nil {
				kept++
				left += fi.Size()
			}
			continue
		}
		if de.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(string(d), de.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, kept, left, errors.Join(errs...)
}

// copyPrerendered writes f's CSV into zw from a prerendered entry, if one
// matches what v holds for tenant, and returns its rows; ok is false when
// the CSV must be rendered.
func (e *Exporter) copyPrerendered(ctx context.Context, zw *zip.Writer, v *snapshot.Version, plan *Plan, f FilePlan, tenant string, at time.Time) (rows int64, ok bool, err error) {
	if e.cfg.PrerenderDir == "" {
		return 0, false, nil
	}
	b, folded, err := v.Folded(ctx, f.Table, tenant)
	if err != nil || !folded {
		return 0, false, err
	}
	ts, _ := v.Table(f.Table)
	name := entryName(b, fingerprint(f, ts, b.Schema, tenant, plan.BOM, e.cfg.CompressionLevel))
	en, err := entryDir(e.cfg.PrerenderDir).open(name)
	if err != nil {
		e.logger.Warn("prerendered entry unusable: rendering the CSV", "file", f.Name, "err", err)
		return 0, false, nil
	}
	if en == nil {
		return 0, false, nil
	}
	defer en.f.Close()
	if err := en.copyTo(zw, f.Name, at); err != nil {
		return 0, false, fmt.Errorf("zip %s: prerendered entry %s: %w", f.Name, name, err)
	}
	progressFrom(ctx).rows.Add(en.rows)
	e.m.prerendered(en.rows)
	return en.rows, true, nil
}

// PrerenderMetrics are the Prerenderer's metrics.
type PrerenderMetrics struct {
	entries prometheus.Counter
	rows    prometheus.Counter
	seconds prometheus.Counter
	kept    prometheus.Gauge
	bytes   prometheus.Gauge
}

// NewPrerenderMetrics registers the prerender metrics on reg (nil: unregistered).
func NewPrerenderMetrics(reg prometheus.Registerer) *PrerenderMetrics {
	f := promauto.With(reg)
	return &PrerenderMetrics{
		entries: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_prerender_entries_written_total",
			Help: "Prerendered CSV entries written.",
		}),
		rows: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_prerender_rows_total",
			Help: "Rows rendered into prerendered CSV entries.",
		}),
		seconds: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_prerender_seconds_total",
			Help: "Time spent writing prerendered CSV entries.",
		}),
		kept: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_prerender_entries",
			Help: "Prerendered CSV entries kept, as of the last pass.",
		}),
		bytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_prerender_bytes",
			Help: "Bytes of the prerendered CSV entries kept, as of the last pass.",
		}),
	}
}

func (m *PrerenderMetrics) written(rows int64, d time.Duration) {
	if m != nil {
		m.entries.Inc()
		m.rows.Add(float64(rows))
		m.seconds.Add(d.Seconds())
	}
}

func (m *PrerenderMetrics) stored(n int, bytes int64) {
	if m != nil {
		m.kept.Set(float64(n))
		m.bytes.Set(float64(bytes))
	}
}
