package gen

import (
	"encoding/base64"
	"encoding/hex"
	"math"
	"math/big"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
)

// splitmix64 is a fast, well-mixing 64-bit hash step; it derives the streams
// of independent PCG generators from the seed and a few identifying numbers.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// newRand returns a generator determined by seed and parts alone, so that
// every (table, tenant) stream is reproducible whatever else was generated.
func newRand(seed int64, parts ...uint64) *rand.Rand {
	s := splitmix64(uint64(seed))
	for _, p := range parts {
		s = splitmix64(s ^ p)
	}
	return rand.New(rand.NewPCG(uint64(seed), s))
}

// Epoch of generated timestamps: the platform went live on this day, and
// generated activity spans about ten years from it.
var epochMicros = time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()

const spanMicros = int64(10 * 365 * 24 * time.Hour / time.Microsecond)

var (
	firstNames = []string{
		"James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
		"David", "Elizabeth", "William", "Susan", "Richard", "Jessica", "Joseph", "Sarah",
		"José", "Zoë", "François", "Ångström", "Łukasz", "Søren", "Björn", "Chloé",
		"Siobhán", "Nuño", "İlkay", "Đorđe", "Renée", "Noël", "Jürgen", "Małgorzata",
		"李", "王芳", "张伟", "佐藤", "さくら", "민준", "서연", "Ольга", "Дмитрий",
		"محمد", "فاطمة", "יוסף", "Nguyễn", "Thảo", "Αλέξανδρος", "Ελένη", "प्रिया",
		"O'Brien", "D'Angelo", "Mary-Jane", "Jean-Luc", "Anne Marie", "Ma'ayan",
		"Zoë 🌸", "Max 🚀", "👩‍💻 Ada",
	}
	lastNames = []string{
		"Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
		"Rodriguez", "Martinez", "Hernández", "López", "González", "Wilson", "Anderson",
		"Müller", "Schröder", "Øvergård", "Ðoković", "Çelik", "Şahin", "Nowak", "Wójcik",
		"山田", "鈴木", "王", "李", "김", "박", "Иванов", "Смирнова", "Κωνσταντίνου",
		"Trần", "Phạm", "Al-Farsi", "ben David", "van der Berg", "de la Cruz", "O'Neill",
		"Smith, Jr.", "St. John", "Nuñez-Ortega", "Ó Súilleabháin",
	}
	companyWords = []string{
		"Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne",
		"Tyrell", "Cyberdyne", "Soylent", "Wonka", "Aperture", "Massive Dynamic",
		"Nakatomi", "Oscorp", "Pied Piper", "Gringotts", "Monarch", "Blue Sun",
		"Société Générale de Café", "Müller & Söhne", "北京科技", "株式会社サンプル",
		"Ünïcödé Labs", "Tech \"Quoted\" Ltd", "Smith, Jones & Partners",
	}
	companySuffixes = []string{"Inc.", "LLC", "GmbH", "S.A.", "Ltd", "AG", "Corp", "BV", "KK", "S.à r.l.", "", "Group"}
	industries      = []string{"Software", "Finance", "Healthcare", "Retail", "Manufacturing", "Logistics", "Education", "Energy", "Media", "Hospitality", "Biotech", "Government"}
	jobTitles       = []string{
		"Software Engineer", "Senior Backend Engineer (Go)", "Data Scientist", "Product Manager",
		"Account Executive", "Head of People", "DevOps / SRE", "UX Designer", "Sales Development Rep",
		"Nurse (RN), Night shift", "Chef de partie", "Ingénieur logiciel", "ソフトウェアエンジニア",
		"Staff Engineer, \"Platform\"", "C++ Developer", "Recruiter", "CFO", "Warehouse Associate",
	}
	skills = []string{
		"Go", "PostgreSQL", "Kubernetes", "Python", "Java", "C#", "C++", "React", "SQL", "Excel",
		"Negotiation", "Leadership", "Français", "日本語", "Deutsch", "Sales, B2B", "\"Public\" speaking",
		"Data {science}", "Node.js", "AWS", "Rust", "Figma", "SAP/ERP", "Terraform",
	}
	cities = []string{
		"New York, NY", "London", "Berlin", "Paris", "São Paulo", "Zürich", "München", "Kraków",
		"東京", "Seoul", "Москва", "Tel Aviv", "Dubai", "Remote", "Montréal, QC", "Reykjavík",
	}
	countries  = []string{"US", "GB", "DE", "FR", "BR", "CH", "PL", "JP", "KR", "RU", "IL", "AE", "CA", "IS", "IN", "VN"}
	currencies = []string{"USD", "EUR", "GBP", "JPY", "CHF", "BRL", "PLN", "INR"}
	sources    = []string{"LinkedIn", "Referral", "Career site", "Indeed", "Agency", "Event", "Sourced", "Import (CSV)"}
	stages     = []string{"Applied", "Screening", "Phone interview", "On-site", "Offer", "Hired", "Rejected", "Withdrawn"}
	actions    = []string{"create", "update", "delete", "login", "logout", "export", "import", "merge", "view", "download", "share", "permission.change"}
	words      = strings.Fields(`the candidate has strong experience in distributed systems and would be a
		great fit for the team; she mentioned a notice period of three months and salary expectations
		above the band. follow up next week about references. interview feedback was positive overall
		but concerns were raised about communication. très motivé, disponible immédiatement. 非常に優秀。
		很有经验 great culture add remote only relocation possible visa sponsorship required
		résumé attached see portfolio link budget approved hiring manager wants another round`)
	userAgents = []string{
		"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
		"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
		"okhttp/4.12.0", "python-requests/2.31.0", "curl/8.5.0", "",
	}
	timeZones = []string{"UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "America/Sao_Paulo", "Asia/Kolkata", "Australia/Sydney"}
	locales   = []string{"en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR", "zh-Hans-CN", "he-IL"}
)

// hostile are values that break naive CSV writers, spreadsheets and parsers.
var hostile = []string{
	`=HYPERLINK("http://example.com/x","click me")`,
	`=1+1`,
	`+1 (555) 010-9999`,
	`-2+3+cmd|' /C calc'!A0`,
	`@SUM(1+1)*cmd|' /C calc'!A0`,
	"\t=tab then formula",
	"\r=cr then formula",
	"  leading and trailing spaces  ",
	" ",
	"",
	`"fully quoted"`,
	`he said "hi", then left`,
	`comma, separated, value`,
	"line one\nline two",
	"carriage\rreturn",
	"windows\r\nline end",
	"trailing newline\n",
	`\N`,
	`NULL`,
	`null`,
	`back\slash \\ and \n literally`,
	"zero\u200bwidth\u200bspaces",
	"\u202eright-to-left override txt.exe",
	"e\u0301 combining accent (NFD) vs \u00e9 (NFC)",
	"\ufeffbyte order mark",
	"🧑‍💻👨‍👩‍👧‍👦 emoji ZWJ sequences 🏳️‍🌈",
	"中文，全角逗号；“引号”",
	"ﷺ ﷽ wide arabic ligatures",
	"𝕌𝕟𝕚𝕔𝕠𝕕𝕖 astral plane 𐍈",
	"<script>alert('x')</script>",
	"Robert'); DROP TABLE students;--",
	"a\x01b\x1fc control characters",
	"\x7f delete char",
}

// pick returns a random element of s.
func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

// chance reports true with probability p.
func chance(r *rand.Rand, p float64) bool { return r.Float64() < p }

// maybeHostile returns a hostile value with probability p, else v.
func maybeHostile(r *rand.Rand, p float64, v string) string {
	if chance(r, p) {
		return pick(r, hostile)
	}
	return v
}

// nullable returns nil (SQL NULL) with probability pNull, "" with
// probability pEmpty, else v.
func nullable(r *rand.Rand, pNull, pEmpty float64, v string) any {
	x := r.Float64()
	switch {
	case x < pNull:
		return nil
	case x < pNull+pEmpty:
		return ""
	}
	return v
}

// truncRunes cuts s to at most n characters without splitting a rune.
func truncRunes(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}

// timestamp returns a time in the generated span, with microseconds.
func timestamp(r *rand.Rand) time.Time {
	return time.UnixMicro(epochMicros + r.Int64N(spanMicros)).UTC()
}

// tsAfter returns a time up to maxDays after t, with microseconds.
func tsAfter(r *rand.Rand, t time.Time, maxDays int) time.Time {
	return t.Add(time.Duration(r.Int64N(int64(maxDays)*86400e6+1)) * time.Microsecond)
}

func date(t time.Time) pgtype.Date {
	return pgtype.Date{Time: time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC), Valid: true}
}

// birthDate is a plausible date of birth, rarely an odd one: BC, year 1, or
// far in the future (data entry errors are real).
func birthDate(r *rand.Rand) any {
	switch x := r.IntN(1000); {
	case x < 100:
		return nil
	case x < 103:
		// Go year -43 is 44 BC.
		return pgtype.Date{Time: time.Date(-int(r.IntN(3000)), time.Month(1+r.IntN(12)), 1+r.IntN(28), 0, 0, 0, 0, time.UTC), Valid: true}
	case x < 105:
		return pgtype.Date{Time: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), Valid: true}
	case x < 106:
		return pgtype.Date{Time: time.Date(2999, 12, 31, 0, 0, 0, 0, time.UTC), Valid: true}
	}
	return pgtype.Date{Time: time.Date(1950+r.IntN(55), time.Month(1+r.IntN(12)), 1+r.IntN(28), 0, 0, 0, 0, time.UTC), Valid: true}
}

// cents returns c/100 as a numeric.
func cents(c int64) pgtype.Numeric {
	return pgtype.Numeric{Int: big.NewInt(c), Exp: -2, Valid: true}
}

// money returns a numeric(12,2) value between 0 and max units.
func money(r *rand.Rand, max int64) pgtype.Numeric { return cents(r.Int64N(max*100 + 1)) }

// interval returns a random interval mixing months, days and microseconds,
// sometimes negative.
func interval(r *rand.Rand) pgtype.Interval {
	iv := pgtype.Interval{Valid: true}
	switch r.IntN(5) {
	case 0:
		iv.Days = int32(r.IntN(120))
	case 1:
		iv.Months = int32(r.IntN(24))
	case 2:
		iv.Microseconds = r.Int64N(int64(72 * time.Hour / time.Microsecond))
	case 3:
		iv.Months, iv.Days, iv.Microseconds = int32(r.IntN(3)), int32(r.IntN(30)), r.Int64N(86400e6)
	default:
		iv.Days, iv.Microseconds = -int32(r.IntN(10)), -r.Int64N(3600e6)
	}
	return iv
}

// specialFloats are double precision values that break naive formatting.
var specialFloats = []float64{
	math.NaN(), math.Inf(1), math.Inf(-1), math.Copysign(0, -1), 0,
	math.SmallestNonzeroFloat64, -math.SmallestNonzeroFloat64, 2.2250738585072014e-308,
	math.MaxFloat64, -math.MaxFloat64, 1e300, 1e-300, 0.1, 1.0 / 3, 123456789012345678,
}

func float8(r *rand.Rand) any {
	switch x := r.IntN(100); {
	case x < 5:
		return nil
	case x < 12:
		return pick(r, specialFloats)
	}
	return float64(r.NormFloat64()*15) + 70 // the conversion prevents FMA fusion, which varies by platform
}

var specialFloat32s = []float32{
	float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.Copysign(0, -1)),
	math.SmallestNonzeroFloat32, math.MaxFloat32, 1e-38, 0.1,
}

func float4(r *rand.Rand) any {
	switch x := r.IntN(100); {
	case x < 5:
		return nil
	case x < 10:
		return pick(r, specialFloat32s)
	}
	return r.Float32()
}

func firstName(r *rand.Rand) string { return maybeHostile(r, 0.02, pick(r, firstNames)) }
func lastName(r *rand.Rand) string  { return maybeHostile(r, 0.02, pick(r, lastNames)) }

// asciiFold keeps ASCII letters of s, lower-cased, for e-mail local parts.
func asciiFold(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b.WriteRune(c)
		case c >= 'A' && c <= 'Z':
			b.WriteRune(c + 'a' - 'A')
		}
	}
	if b.Len() == 0 {
		return "x"
	}
	return b.String()
}

var domains = []string{"example.com", "example.org", "mail.example.net", "exämple.de", "例え.jp", "sub.domain.example.co.uk"}

func email(r *rand.Rand, first, last string, n int64) string {
	if chance(r, 0.01) {
		return pick(r, []string{"josé.müller@exämple.de", `"quoted,local"@example.com`, "+tag@example.com", "=cmd@example.com", " spaced@example.com "})
	}
	return asciiFold(first) + "." + asciiFold(last) + strconv.FormatInt(n, 10) + "@" + pick(r, domains)
}

func phone(r *rand.Rand) any {
	switch r.IntN(20) {
	case 0:
		return nil
	case 1:
		return ""
	case 2:
		return "+1 (555) 0" + strconv.Itoa(10+r.IntN(90)) + "-" + strconv.Itoa(1000+r.IntN(9000))
	case 3:
		return "=+44 20 7946 0" + strconv.Itoa(100+r.IntN(900))
	}
	return "+" + strconv.Itoa(1+r.IntN(98)) + " " + strconv.Itoa(100+r.IntN(900)) + " " + strconv.Itoa(1000000+r.IntN(9000000))
}

// sentence appends n words to b, sprinkled with punctuation that CSV writers
// must quote.
func sentence(r *rand.Rand, b []byte, n int) []byte {
	for i := range n {
		if i > 0 {
			switch r.IntN(40) {
			case 0:
				b = append(b, ", "...)
			case 1:
				b = append(b, "\n"...)
			case 2:
				b = append(b, "\r\n"...)
			case 3:
				b = append(b, ` "`...)
			case 4:
				b = append(b, `" `...)
			default:
				b = append(b, ' ')
			}
		}
		b = append(b, pick(r, words)...)
	}
	return append(b, '.')
}

// text returns some sentences of prose of about n words.
func text(r *rand.Rand, n int) string {
	b := make([]byte, 0, n*7)
	b = sentence(r, b, n)
	return string(b)
}

// bigNoteMin is the smallest "large" note: above PostgreSQL's TOAST
// threshold (about 2 kB) and above 8 kB, so the value is stored out of line.
const bigNoteMin = 8 * 1024

// incompressible returns a string of n or so bytes that pglz cannot
// compress, so PostgreSQL stores it out of line uncompressed.
func incompressible(r *rand.Rand, n int) string {
	raw := make([]byte, n)
	fillRandom(r, raw)
	switch r.IntN(3) {
	case 0:
		return base64.StdEncoding.EncodeToString(raw[:n*3/4])
	case 1:
		return hex.EncodeToString(raw[:n/2])
	default:
		// Random CJK ideographs and other BMP letters: 3 bytes each.
		var b strings.Builder
		b.Grow(n)
		for b.Len() < n {
			b.WriteRune(rune(0x4e00 + r.IntN(0x9fff-0x4e00)))
			if r.IntN(50) == 0 {
				b.WriteString("\r\n")
			}
		}
		return b.String()
	}
}

// fillRandom fills p with random bytes.
func fillRandom(r *rand.Rand, p []byte) {
	for i := 0; i < len(p); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

// notes returns a notes/body value: NULL, empty, short prose, hostile, or
// with probability pBig a large incompressible value that gets TOASTed.
func notes(r *rand.Rand, pBig float64) any {
	if chance(r, pBig) {
		return "BIG NOTE " + incompressible(r, bigNoteMin+r.IntN(32*1024))
	}
	switch x := r.IntN(100); {
	case x < 15:
		return nil
	case x < 20:
		return ""
	case x < 24:
		return pick(r, hostile)
	case x < 30:
		return text(r, 100+r.IntN(300))
	}
	return text(r, 3+r.IntN(40))
}

// textArray returns a text[] value; elements contain commas, quotes,
// braces and NULLs now and then; sometimes the array is empty or NULL.
func textArray(r *rand.Rand, from []string) any {
	switch r.IntN(20) {
	case 0:
		return nil
	case 1:
		return []pgtype.Text{}
	}
	n := 1 + r.IntN(5)
	a := make([]pgtype.Text, n)
	for i := range a {
		switch r.IntN(25) {
		case 0:
			a[i] = pgtype.Text{} // NULL element
		case 1:
			a[i] = pgtype.Text{String: pick(r, hostile), Valid: true}
		case 2:
			a[i] = pgtype.Text{String: "NULL", Valid: true}
		default:
			a[i] = pgtype.Text{String: pick(r, from), Valid: true}
		}
	}
	return a
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// customFields returns a jsonb value: SQL NULL, JSON null, {} or an object
// with nested values, unicode keys and numbers at the edges of the range.
func customFields(r *rand.Rand) any {
	switch r.IntN(20) {
	case 0:
		return nil
	case 1:
		return "null"
	case 2:
		return "{}"
	case 3:
		return `[1, "two", null, true, {"k": []}]`
	}
	b := make([]byte, 0, 256)
	b = append(b, `{"source_id": `...)
	b = strconv.AppendInt(b, r.Int64N(1e12), 10)
	b = append(b, `, "note": `...)
	b = appendJSONString(b, maybeHostile(r, 0.2, pick(r, words)))
	b = append(b, `, "clé été": `...)
	b = strconv.AppendFloat(b, r.NormFloat64()*1e6, 'g', -1, 64)
	if chance(r, 0.3) {
		b = append(b, `, "tags": [`...)
		b = appendJSONString(b, pick(r, skills))
		b = append(b, `, null, "a,b", "\"q\""], "nested": {"deep": {"deeper": [1.5e300, -0.0, 12345678901234567890]}}`...)
	}
	if chance(r, 0.2) {
		b = append(b, `, "remote": true, "visa": false, "emoji": "🚀", "ctrl": "\u0001\t"`...)
	}
	return string(append(b, '}'))
}

func randomBytes(r *rand.Rand, n int) []byte {
	p := make([]byte, n)
	fillRandom(r, p)
	return p
}

// bytea returns NULL, an empty value or a few random bytes.
func bytea(r *rand.Rand) any {
	switch r.IntN(10) {
	case 0, 1, 2, 3:
		return nil
	case 4:
		return []byte{}
	}
	return randomBytes(r, 1+r.IntN(300))
}

func uuidv4(r *rand.Rand) [16]byte {
	var u [16]byte
	fillRandom(r, u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

func uuidString(u [16]byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

func ipAddress(r *rand.Rand) any {
	switch r.IntN(10) {
	case 0:
		return nil
	case 1, 2:
		var a [16]byte
		fillRandom(r, a[:])
		a[0], a[1] = 0x20, 0x01
		return netip.AddrFrom16(a)
	}
	return netip.AddrFrom4([4]byte{byte(1 + r.IntN(223)), byte(r.IntN(256)), byte(r.IntN(256)), byte(1 + r.IntN(254))})
}
