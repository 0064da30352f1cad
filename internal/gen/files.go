package gen

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"

	"golang.org/x/sync/errgroup"
)

// ObjectPutter stores attachment files. A filesystem or object store
// implements it.
type ObjectPutter interface {
	// Put stores the content read from r under key, replacing any object
	// there, and returns the number of bytes stored. Put must be safe for
	// concurrent use.
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
}

// fileKind is a content type and how its bytes look.
type fileKind struct {
	contentType  string
	ext          string
	compressible bool   // prose, rather than random ("already compressed") bytes
	magic        string // leading bytes
}

var (
	kindPDF  = fileKind{"application/pdf", ".pdf", false, "%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"}
	kindDOCX = fileKind{"application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx", false, "PK\x03\x04\x14\x00\x06\x00"}
	kindDOC  = fileKind{"application/msword", ".doc", true, "\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"}
	kindTXT  = fileKind{"text/plain; charset=utf-8", ".txt", true, ""}
	kindCSV  = fileKind{"text/csv", ".csv", true, "id,name,notes\r\n"}
	kindJSON = fileKind{"application/json", ".json", true, `{"data": "`}
	kindHTML = fileKind{"text/html", ".html", true, "<!DOCTYPE html><html><body><p>"}
	kindJPEG = fileKind{"image/jpeg", ".jpg", false, "\xff\xd8\xff\xe0\x00\x10JFIF\x00"}
	kindPNG  = fileKind{"image/png", ".png", false, "\x89PNG\r\n\x1a\n"}
	kindZIP  = fileKind{"application/zip", ".zip", false, "PK\x03\x04\x14\x00\x00\x00"}
	kindBIN  = fileKind{"application/octet-stream", ".bin", false, ""}
)

// kindsByCategory lists the plausible content types of each attachment
// category, the enum's labels in order.
var (
	categories      = []string{"cv", "cover_letter", "offer_letter", "contract", "photo", "portfolio", "other"}
	kindsByCategory = map[string][]fileKind{
		"cv":           {kindPDF, kindPDF, kindPDF, kindDOCX, kindDOCX, kindDOC, kindTXT},
		"cover_letter": {kindPDF, kindDOCX, kindTXT},
		"offer_letter": {kindPDF},
		"contract":     {kindPDF, kindPDF, kindDOCX},
		"photo":        {kindJPEG, kindJPEG, kindPNG},
		"portfolio":    {kindZIP, kindPDF, kindHTML},
		"other":        {kindCSV, kindJSON, kindBIN, kindTXT, kindZIP, kindJPEG},
	}
)

const (
	minFileSize = 100
	maxFileSize = 64 * 1024
)

// fileSize returns a log-uniform size between minFileSize and maxFileSize.
func fileSize(r *rand.Rand) int64 {
	return int64(minFileSize * math.Exp(r.Float64()*math.Log(maxFileSize/minFileSize)))
}

// fileContent appends to dst the content of the attachment with the given id:
// size bytes that depend only on seed, id and kind.
func fileContent(dst []byte, seed int64, id [16]byte, k fileKind, size int64) []byte {
	r := newRand(seed, 0xf11e, binary.LittleEndian.Uint64(id[:8]), binary.LittleEndian.Uint64(id[8:]))
	start := len(dst)
	end := start + int(size)
	dst = append(dst, k.magic...)
	if k.compressible {
		for len(dst) < end {
			dst = sentence(r, dst, 20)
			dst = append(dst, '\n')
		}
	} else {
		n := end - len(dst)
		if n > 0 {
			dst = append(dst, make([]byte, n)...)
			fillRandom(r, dst[end-n:end])
		}
	}
	return dst[:end]
}

// hostileFileNames are attachment names that a bundle writer must not trust.
var hostileFileNames = []string{
	"../../etc/passwd",
	"../../../../../../tmp/evil.sh",
	"/abs/path.pdf",
	"/etc/shadow",
	`..\..\windows\system32\config\SAM`,
	`C:\Users\victim\Desktop\cv.pdf`,
	"",
	".",
	"..",
	" ",
	"CON.txt",
	"aux",
	"name\nwith newline.pdf",
	"tab\tin name.txt",
	`a:b*c?d"e<f>g|h.pdf`,
	"\u202efdp.exe",
	"résumé.pdf",             // NFC
	"re\u0301sume\u0301.pdf", // NFD: a different name that looks the same
	".hidden",
	"trailing dot.",
	"trailing space.pdf ",
	" leading space.pdf",
	"emoji 📄✅.pdf",
	"履歴書（最終版）.pdf",
	"dir/sub/file.pdf",
	"=HYPERLINK(\"http://x\").pdf",
	"%2e%2e%2fetc%2fpasswd",
	"file.pdf\u200b",
	strings.Repeat("a", 996) + ".pdf",
	strings.Repeat("é", 496) + ".pdf",
	strings.Repeat("長", 300) + ".docx",
}

// fileName returns the file name of the i-th attachment of a tenant:
// plausible most of the time, "CV.pdf" for a tenant's first two attachments
// (a duplicate in every tenant with two or more), every hostile name in turn
// for the next ones of tenant 1, and hostile now and then.
func fileName(r *rand.Rand, tenant, i int64, category string, k fileKind) string {
	switch {
	case i < 2:
		return "CV.pdf"
	case tenant == 1 && i-2 < int64(len(hostileFileNames)):
		return hostileFileNames[i-2]
	case chance(r, 0.03):
		return pick(r, hostileFileNames)
	}
	switch category {
	case "cv":
		switch r.IntN(4) {
		case 0:
			return "CV" + k.ext
		case 1:
			return "Resume" + k.ext
		}
		return pick(r, firstNames) + " " + pick(r, lastNames) + " - CV" + k.ext
	case "cover_letter":
		return "Cover letter (final) v" + fmt.Sprint(1+r.IntN(4)) + k.ext
	case "offer_letter":
		return "Offer letter – " + pick(r, lastNames) + k.ext
	case "contract":
		return "Contract_" + fmt.Sprint(2015+r.IntN(10)) + k.ext
	case "photo":
		return fmt.Sprintf("IMG_%04d%s", r.IntN(10000), k.ext)
	case "portfolio":
		return "portfolio" + k.ext
	}
	return pick(r, []string{"document", "scan", "notes", "export", "Untitled", "data, final", "attachment"}) + k.ext
}

type fileJob struct {
	key  string
	data []byte
}

// fileWriter writes attachment files through an ObjectPutter from a few
// goroutines, so that file writes overlap the COPY stream.
type fileWriter struct {
	files ObjectPutter
	jobs  chan fileJob
	g     *errgroup.Group
	ctx   context.Context
	// per worker counts, summed by wait
	written []int64
	bytes   []int64
}

func newFileWriter(ctx context.Context, files ObjectPutter, workers int) *fileWriter {
	g, gctx := errgroup.WithContext(ctx)
	w := &fileWriter{
		files:   files,
		jobs:    make(chan fileJob, 2*workers),
		g:       g,
		ctx:     gctx,
		written: make([]int64, workers),
		bytes:   make([]int64, workers),
	}
	for i := range workers {
		g.Go(func() error {
			for j := range w.jobs {
				n, err := files.Put(gctx, j.key, bytes.NewReader(j.data))
				if err != nil {
					return fmt.Errorf("put %s: %w", j.key, err)
				}
				if n != int64(len(j.data)) {
					return fmt.Errorf("put %s: stored %d bytes of %d", j.key, n, len(j.data))
				}
				w.written[i]++
				w.bytes[i] += n
			}
			return nil
		})
	}
	return w
}

// put queues a file; it fails once a write has failed or ctx is done.
func (w *fileWriter) put(key string, data []byte) error {
	select {
	case w.jobs <- fileJob{key: key, data: data}:
		return nil
	case <-w.ctx.Done():
		// The group's error, if any, is reported by wait.
		return fmt.Errorf("write files: %w", context.Cause(w.ctx))
	}
}

// wait stops the workers once the queue is drained and returns the first
// error, the number of files and of bytes written.
func (w *fileWriter) wait() (files, bytes int64, err error) {
	close(w.jobs)
	err = w.g.Wait()
	for i := range w.written {
		files += w.written[i]
		bytes += w.bytes[i]
	}
	return files, bytes, err
}
