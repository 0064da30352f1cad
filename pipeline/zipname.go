package pipeline

import (
	"hash/maphash"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// Bounds of the paths a ZipNamer makes, in bytes: short enough for every
// common file system and for Windows' 260-character paths with some room
// for the folder the zip is extracted to.
const (
	maxZipSegment = 120
	maxZipPath    = 240
	// maxZipExt is the longest extension kept when a name is shortened.
	maxZipExt = 16
	// maxSanitizeInput bounds the work on a name: longer ones keep their
	// first and last bytes (the extension).
	maxSanitizeInput = 1024
	sanitizeTail     = 64
	// numberedNames is how many "name (n)" a collision tries before the
	// file's id.
	numberedNames = 9
	// shortID is how much of the id a name takes, in bytes.
	shortID = 12
)

// ZipNamer names the files of one zip bundle: readable paths like
// "candidate-1234/Résumé.pdf", safe to extract anywhere, and collision-free.
//
// Every path segment is valid UTF-8 in NFC, has no control, bidi-override or
// path characters (/ \ : * ? " < > |), no leading or trailing spaces or dots,
// is never empty, "." or "..", nor a Windows device name (CON, NUL, COM1...),
// and is at most 120 bytes long (cut at a character, keeping the extension);
// a path is at most 240 bytes. No two paths are equal ignoring case and
// Unicode normalisation, and no file has the name of a folder: a later
// "resume.pdf" in the same folder becomes "resume (2).pdf".
//
// A namer remembers a 64-bit hash of each path it gave (about 20 bytes a
// file), so millions of files take little memory; a hash collision only
// renames a file that did not need it. A ZipNamer is not safe for concurrent
// use.
type ZipNamer struct {
	seed  maphash.Seed
	fold  cases.Caser
	files map[uint64]struct{} // hashes of the folded paths of files
	dirs  map[uint64]struct{} // hashes of the folded names of folders
	moved map[uint64]string   // folders renamed because a file had their name
	seq   uint64              // last number given after numbered names ran out
}

// NewZipNamer returns a namer for one zip bundle.
func NewZipNamer() *ZipNamer {
	return &ZipNamer{
		seed:  maphash.MakeSeed(),
		fold:  cases.Fold(),
		files: map[uint64]struct{}{},
		dirs:  map[uint64]struct{}{},
		moved: map[uint64]string{},
		seq:   numberedNames + 1,
	}
}

// Name returns the path in the zip of a file called fileName (any bytes)
// owned by the record whose key values are owner, e.g. ["candidate",
// "1234"] gives the folder "candidate-1234"; with no owner the file goes at
// the top. id identifies the file (e.g. its object key); the tail of it
// tells apart files that keep colliding. Name never returns a path twice.
func (z *ZipNamer) Name(owner []string, fileName, id string) string {
	dir := ""
	budget := maxZipSegment
	if len(owner) > 0 {
		dir = z.dir(strings.Join(owner, "-"))
		budget = min(budget, maxZipPath-len(dir)-1)
	}
	stem, ext := splitExt(sanitizeSegment(fileName, "file"))
	for try := 1; ; try++ {
		name := fitSegment(stem, z.suffix(try, id), ext, budget)
		p := name
		if dir != "" {
			p = dir + "/" + name
		}
		k := z.key(p)
		if _, used := z.files[k]; used {
			continue
		}
		if dir == "" {
			if _, used := z.dirs[k]; used {
				continue
			}
		}
		z.files[k] = struct{}{}
		return p
	}
}

// dir returns the folder of an owner whose values joined are raw.
func (z *ZipNamer) dir(raw string) string {
	d := fitSegment(sanitizeSegment(raw, "_"), "", "", maxZipSegment)
	k := z.key(d)
	if m, ok := z.moved[k]; ok {
		return m
	}
	if _, ok := z.dirs[k]; ok {
		return d
	}
	if _, clash := z.files[k]; clash {
		// A top-level file has this name: the folder gets another.
		for n := 2; ; n++ {
			m := fitSegment(d, " ("+strconv.Itoa(n)+")", "", maxZipSegment)
			mk := z.key(m)
			_, file := z.files[mk]
			_, dir := z.dirs[mk]
			if !file && !dir {
				z.dirs[mk] = struct{}{}
				z.moved[k] = m
				return m
			}
		}
	}
	z.dirs[k] = struct{}{}
	return d
}

// suffix returns what try number try adds to a name: nothing, then " (2)"
// to " (10)", then the tail of the id, then ever new numbers (so a folder
// with many files of one name costs a few tries per file, not one per file).
func (z *ZipNamer) suffix(try int, id string) string {
	switch {
	case try == 1:
		return ""
	case try <= numberedNames+1:
		return " (" + strconv.Itoa(try) + ")"
	case try == numberedNames+2:
		if s := idTail(id); s != "" {
			return " (" + s + ")"
		}
	}
	z.seq++
	return " (" + strconv.FormatUint(z.seq, 10) + ")"
}

// idTail returns the end of id, sanitised, at most shortID bytes: the
// distinctive part of keys like "tenants/1/attachments/<uuid>".
func idTail(id string) string {
	if i := strings.LastIndexByte(id, '/'); i >= 0 {
		id = id[i+1:]
	}
	s := sanitizeSegment(id, "")
	if len(s) > shortID {
		i := len(s) - shortID
		for i < len(s) && !utf8.RuneStart(s[i]) {
			i++
		}
		s = s[i:]
	}
	return strings.TrimLeft(s, " .-_")
}

// key is the hash of a path folded for comparison: case and Unicode
// normalisation do not count.
func (z *ZipNamer) key(p string) uint64 {
	return maphash.String(z.seed, z.fold.String(norm.NFC.String(p)))
}

// sanitizeSegment makes s a safe path segment (not yet bounded in length),
// or fallback if nothing of it is left.
func sanitizeSegment(s, fallback string) string {
	if len(s) > maxSanitizeInput {
		head := maxSanitizeInput - sanitizeTail
		for head > 0 && !utf8.RuneStart(s[head]) {
			head--
		}
		tail := len(s) - sanitizeTail
		for tail < len(s) && !utf8.RuneStart(s[tail]) {
			tail++
		}
		s = s[:head] + s[tail:]
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = norm.NFC.String(s)
	s = strings.Map(func(r rune) rune {
		if unsafeRune(r) {
			return '_'
		}
		return r
	}, s)
	s = strings.TrimFunc(s, trimmedRune)
	if s == "" {
		return fallback
	}
	if windowsReserved(stemBeforeDot(s)) {
		s = "_" + s
	}
	return s
}

// unsafeRune reports runes replaced by _: controls, path and wildcard
// characters, and the invisible bidi controls that can disguise an
// extension ("exe.pdf" shown for "fdp.exe").
func unsafeRune(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r < 0xa0:
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	}
	return strings.ContainsRune(`/\:*?"<>|`, r)
}

// trimmedRune reports runes trimmed from both ends of a segment: Windows
// drops trailing dots and spaces, and leading ones hide a file or confuse.
func trimmedRune(r rune) bool { return r == '.' || unicode.IsSpace(r) }

func stemBeforeDot(s string) string {
	if i := strings.IndexByte(s, '.'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimRight(s, " ")
}

// windowsReserved reports whether stem (a name up to its first dot) is a
// Windows device name, which cannot be a file name with any extension.
func windowsReserved(stem string) bool {
	switch u := strings.ToUpper(stem); u {
	case "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$":
		return true
	default:
		if len(u) >= 4 && (strings.HasPrefix(u, "COM") || strings.HasPrefix(u, "LPT")) {
			switch u[3:] {
			case "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "¹", "²", "³":
				return true
			}
		}
	}
	return false
}

// splitExt splits a sanitised name into stem and extension (".pdf"); a
// name without a short, space-free extension has none.
func splitExt(name string) (stem, ext string) {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 || i == len(name)-1 || len(name)-i > maxZipExt || strings.ContainsFunc(name[i:], unicode.IsSpace) {
		return name, ""
	}
	return name[:i], name[i:]
}

// fitSegment returns stem+suffix+ext in at most budget bytes, shortening the
// stem at a character boundary.
func fitSegment(stem, suffix, ext string, budget int) string {
	room := budget - len(suffix) - len(ext)
	if room < 1 {
		ext = ""
		room = budget - len(suffix)
	}
	if len(stem) > room {
		i := max(room, 0)
		for i > 0 && !utf8.RuneStart(stem[i]) {
			i--
		}
		stem = strings.TrimRightFunc(stem[:i], trimmedRune)
		if stem == "" {
			stem = "_"
		}
	}
	return stem + suffix + ext
}

// storedExts are extensions of formats already compressed: deflating them
// costs time and saves nothing.
var storedExts = map[string]bool{
	"jpg": true, "jpeg": true, "png": true, "gif": true, "webp": true, "heic": true, "heif": true, "avif": true, "jxl": true,
	"zip": true, "gz": true, "tgz": true, "bz2": true, "tbz2": true, "xz": true, "txz": true, "7z": true, "rar": true, "zst": true, "lz4": true, "br": true,
	"docx": true, "docm": true, "xlsx": true, "xlsm": true, "pptx": true, "pptm": true, "odt": true, "ods": true, "odp": true, "epub": true,
	"mp3": true, "mp4": true, "m4a": true, "m4v": true, "aac": true, "ogg": true, "opus": true, "flac": true,
	"mov": true, "avi": true, "mkv": true, "webm": true, "wmv": true,
	"pdf": true,
}

// storedTypes are MIME types of formats already compressed.
var storedTypes = map[string]bool{
	"image/jpeg": true, "image/jpg": true, "image/pjpeg": true, "image/png": true, "image/gif": true, "image/webp": true,
	"image/heic": true, "image/heif": true, "image/avif": true, "image/jxl": true,
	"application/zip": true, "application/x-zip-compressed": true, "application/gzip": true, "application/x-gzip": true,
	"application/x-bzip2": true, "application/x-xz": true, "application/x-7z-compressed": true,
	"application/vnd.rar": true, "application/x-rar-compressed": true, "application/zstd": true,
	"application/epub+zip": true, "application/pdf": true,
	"audio/mpeg": true, "audio/mp4": true, "audio/aac": true, "audio/ogg": true, "audio/opus": true, "audio/webm": true, "audio/flac": true,
}

// storedTypePrefixes are MIME type prefixes of formats already compressed.
var storedTypePrefixes = []string{
	"video/",
	"application/vnd.openxmlformats-officedocument.",
	"application/vnd.oasis.opendocument.",
}

// ShouldStore reports whether a file should be stored in a zip as it is
// rather than deflated: its extension or content type is of an already
// compressed format (images, archives, office documents, audio, video, PDF).
func ShouldStore(fileName, contentType string) bool {
	if i := strings.LastIndexByte(fileName, '.'); i >= 0 && storedExts[strings.ToLower(strings.TrimSpace(fileName[i+1:]))] {
		return true
	}
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	if storedTypes[mt] {
		return true
	}
	for _, p := range storedTypePrefixes {
		if strings.HasPrefix(mt, p) {
			return true
		}
	}
	return false
}
