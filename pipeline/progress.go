package pipeline

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ExportProgress is how far a running export is.
type ExportProgress struct {
	RequestID string    `json:"request_id"`
	TenantID  string    `json:"tenant_id"`
	Started   time.Time `json:"started"`
	// Rows rendered so far, of about RowsTotal (estimated from staging).
	Rows      int64 `json:"rows"`
	RowsTotal int64 `json:"rows_total"`
	// Files copied into the file bundles so far.
	Files int64 `json:"files"`
	// Bytes of bundles written so far.
	Bytes int64 `json:"bytes"`
	// Percent is Rows of RowsTotal; ETASeconds the time left at the rate so far.
	Percent    float64 `json:"percent"`
	ETASeconds float64 `json:"eta_seconds"`
}

// progress is the live counters of one export.
type progress struct {
	id, tenant string
	started    time.Time
	total      int64
	rows       atomic.Int64
	files      atomic.Int64
	bytes      atomic.Int64
}

func (p *progress) snapshot() ExportProgress {
	out := ExportProgress{RequestID: p.id, TenantID: p.tenant, Started: p.started, Rows: p.rows.Load(),
		RowsTotal: p.total, Files: p.files.Load(), Bytes: p.bytes.Load()}
	if out.RowsTotal > 0 {
		out.Percent = min(99.9, 100*float64(out.Rows)/float64(out.RowsTotal))
	}
	if out.Percent > 0 {
		el := time.Since(p.started)
		out.ETASeconds = (time.Duration(float64(el) * (100 - out.Percent) / out.Percent)).Seconds()
	}
	return out
}

// progressTable holds the running exports.
type progressTable struct {
	mu      sync.Mutex
	running map[string]*progress
}

func (t *progressTable) start(id, tenant string, total int64) *progress {
	p := &progress{id: id, tenant: tenant, started: time.Now(), total: total}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.running == nil {
		t.running = map[string]*progress{}
	}
	t.running[id] = p
	return p
}

func (t *progressTable) end(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.running, id)
}

func (t *progressTable) list() []ExportProgress {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]ExportProgress, 0, len(t.running))
	for _, p := range t.running {
		out = append(out, p.snapshot())
	}
	slices.SortFunc(out, func(a, b ExportProgress) int { return strings.Compare(a.RequestID, b.RequestID) })
	return out
}

// report logs p every interval until stop is called.
func (p *progress) report(log *slog.Logger, interval time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				s := p.snapshot()
				log.Info("export progress", "rows", s.Rows, "rows_total", s.RowsTotal, "files", s.Files,
					"bytes", s.Bytes, "percent", int(s.Percent), "eta_seconds", int(s.ETASeconds))
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// countingWriter counts the bytes written through it into n.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

type progressKey struct{}

// withProgress returns ctx carrying the counters of an export.
func withProgress(ctx context.Context, p *progress) context.Context {
	return context.WithValue(ctx, progressKey{}, p)
}

// progressFrom returns the counters ctx carries, or throwaway ones.
func progressFrom(ctx context.Context) *progress {
	if p, ok := ctx.Value(progressKey{}).(*progress); ok {
		return p
	}
	return &progress{}
}
