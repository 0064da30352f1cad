package pipeline

import (
	"fmt"
	"math/rand/v2"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"golang.org/x/text/cases"
	"golang.org/x/text/unicode/norm"
)

// checkZipPath checks the promises of ZipNamer about one path.
func checkZipPath(t testing.TB, p string) {
	t.Helper()
	require.True(t, utf8.ValidString(p), "invalid UTF-8 in %q", p)
	require.True(t, norm.NFC.IsNormalString(p), "not NFC: %q", p)
	require.LessOrEqual(t, len(p), maxZipPath, "path too long: %q", p)
	require.False(t, strings.HasPrefix(p, "/"), "absolute: %q", p)
	require.True(t, filepath.IsLocal(p), "not local: %q", p)
	require.Equal(t, path.Clean(p), p)
	segs := strings.Split(p, "/")
	require.LessOrEqual(t, len(segs), 2, "too deep: %q", p)
	for _, seg := range segs {
		require.NotContains(t, []string{"", ".", ".."}, seg, "bad segment in %q", p)
		require.LessOrEqual(t, len(seg), maxZipSegment, "segment too long in %q", p)
		require.False(t, strings.ContainsAny(seg, `\:*?"<>|`), "unsafe character in %q", p)
		require.False(t, strings.ContainsFunc(seg, unicode.IsControl), "control character in %q", p)
		require.False(t, strings.ContainsAny(seg, "\u202e\u2066"), "bidi control in %q", p)
		first, _ := utf8.DecodeRuneInString(seg)
		last, _ := utf8.DecodeLastRuneInString(seg)
		require.False(t, trimmedRune(first) || trimmedRune(last), "leading or trailing space or dot in %q", p)
		require.False(t, windowsReserved(stemBeforeDot(seg)), "device name in %q", p)
	}
}

// folded is how file systems that ignore case and normalisation see a path.
func folded(p string) string { return cases.Fold().String(norm.NFC.String(p)) }

func TestZipNamerHostileNames(t *testing.T) {
	z := NewZipNamer()
	for _, tc := range []struct {
		owner []string
		name  string
		want  string
	}{
		{[]string{"candidate", "1234"}, "Résumé.pdf", "candidate-1234/Résumé.pdf"},
		{[]string{"candidate", "1234"}, "Re\u0301sume\u0301 NFD.pdf", "candidate-1234/Résumé NFD.pdf"},
		{[]string{"..", ".."}, "x", "-/x"},
		{[]string{"../../etc", ""}, "x", "_.._etc-/x"},
		{[]string{"", ""}, "x", "-/x (2)"},
		{[]string{}, "top.txt", "top.txt"},
		{nil, "../../etc/passwd", "_.._etc_passwd"},
		{nil, "/etc/passwd", "_etc_passwd"},
		{nil, `C:\Windows\system32\x.dll`, "C__Windows_system32_x.dll"},
		{nil, `\\server\share\x`, "__server_share_x"},
		{nil, "", "file"},
		{nil, ".", "file (2)"},
		{nil, "..", "file (3)"},
		{nil, " . ", "file (4)"},
		{nil, "...pdf", "pdf"},
		{nil, ".bashrc", "bashrc"},
		{nil, "a\x00b\nc\rd\te.pdf", "a_b_c_d_e.pdf"},
		{nil, "caf\xe9.txt", "caf\ufffd.txt"},
		{nil, "\xff\xfe", "\ufffd"},
		{nil, `what?<>|*":.doc`, "what_______.doc"},
		{nil, "invoice\u202efdp.exe", "invoice_fdp.exe"},
		{nil, "  spaced name .pdf.  ", "spaced name .pdf"},
		{nil, "CON", "_CON"},
		{nil, "con.txt", "_con.txt"},
		{nil, "Nul .tar.gz", "_Nul .tar.gz"},
		{nil, "COM1.pdf", "_COM1.pdf"},
		{nil, "lpt¹", "_lpt¹"},
		{nil, "CONSOLE.pdf", "CONSOLE.pdf"},
		{nil, "COM10", "COM10"},
		{nil, "x", "x"},
	} {
		got := z.Name(tc.owner, tc.name, "")
		require.Equal(t, tc.want, got, "%q %q", tc.owner, tc.name)
		checkZipPath(t, got)
	}
}

func TestZipNamerLongNames(t *testing.T) {
	z := NewZipNamer()
	long := strings.Repeat("a", 1000) + ".pdf"
	p := z.Name(nil, long, "")
	require.Equal(t, strings.Repeat("a", maxZipSegment-4)+".pdf", p)
	p = z.Name(nil, long, "")
	require.Equal(t, strings.Repeat("a", maxZipSegment-8)+" (2).pdf", p)

	// Cut at a character, keeping the extension.
	p = z.Name([]string{"candidate", "1"}, strings.Repeat("é", 500)+".docx", "")
	checkZipPath(t, p)
	require.True(t, strings.HasSuffix(p, "é.docx"), p)

	// A long owner still leaves a path within bounds.
	owner := []string{strings.Repeat("ü", 300), strings.Repeat("9", 300)}
	for range 3 {
		p = z.Name(owner, strings.Repeat("x", 300)+".jpeg", "")
		checkZipPath(t, p)
		require.True(t, strings.HasSuffix(p, ".jpeg"), p)
		require.Equal(t, maxZipSegment, len(strings.Split(p, "/")[0]))
	}

	// A long "extension" is part of the name.
	p = z.Name(nil, "report."+strings.Repeat("z", 200), "")
	checkZipPath(t, p)
	require.Len(t, p, maxZipSegment)

	// A huge name costs no more than a long one.
	huge := strings.Repeat("\xff", 10<<20) + ".png"
	start := time.Now()
	p = z.Name(nil, huge, "")
	require.Less(t, time.Since(start), time.Second)
	checkZipPath(t, p)
	require.True(t, strings.HasSuffix(p, ".png"), p)
}

func TestZipNamerCollisions(t *testing.T) {
	z := NewZipNamer()
	dir := []string{"candidate", "7"}
	require.Equal(t, "candidate-7/resume.pdf", z.Name(dir, "resume.pdf", ""))
	require.Equal(t, "candidate-7/resume (2).pdf", z.Name(dir, "resume.pdf", ""))
	require.Equal(t, "candidate-7/RESUME (3).pdf", z.Name(dir, "RESUME.pdf", ""))
	require.Equal(t, "candidate-7/resume (2) (2).pdf", z.Name(dir, "resume (2).pdf", ""), "a name like a renamed one")
	require.Equal(t, "candidate-8/resume.pdf", z.Name([]string{"candidate", "8"}, "resume.pdf", ""), "other folder")
	require.Equal(t, "Candidate-7/resume (4).pdf", z.Name([]string{"Candidate", "7"}, "resume.pdf", ""), "folders differing in case")
	require.Equal(t, "candidate-7/é.pdf", z.Name(dir, "é.pdf", ""))
	require.Equal(t, "candidate-7/É (2).pdf", z.Name(dir, "E\u0301.pdf", ""), "normalisation and case")
	require.Equal(t, "candidate-7/STRASSE.pdf", z.Name(dir, "STRASSE.pdf", ""))
	require.Equal(t, "candidate-7/straße (2).pdf", z.Name(dir, "straße.pdf", ""), "full case folding")

	// Numbered names run out after (10); then the tail of the id, then
	// fresh numbers.
	for i := 5; i <= 10; i++ {
		require.Equal(t, fmt.Sprintf("candidate-7/resume (%d).pdf", i), z.Name(dir, "resume.pdf", ""))
	}
	require.Equal(t, "candidate-7/resume (0123456789ab).pdf", z.Name(dir, "resume.pdf", "tenants/1/attachments/00000000-0000-4000-8000-0123456789ab"))
	require.Equal(t, "candidate-7/resume (11).pdf", z.Name(dir, "resume.pdf", "tenants/1/attachments/00000000-0000-4000-8000-0123456789ab"))
	require.Equal(t, "candidate-7/resume (12).pdf", z.Name(dir, "resume.pdf", ""))

	// Files at the top and folders never share a name.
	z = NewZipNamer()
	require.Equal(t, "missing_files.csv", z.Name(nil, "missing_files.csv", ""))
	require.Equal(t, "Missing_Files (2).csv", z.Name(nil, "Missing_Files.csv", ""))
	require.Equal(t, "missing_files.csv (2)/a.pdf", z.Name([]string{"missing_files.csv"}, "a.pdf", ""))
	require.Equal(t, "missing_files.csv (2)/b.pdf", z.Name([]string{"missing_files.csv"}, "b.pdf", ""), "the renamed folder is kept")
	require.Equal(t, "candidate-1/a.pdf", z.Name([]string{"candidate", "1"}, "a.pdf", ""))
	require.Equal(t, "candidate-1 (2)", z.Name(nil, "candidate-1", ""))
	require.Equal(t, "CANDIDATE-1 (3)", z.Name(nil, "CANDIDATE-1", ""))
}

// TestZipNamerManyDuplicates names many files of one name in one folder:
// each costs a few tries, not one per file named before.
func TestZipNamerManyDuplicates(t *testing.T) {
	z := NewZipNamer()
	const n = 20_000
	seen := make(map[string]bool, n)
	start := time.Now()
	for i := range n {
		id := ""
		if i%2 == 0 {
			id = fmt.Sprintf("tenants/1/attachments/%012d", i)
		}
		p := z.Name([]string{"candidate", "1"}, "cv.pdf", id)
		require.False(t, seen[folded(p)], "duplicate %q", p)
		seen[folded(p)] = true
	}
	require.Less(t, time.Since(start), 10*time.Second)
}

// hostileName returns a random name built from troublesome pieces.
func hostileName(r *rand.Rand, previous []string) string {
	pieces := []string{
		"resume", "Résumé", "Re\u0301sume\u0301", "RESUME", "cv", ".pdf", ".PDF", ".docx", ".tar.gz", ".", "..", "/", "\\",
		" ", "\t", "\n", "\x00", "\x7f", "\u0085", "\u202e", ":", "*", "?", "\"", "<", ">", "|", "CON", "nul", "com1",
		"lpt²", "\xff", "\xc3", "\xe2\x82", "日本語", "ß", "SS", "ǅ", "İ", "ﬁ", "K", "\u212a", "😀", "\ufffd", "~", "$",
		"(2)", " (2)", "-", "_", "é",
	}
	if len(previous) > 0 && r.IntN(4) == 0 {
		p := previous[r.IntN(len(previous))]
		switch r.IntN(3) {
		case 0:
			return p
		case 1:
			return strings.ToUpper(p)
		default:
			return norm.NFD.String(p)
		}
	}
	var b strings.Builder
	for range r.IntN(12) {
		switch r.IntN(10) {
		case 0:
			b.WriteString(strings.Repeat(pieces[r.IntN(len(pieces))], r.IntN(200)))
		case 1:
			b.WriteByte(byte(r.IntN(256)))
		default:
			b.WriteString(pieces[r.IntN(len(pieces))])
		}
	}
	return b.String()
}

// TestZipNamerProperties names 10,000 random hostile names and checks every
// path is safe and no two collide on any file system.
func TestZipNamerProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	z := NewZipNamer()
	owners := [][]string{nil, {"candidate", "1"}, {"Candidate", "1"}, {"contact", "2"}, {"../..", "/"}, {"", ""},
		{"cv.pdf"}, {"CON"}, {strings.Repeat("ö", 200)}, {"\xff", "\x00"}}
	var names []string
	files := map[string]string{}
	dirs := map[string]bool{}
	for i := range 10_000 {
		name := hostileName(r, names)
		names = append(names, name)
		owner := owners[r.IntN(len(owners))]
		p := z.Name(owner, name, fmt.Sprintf("id-%d", i))
		checkZipPath(t, p)
		k := folded(p)
		if q, dup := files[k]; dup {
			t.Fatalf("%q and %q collide", q, p)
		}
		files[k] = p
		if d, _, ok := strings.Cut(p, "/"); ok {
			dirs[folded(d)] = true
		}
	}
	for k, p := range files {
		require.False(t, dirs[k], "file %q has the name of a folder", p)
	}
}

func FuzzZipNamer(f *testing.F) {
	f.Add("candidate", "1234", "Résumé.pdf", "id")
	f.Add("..", "..", "../../etc/passwd", "../x")
	f.Add("", "", "", "")
	f.Add("CON", "\x00", "\xff\xfe.pdf", "tenants/1/a")
	f.Add("missing_files.csv", "", "missing_files.csv", "")
	f.Add(strings.Repeat("é", 100), "1", strings.Repeat("a", 1000)+".pdf", strings.Repeat("/", 20))
	f.Fuzz(func(t *testing.T, owner1, owner2, name, id string) {
		z := NewZipNamer()
		seen := map[string]string{}
		for _, owner := range [][]string{nil, {owner1, owner2}, {owner1}, nil, {owner1, owner2}, {owner1}, {name}} {
			for _, n := range []string{name, name, strings.ToUpper(name), owner1} {
				p := z.Name(owner, n, id)
				checkZipPath(t, p)
				k := folded(p)
				if q, dup := seen[k]; dup {
					t.Fatalf("%q and %q collide", q, p)
				}
				seen[k] = p
			}
		}
		ShouldStore(name, owner1)
	})
}

func TestShouldStore(t *testing.T) {
	for _, tc := range []struct {
		name, contentType string
		want              bool
	}{
		{"photo.JPG", "", true},
		{"photo.jpeg", "", true},
		{"scan.png", "", true},
		{"a.heic", "", true},
		{"a.avif", "", true},
		{"backup.tar.gz", "", true},
		{"x.7z", "", true},
		{"x.zst", "", true},
		{"cv.docx", "", true},
		{"sheet.xlsx", "", true},
		{"book.epub", "", true},
		{"talk.mp4", "", true},
		{"song.mp3", "", true},
		{"cv.pdf", "", true},
		{"cv", "application/pdf", true},
		{"cv.bin", "Application/PDF; charset=binary", true},
		{"image", "image/jpeg", true},
		{"clip", "video/quicktime", true},
		{"doc", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", true},
		{"doc", "application/vnd.oasis.opendocument.text", true},
		{"notes.txt", "text/plain", false},
		{"cv.doc", "application/msword", false},
		{"data.csv", "", false},
		{"img.bmp", "image/bmp", false},
		{"sound.wav", "audio/wav", false},
		{"pdf", "", false},
		{"", "", false},
		{"x.pdf.txt", "", false},
	} {
		require.Equal(t, tc.want, ShouldStore(tc.name, tc.contentType), "%q %q", tc.name, tc.contentType)
	}
}
