package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strings"
)

// DownloadHandler serves the objects of fs at the URLs that signer signs
// (see FSLinker): GET and HEAD of DownloadPath + key, with the query that
// signer wrote. It answers 403 Forbidden for a URL whose signature does not
// match, 410 Gone for an expired one, and 404 Not Found when the object no
// longer exists. Downloads support Range and conditional requests and carry
// Content-Length, Content-Type and an attachment Content-Disposition.
//
// Mount it at DownloadPath, below the path of the signer's base URL if it
// has one (strip that path with http.StripPrefix). The signature is a
// bearer credential: the handler never logs a request's query.
func DownloadHandler(fs *FS, signer *Signer, logger *slog.Logger) http.Handler {
	return &downloadHandler{fs: fs, signer: signer, logger: logger.With("component", "download")}
}

type downloadHandler struct {
	fs     *FS
	signer *Signer
	logger *slog.Logger
}

func (h *downloadHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "Method not allowed.", http.StatusMethodNotAllowed)
		return
	}
	key, ok := strings.CutPrefix(r.URL.Path, DownloadPath)
	if !ok || ValidateKey(key) != nil {
		http.Error(w, "Not found.", http.StatusNotFound)
		return
	}
	link, err := h.signer.Verify(key, r.URL.Query())
	switch {
	case errors.Is(err, ErrLinkExpired):
		h.logger.Info("refused expired download link", "key", key, "expires", link.Expires, "remote", r.RemoteAddr)
		http.Error(w, "This download link has expired. Ask for a new one.", http.StatusGone)
		return
	case err != nil:
		h.logger.Warn("refused download link with a bad signature", "key", key, "remote", r.RemoteAddr)
		http.Error(w, "This download link is not valid: it was changed after it was issued, or not issued here.", http.StatusForbidden)
		return
	}

	f, info, err := h.fs.Open(r.Context(), key)
	if errors.Is(err, ErrNotExist) {
		h.logger.Info("download of a missing object", "key", key, "remote", r.RemoteAddr)
		http.Error(w, "The file of this download link no longer exists.", http.StatusNotFound)
		return
	}
	if err != nil {
		h.logger.Error("open download", "key", key, "err", err)
		http.Error(w, "Internal server error.", http.StatusInternalServerError)
		return
	}
	defer func() {
		if err := f.Close(); err != nil {
			h.logger.Warn("close download", "key", key, "err", err)
		}
	}()

	ct := link.ContentType
	if _, _, err := mime.ParseMediaType(ct); err != nil {
		ct = defaultContentType
	}
	hdr := w.Header()
	hdr.Set("Content-Type", ct) // set, so ServeContent does not sniff
	hdr.Set("Content-Disposition", contentDisposition(link.FileName))
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "private")
	hdr.Set("Referrer-Policy", "no-referrer")
	// A strong validator for If-Range: Last-Modified has whole seconds only.
	hdr.Set("ETag", fmt.Sprintf(`"%x-%x"`, info.Size, info.ModTime.UnixNano()))
	h.logger.Debug("download", "key", key, "method", r.Method, "range", r.Header.Get("Range"), "remote", r.RemoteAddr)
	http.ServeContent(w, r, "", info.ModTime, f)
}
