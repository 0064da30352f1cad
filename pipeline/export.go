package pipeline

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zip"
	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/internal/pgcsv"
	"github.com/exportd/exportd/snapshot"
	"github.com/exportd/exportd/storage"
)

// Parts of an export, in master.csv order.
const (
	PartData        = "data_files"
	PartAttachments = "attachments"
	PartCVs         = "internal_cvs"
)

// Publisher is where an export is written and linked: a storage.Store with
// storage.Linker (the filesystem store with signed links, or S3).
type Publisher interface {
	Putter
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	Link(ctx context.Context, key string, o storage.LinkOptions) (storage.Link, error)
}

// FileSource opens the platform's files (attachments, CVs) by object key.
type FileSource interface {
	Get(ctx context.Context, key string) (io.ReadCloser, error)
}

// ExportConfig configures an Exporter. Zero values take the defaults.
type ExportConfig struct {
	// Prefix is the key prefix of published exports (default "exports").
	Prefix string
	// LinkTTL is how long links stay valid (default and maximum 7 days).
	LinkTTL time.Duration
	// CompressionLevel is the deflate level of CSVs and compressible files
	// (default 1: fastest; 1-9).
	CompressionLevel int
	// PrerenderDir is a Prerenderer's directory, whose entries are copied
	// into exports where they match ("": every CSV is rendered).
	PrerenderDir string
}

// Exporter renders a tenant's Full Data Export from a pinned snapshot
// version and publishes it. It is safe for concurrent use.
type Exporter struct {
	spec   *Spec
	files  FileSource
	out    Publisher
	cfg    ExportConfig
	logger *slog.Logger
	m      *exportMetrics
	now    func() time.Time
	prog   progressTable
}

// Progress lists the exports running now.
func (e *Exporter) Progress() []ExportProgress { return e.prog.list() }

// NewExporter returns an Exporter. m may be nil (no metrics).
func NewExporter(spec *Spec, files FileSource, out Publisher, cfg ExportConfig, logger *slog.Logger, m *ExportMetrics) *Exporter {
	if cfg.Prefix == "" {
		cfg.Prefix = "exports"
	}
	if cfg.LinkTTL == 0 {
		cfg.LinkTTL = storage.DefaultLinkTTL
	}
	if cfg.CompressionLevel == 0 {
		cfg.CompressionLevel = 1
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Exporter{spec: spec, files: files, out: out, cfg: cfg, logger: logger.With("component", "export"), m: m.get(), now: time.Now}
}

// Manifest records a published export. It is written last, as
// <prefix>/<tenant>/<request>/manifest.json: an export without one is
// incomplete.
type Manifest struct {
	Version   int              `json:"version"`
	RequestID string           `json:"request_id"`
	TenantID  string           `json:"tenant_id"`
	LSN       string           `json:"lsn"`
	CreatedAt time.Time        `json:"created_at"`
	Master    PartResult       `json:"master"`
	Parts     []PartResult     `json:"parts"`
	Rows      map[string]int64 `json:"rows"`
}

// PartResult describes one published object of an export.
type PartResult struct {
	Part         string    `json:"part"`
	FileName     string    `json:"file_name"`
	Key          string    `json:"key"`
	URL          string    `json:"url"`
	ExpiresAt    time.Time `json:"expires_at"`
	SizeBytes    int64     `json:"size_bytes"`
	SHA256       string    `json:"sha256"`
	FileCount    int64     `json:"file_count"`
	MissingFiles int64     `json:"missing_files,omitempty"`
}

// MissingFiles is the number of files listed as missing across the parts.
func (m *Manifest) MissingFiles() int64 {
	var n int64
	for _, p := range m.Parts {
		n += p.MissingFiles
	}
	return n
}

// Dir returns the key prefix under which an export is published.
func (e *Exporter) Dir(tenant, requestID string) string {
	return path.Join(e.cfg.Prefix, tenant, requestID)
}

// Existing returns the manifest of a completed export, or nil if there is
// none.
func (e *Exporter) Existing(ctx context.Context, tenant, requestID string) (*Manifest, error) {
	key := path.Join(e.Dir(tenant, requestID), "manifest.json")
	rc, err := e.out.Get(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", key, err)
	}
	defer rc.Close()
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(rc, 1<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", key, err)
	}
	return &m, nil
}

// Export publishes the tenant's export for requestID from version v and
// returns its manifest. If the export was completed before, its manifest is
// returned and nothing is rewritten; otherwise every object is (re)written
// and the manifest goes last.
func (e *Exporter) Export(ctx context.Context, v *snapshot.Version, tenant, requestID string) (*Manifest, error) {
	if err := storage.ValidateKey(e.Dir(tenant, requestID)); err != nil {
		return nil, fmt.Errorf("export %s for tenant %s: %w", requestID, tenant, err)
	}
	if m, err := e.Existing(ctx, tenant, requestID); err != nil || m != nil {
		return m, err
	}
	plan, err := e.spec.Resolve(v.Tables())
	if err != nil {
		return nil, fmt.Errorf("export %s: resolve spec: %w", requestID, err)
	}
	start := e.now()
	dir := e.Dir(tenant, requestID)
	log := e.logger.With("request_id", requestID, "tenant", tenant, "lsn", v.LSN().String())
	var total int64
	for _, f := range plan.Files {
		total += v.EstimateRows(f.Table, tenant)
	}
	prog := e.prog.start(requestID, tenant, total)
	defer e.prog.end(requestID)
	stopReport := prog.report(log, 10*time.Second)
	defer stopReport()
	ctx = withProgress(ctx, prog)
	log.Info("export started", "rows_estimate", total)

	var (
		data, att, cvs   PartResult
		rows             map[string]int64
		attMiss, cvsMiss int64
	)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		t := time.Now()
		var err error
		data, rows, err = e.dataBundle(gctx, v, plan, tenant, dir, start)
		e.m.observePhase("data_files", time.Since(t))
		return err
	})
	g.Go(func() error {
		t := time.Now()
		var err error
		att, attMiss, err = e.fileBundle(gctx, v, plan, tenant, dir, PartAttachments, false, start)
		e.m.observePhase("attachments", time.Since(t))
		return err
	})
	g.Go(func() error {
		t := time.Now()
		var err error
		cvs, cvsMiss, err = e.fileBundle(gctx, v, plan, tenant, dir, PartCVs, true, start)
		e.m.observePhase("internal_cvs", time.Since(t))
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("export %s for tenant %s: %w", requestID, tenant, err)
	}
	att.MissingFiles, cvs.MissingFiles = attMiss, cvsMiss
	parts := []PartResult{data, att, cvs}
	for i := range parts {
		l, err := e.out.Link(ctx, parts[i].Key, storage.LinkOptions{TTL: e.cfg.LinkTTL, FileName: parts[i].FileName, ContentType: "application/zip"})
		if err != nil {
			return nil, fmt.Errorf("export %s: link %s: %w", requestID, parts[i].Key, err)
		}
		parts[i].URL, parts[i].ExpiresAt = l.URL, l.Expires.UTC().Truncate(time.Second)
		e.m.published(parts[i].Part, parts[i].SizeBytes)
	}

	t := time.Now()
	master, err := e.publishMaster(ctx, dir, parts)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", requestID, err)
	}
	m := &Manifest{Version: 1, RequestID: requestID, TenantID: tenant, LSN: v.LSN().String(),
		CreatedAt: start.UTC(), Master: master, Parts: parts, Rows: rows}
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if _, err := e.out.Put(ctx, path.Join(dir, "manifest.json"), bytes.NewReader(body)); err != nil {
		return nil, fmt.Errorf("export %s: write manifest: %w", requestID, err)
	}
	e.m.observePhase("publish", time.Since(t))
	log.Info("export published", "bytes", data.SizeBytes+att.SizeBytes+cvs.SizeBytes,
		"missing_files", m.MissingFiles(), "seconds", time.Since(start).Seconds())
	return m, nil
}

// publishMaster writes master.csv, one row per part, and links it.
func (e *Exporter) publishMaster(ctx context.Context, dir string, parts []PartResult) (PartResult, error) {
	var buf bytes.Buffer
	w := pgcsv.NewWriter(&buf)
	if err := w.WriteHeader([]string{"part", "file_name", "url", "expires_at", "size_bytes", "sha256", "file_count"}); err != nil {
		return PartResult{}, err
	}
	for _, p := range parts {
		if err := w.Write([][]byte{[]byte(p.Part), []byte(p.FileName), []byte(p.URL),
			[]byte(p.ExpiresAt.UTC().Format(time.RFC3339)), strconv.AppendInt(nil, p.SizeBytes, 10),
			[]byte(p.SHA256), strconv.AppendInt(nil, p.FileCount, 10)}); err != nil {
			return PartResult{}, err
		}
	}
	if err := w.Flush(); err != nil {
		return PartResult{}, err
	}
	key := path.Join(dir, "master.csv")
	res, err := publishStream(ctx, e.out, key, func(w io.Writer) error {
		_, err := w.Write(buf.Bytes())
		return err
	})
	if err != nil {
		return PartResult{}, fmt.Errorf("publish master.csv: %w", err)
	}
	l, err := e.out.Link(ctx, key, storage.LinkOptions{TTL: e.cfg.LinkTTL, FileName: "master.csv", ContentType: "text/csv; charset=utf-8"})
	if err != nil {
		return PartResult{}, fmt.Errorf("link master.csv: %w", err)
	}
	return PartResult{Part: "master", FileName: "master.csv", Key: key, URL: l.URL,
		ExpiresAt: l.Expires.UTC().Truncate(time.Second), SizeBytes: res.Size, SHA256: res.SHA256, FileCount: int64(len(parts))}, nil
}

// dataBundle publishes the zip of the CSVs and its README.
func (e *Exporter) dataBundle(ctx context.Context, v *snapshot.Version, plan *Plan, tenant, dir string, at time.Time) (PartResult, map[string]int64, error) {
	rows := make(map[string]int64, len(plan.Files))
	name := "data_files.zip"
	key := path.Join(dir, name)
	res, err := publishStream(ctx, e.out, key, func(w io.Writer) error {
		zw := newZip(w, e.cfg.CompressionLevel)
		for _, f := range plan.Files {
			n, ok, err := e.copyPrerendered(ctx, zw, v, plan, f, tenant, at)
			if err != nil {
				return err
			}
			if ok {
				rows[f.Name] = n
				continue
			}
			fw, err := zw.CreateHeader(&zip.FileHeader{Name: f.Name, Method: zip.Deflate, Modified: at})
			if err != nil {
				return fmt.Errorf("zip %s: %w", f.Name, err)
			}
			// Render on this goroutine; zip's CRC on another, which hands
			// blocks to the deflating goroutines (parallelDeflate).
			aw := newAsyncWriter(fw, false)
			n, err = RenderCSV(ctx, aw, v, f, tenant, plan.BOM)
			if cerr := aw.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("zip %s: %w", f.Name, cerr)
			}
			if err != nil {
				return err
			}
			rows[f.Name] = n
			e.m.rendered(n)
		}
		fw, err := zw.CreateHeader(&zip.FileHeader{Name: "README.txt", Method: zip.Deflate, Modified: at})
		if err != nil {
			return err
		}
		if _, err := io.WriteString(fw, bundleReadme(plan, tenant, v.LSN().String(), at, rows)); err != nil {
			return err
		}
		return zw.Close()
	})
	if err != nil {
		return PartResult{}, nil, fmt.Errorf("data files: %w", err)
	}
	return PartResult{Part: PartData, FileName: name, Key: key, SizeBytes: res.Size, SHA256: res.SHA256, FileCount: int64(len(plan.Files)) + 1}, rows, nil
}

// fileBundle publishes the zip of the tenant's attachment files: the CVs
// when cv is set, the others when not.
func (e *Exporter) fileBundle(ctx context.Context, v *snapshot.Version, plan *Plan, tenant, dir, part string, cv bool, at time.Time) (PartResult, int64, error) {
	name := part + ".zip"
	key := path.Join(dir, name)
	var files int64
	var missing missingList
	defer missing.close()
	res, err := publishStream(ctx, e.out, key, func(w io.Writer) error {
		zw := newZip(w, e.cfg.CompressionLevel)
		if ap := plan.Attachments; ap != nil {
			n, err := e.addFiles(ctx, zw, v, ap, tenant, cv, at, &missing)
			files = n
			if err != nil {
				return err
			}
		}
		fw, err := zw.CreateHeader(&zip.FileHeader{Name: "missing_files.csv", Method: zip.Deflate, Modified: at})
		if err != nil {
			return err
		}
		if err := missing.writeTo(fw); err != nil {
			return fmt.Errorf("write missing_files.csv: %w", err)
		}
		return zw.Close()
	})
	if err != nil {
		return PartResult{}, 0, fmt.Errorf("%s: %w", part, err)
	}
	e.m.missing(part, missing.count)
	return PartResult{Part: part, FileName: name, Key: key, SizeBytes: res.Size, SHA256: res.SHA256, FileCount: files}, missing.count, nil
}

// addFiles copies the selected files of the tenant into zw and returns how
// many it added. Files that cannot be read are recorded in missing.
func (e *Exporter) addFiles(ctx context.Context, zw *zip.Writer, v *snapshot.Version, ap *AttachmentPlan, tenant string, cv bool, at time.Time, missing *missingList) (int64, error) {
	rows, err := v.Scan(ctx, ap.Table, tenant)
	if err != nil {
		return 0, fmt.Errorf("scan %s: %w", ap.Table, err)
	}
	defer rows.Close()
	namer := NewZipNamer()
	reserve := []string{"missing_files.csv"}
	for _, r := range reserve {
		namer.Name(nil, r, "")
	}
	var n int64
	tid := []byte(tenant)
	owner := make([]string, len(ap.Owner))
	br := bufio.NewReaderSize(nil, 64<<10)
	for rows.Next() {
		row := rows.Row()
		if !bytes.Equal(row[ap.TenantColumn], tid) {
			return n, fmt.Errorf("staged row of table %s is not of tenant %s: refusing to export it", ap.Table, tenant)
		}
		if ap.IsCV(row) != cv {
			continue
		}
		objKey := string(row[ap.ObjectKey])
		fileName := string(row[ap.FileName])
		for i, c := range ap.Owner {
			owner[i] = string(row[c])
		}
		ct := ""
		if ap.ContentType >= 0 {
			ct = string(row[ap.ContentType])
		}
		zpath := namer.Name(owner, fileName, objKey)
		ownerText := strings.Join(owner, "/")
		if reason := ap.KeyAllowed(objKey, tenant); reason != "" {
			if err := missing.add(zpath, objKey, fileName, ownerText, reason); err != nil {
				return n, err
			}
			continue
		}
		rc, err := e.files.Get(ctx, objKey)
		if err != nil {
			if ctx.Err() != nil {
				return n, ctx.Err()
			}
			if err := missing.add(zpath, objKey, fileName, ownerText, readReason(err)); err != nil {
				return n, err
			}
			continue
		}
		br.Reset(rc)
		if _, err := br.Peek(1); err != nil && err != io.EOF {
			rc.Close()
			if ctx.Err() != nil {
				return n, ctx.Err()
			}
			if err := missing.add(zpath, objKey, fileName, ownerText, readReason(err)); err != nil {
				return n, err
			}
			continue
		}
		method := zip.Deflate
		if ShouldStore(fileName, ct) {
			method = zip.Store
		}
		fw, err := zw.CreateHeader(&zip.FileHeader{Name: zpath, Method: method, Modified: at})
		if err != nil {
			rc.Close()
			return n, fmt.Errorf("zip %s: %w", zpath, err)
		}
		progressFrom(ctx).files.Add(1)
		copied, err := io.Copy(fw, br)
		rc.Close()
		if err != nil {
			if ctx.Err() != nil {
				return n, ctx.Err()
			}
			// The entry is already in the stream: it stays, truncated, and is listed.
			reason := fmt.Sprintf("read failed after %d bytes, the file in the bundle is incomplete: %s", copied, readReason(err))
			if err := missing.add(zpath, objKey, fileName, ownerText, reason); err != nil {
				return n, err
			}
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("scan %s: %w", ap.Table, err)
	}
	return n, nil
}

// readReason is the reason recorded for a file that could not be read.
func readReason(err error) string {
	if errors.Is(err, storage.ErrNotExist) {
		return "not found in the file store"
	}
	return "unreadable: " + err.Error()
}
