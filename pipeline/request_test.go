package pipeline

import (
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var reqNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

const validRequest = `{"version":1,"request_id":"req-1","tenant_id":42,"requested_by":"7","requested_at":"2026-06-01T11:00:00Z","notify_email":"admin@example.com"}`

// withField returns validRequest with field set to the raw JSON value, or
// removed if raw is "".
func withField(t testing.TB, field, raw string) string {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(validRequest), &m))
	if raw == "" {
		delete(m, field)
	} else {
		m[field] = json.RawMessage(raw)
	}
	b, err := json.Marshal(m)
	require.NoError(t, err)
	return string(b)
}

func TestParseRequestValid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Request
	}{
		{
			name: "reference ids as numbers and strings",
			in:   validRequest,
			want: Request{Version: 1, RequestID: "req-1", TenantID: "42", RequestedBy: "7",
				RequestedAt: time.Date(2026, 6, 1, 11, 0, 0, 0, time.UTC), NotifyEmail: "admin@example.com"},
		},
		{
			name: "uuid ids are lower-cased, leading zeros dropped, offset times in UTC",
			in: `{"version":1,"request_id":"A.b_c:d-9","tenant_id":"0A1B2C3D-0000-4000-8000-00000000ABCD",` +
				`"requested_by":"0042","requested_at":"2026-06-01T13:30:00.123456789+02:00"}`,
			want: Request{Version: 1, RequestID: "A.b_c:d-9", TenantID: "0a1b2c3d-0000-4000-8000-00000000abcd", RequestedBy: "42",
				RequestedAt: time.Date(2026, 6, 1, 11, 30, 0, 123456789, time.UTC)},
		},
		{
			name: "unknown fields are ignored, null or empty email is none",
			in:   `{"version":1,"request_id":"r","tenant_id":"1","requested_by":2,"requested_at":"2026-06-01T00:00:00Z","notify_email":null,"trace":{"id":[1,{"x":null}]}}`,
			want: Request{Version: 1, RequestID: "r", TenantID: "1", RequestedBy: "2", RequestedAt: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)},
		},
		{
			name: "empty email, requested_at exactly 24h ahead, white space around",
			in:   " \n" + `{"version":1,"request_id":"r","tenant_id":-3,"requested_by":0,"requested_at":"2026-06-02T12:00:00Z","notify_email":""}` + "\n",
			want: Request{Version: 1, RequestID: "r", TenantID: "-3", RequestedBy: "0", RequestedAt: time.Date(2026, 6, 2, 12, 0, 0, 0, time.UTC)},
		},
		{
			name: "pretty-printed",
			in:   "{\n  \"version\" : 1 ,\n\t\"request_id\": \"r\",\r\n  \"tenant_id\":  7 ,\"requested_by\" :\"8\" , \"requested_at\":\"2026-06-01T00:00:00Z\"\n}\n",
			want: Request{Version: 1, RequestID: "r", TenantID: "7", RequestedBy: "8", RequestedAt: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)},
		},
		{
			name: "same key in different objects",
			in:   `{"version":1,"request_id":"r","tenant_id":1,"requested_by":2,"requested_at":"2026-06-01T00:00:00Z","a":{"version":2},"b":[{"a":1},{"a":2}]}`,
			want: Request{Version: 1, RequestID: "r", TenantID: "1", RequestedBy: "2", RequestedAt: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)},
		},
		{
			name: "escaped strings",
			in:   `{"version":1,"request_id":"\u0072","tenant_id":"\u0031","requested_by":2,"requested_at":"2026-06-01T00:00:00Z","notify_email":"b\u006fb@example.com"}`,
			want: Request{Version: 1, RequestID: "r", TenantID: "1", RequestedBy: "2", RequestedAt: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC), NotifyEmail: "bob@example.com"},
		},
		{
			name: "exactly MaxRequestBytes",
			in:   padTo(`{"version":1,"request_id":"r","tenant_id":1,"requested_by":2,"requested_at":"2026-06-01T00:00:00Z","pad":"`, `"}`, MaxRequestBytes),
			want: Request{Version: 1, RequestID: "r", TenantID: "1", RequestedBy: "2", RequestedAt: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRequestAt([]byte(tt.in), reqNow)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func padTo(head, tail string, n int) string {
	return head + strings.Repeat("x", n-len(head)-len(tail)) + tail
}

func TestParseRequestInvalid(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		reason string
	}{
		{"empty", "", ReasonEmpty},
		{"white space only", " \r\n\t", ReasonEmpty},

		{"one byte too large", padTo(`{"version":1,"pad":"`, `"}`, MaxRequestBytes+1), ReasonTooLarge},
		{"huge garbage is too large before not json", strings.Repeat("\xff", 1<<20), ReasonTooLarge},

		{"plain text", "please export my data", ReasonNotJSON},
		{"binary garbage", "\x00\x01\x02\xfe\xff\x80", ReasonNotJSON},
		{"invalid UTF-8 in a string", "{\"version\":1,\"request_id\":\"r\xc3\x28\"}", ReasonNotJSON},
		{"array", `[{"version":1}]`, ReasonNotJSON},
		{"string", `"{\"version\":1}"`, ReasonNotJSON},
		{"number", `1`, ReasonNotJSON},
		{"null", `null`, ReasonNotJSON},
		{"truncated", `{"version":1,"request_id":"r"`, ReasonNotJSON},
		{"trailing comma", `{"version":1,}`, ReasonNotJSON},
		{"two objects", `{"version":1} {"version":1}`, ReasonNotJSON},
		{"trailing garbage", `{"version":1}x`, ReasonNotJSON},
		{"single quotes", `{'version':1}`, ReasonNotJSON},
		{"BOM", "\xef\xbb\xbf" + validRequest, ReasonNotJSON},

		{"duplicate top-level key", `{"version":1,"request_id":"a","request_id":"b"}`, ReasonDuplicateKey},
		{"duplicate key, escaped spelling", `{"version":1,"tenant_id":1,"tenant\u005fid":2}`, ReasonDuplicateKey},
		{"duplicate key in nested object", `{"version":1,"x":{"y":{"a":1,"a":1}}}`, ReasonDuplicateKey},
		{"duplicate key in object in array", `{"x":[1,[{"a":1,"b":2,"a":3}]],"version":1}`, ReasonDuplicateKey},
		{"duplicate version key is checked before version", `{"version":2,"version":1}`, ReasonDuplicateKey},

		{"known field in other case", withField(t, "Tenant_ID", `1`), ReasonUnknownField},
		{"known field in upper case", strings.Replace(validRequest, `"request_id"`, `"REQUEST_ID"`, 1), ReasonUnknownField},

		{"missing version", withField(t, "version", ""), ReasonMissingField},
		{"missing request_id", withField(t, "request_id", ""), ReasonMissingField},
		{"missing tenant_id", withField(t, "tenant_id", ""), ReasonMissingField},
		{"missing requested_by", withField(t, "requested_by", ""), ReasonMissingField},
		{"missing requested_at", withField(t, "requested_at", ""), ReasonMissingField},
		{"empty object", `{}`, ReasonMissingField},

		{"version 2", withField(t, "version", `2`), ReasonUnknownVersion},
		{"version 0", withField(t, "version", `0`), ReasonUnknownVersion},
		{"version -1", withField(t, "version", `-1`), ReasonUnknownVersion},
		{"version as string", withField(t, "version", `"1"`), ReasonUnknownVersion},
		{"version 1.0", withField(t, "version", `1.0`), ReasonUnknownVersion},
		{"version 1e0", withField(t, "version", `1e0`), ReasonUnknownVersion},
		{"version null", withField(t, "version", `null`), ReasonUnknownVersion},
		{"version huge", withField(t, "version", `100000000000000000000001`), ReasonUnknownVersion},
		{"version 2 with another schema", `{"version":2,"id":"x"}`, ReasonUnknownVersion},

		{"request_id number", withField(t, "request_id", `5`), ReasonWrongType},
		{"request_id null", withField(t, "request_id", `null`), ReasonWrongType},
		{"tenant_id boolean", withField(t, "tenant_id", `true`), ReasonWrongType},
		{"tenant_id object", withField(t, "tenant_id", `{"id":1}`), ReasonWrongType},
		{"tenant_id null", withField(t, "tenant_id", `null`), ReasonWrongType},
		{"requested_by array", withField(t, "requested_by", `[7]`), ReasonWrongType},
		{"requested_at number", withField(t, "requested_at", `1767225600`), ReasonWrongType},
		{"notify_email number", withField(t, "notify_email", `5`), ReasonWrongType},
		{"notify_email list", withField(t, "notify_email", `["a@example.com"]`), ReasonWrongType},

		{"request_id empty", withField(t, "request_id", `""`), ReasonInvalidValue},
		{"request_id too long", withField(t, "request_id", `"`+strings.Repeat("a", 129)+`"`), ReasonInvalidValue},
		{"request_id with space", withField(t, "request_id", `"a b"`), ReasonInvalidValue},
		{"request_id with slash", withField(t, "request_id", `"../etc"`), ReasonInvalidValue},
		{"request_id non-ASCII", withField(t, "request_id", `"réq"`), ReasonInvalidValue},
		{"request_id NUL", withField(t, "request_id", `"a\u0000b"`), ReasonInvalidValue},
		{"tenant_id name", withField(t, "tenant_id", `"acme"`), ReasonInvalidValue},
		{"tenant_id empty", withField(t, "tenant_id", `""`), ReasonInvalidValue},
		{"tenant_id fraction", withField(t, "tenant_id", `4.2`), ReasonInvalidValue},
		{"tenant_id exponent", withField(t, "tenant_id", `1e3`), ReasonInvalidValue},
		{"tenant_id beyond int64", withField(t, "tenant_id", `9223372036854775808`), ReasonInvalidValue},
		{"tenant_id string beyond int64", withField(t, "tenant_id", `"9223372036854775808"`), ReasonInvalidValue},
		{"tenant_id plus sign", withField(t, "tenant_id", `"+5"`), ReasonInvalidValue},
		{"tenant_id padded", withField(t, "tenant_id", `" 5"`), ReasonInvalidValue},
		{"tenant_id bad uuid", withField(t, "tenant_id", `"0a1b2c3d-0000-4000-8000-00000000abcg"`), ReasonInvalidValue},
		{"tenant_id uuid without dashes", withField(t, "tenant_id", `"0a1b2c3d000040008000000000000abc"`), ReasonInvalidValue},
		{"requested_by float", withField(t, "requested_by", `7.5`), ReasonInvalidValue},
		{"requested_at words", withField(t, "requested_at", `"yesterday"`), ReasonInvalidValue},
		{"requested_at date only", withField(t, "requested_at", `"2026-06-01"`), ReasonInvalidValue},
		{"requested_at no zone", withField(t, "requested_at", `"2026-06-01T00:00:00"`), ReasonInvalidValue},
		{"requested_at over 24h ahead", withField(t, "requested_at", `"2026-06-02T12:00:01Z"`), ReasonInvalidValue},
		{"requested_at zero time", withField(t, "requested_at", `"0001-01-01T00:00:00Z"`), ReasonInvalidValue},
		{"notify_email not an address", withField(t, "notify_email", `"not an email"`), ReasonInvalidValue},
		{"notify_email with name", withField(t, "notify_email", `"Bob <bob@example.com>"`), ReasonInvalidValue},
		{"notify_email in brackets", withField(t, "notify_email", `"<bob@example.com>"`), ReasonInvalidValue},
		{"notify_email two addresses", withField(t, "notify_email", `"a@example.com, b@example.com"`), ReasonInvalidValue},
		{"notify_email header injection", withField(t, "notify_email", `"a@example.com\r\nBcc: x@example.com"`), ReasonInvalidValue},
		{"notify_email padded", withField(t, "notify_email", `" a@example.com"`), ReasonInvalidValue},
		{"notify_email too long", withField(t, "notify_email", `"`+strings.Repeat("a", 250)+`@example.com"`), ReasonInvalidValue},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRequestAt([]byte(tt.in), reqNow)
			require.Error(t, err)
			re, ok := AsRequestError(err)
			require.True(t, ok, "error %v is not a *RequestError", err)
			require.Equal(t, tt.reason, re.Reason, "detail: %s", re.Detail)
			require.NotEmpty(t, re.Detail)
			require.Contains(t, err.Error(), tt.reason)
			require.LessOrEqual(t, len(re.Detail), 1024, "details stay short")
		})
		seen[tt.reason] = true
	}
	for _, r := range allReasons {
		require.True(t, seen[r], "reason %s is tested", r)
	}
}

var allReasons = []string{
	ReasonEmpty, ReasonTooLarge, ReasonNotJSON, ReasonDuplicateKey, ReasonUnknownField,
	ReasonWrongType, ReasonMissingField, ReasonUnknownVersion, ReasonInvalidValue,
}

func TestParseRequestDetailNamesTheProblem(t *testing.T) {
	for in, want := range map[string]string{
		`{"version":1,"x":[{"a":1,"a":2}]}`:                    `key "a" repeated in object x[]`,
		`{"version":1,"x":{"y":{"a":1,"a":2}}}`:                `key "a" repeated in object x.y`,
		`{"version":1,"version":1}`:                            `key "version" repeated in the top-level object`,
		withField(t, "tenant_id", `"acme"`):                    `tenant_id "acme"`,
		withField(t, "version", `3`):                           "version 3, want 1",
		withField(t, "requested_by", ""):                       "requested_by",
		withField(t, "Notify_Email", `"a@b.c"`):                `did you mean "notify_email"`,
		withField(t, "requested_at", `"2027-01-01T00:00:00Z"`): "in the future",
	} {
		_, err := ParseRequestAt([]byte(in), reqNow)
		require.ErrorContains(t, err, want, "input %s", in)
	}
}

func TestParseRequestUsesClock(t *testing.T) {
	// requested_at far in the future of reqNow is fine for ParseRequest,
	// which uses the current time, as long as it is within a day of it.
	in := withField(t, "requested_at", `"`+time.Now().Add(time.Hour).UTC().Format(time.RFC3339)+`"`)
	_, err := ParseRequest([]byte(in))
	require.NoError(t, err)
	_, err = ParseRequestAt([]byte(in), time.Now().Add(-48*time.Hour))
	require.Error(t, err)
}

func TestNormalizeID(t *testing.T) {
	for in, want := range map[string]string{
		"42": "42", "0042": "42", "-1": "-1", "0": "0", "9223372036854775807": "9223372036854775807",
		"0A1B2C3D-0000-4000-8000-00000000ABCD": "0a1b2c3d-0000-4000-8000-00000000abcd",
	} {
		got, ok := NormalizeID(in)
		require.True(t, ok, in)
		require.Equal(t, want, got)
	}
	for _, in := range []string{"", "+1", " 1", "1 ", "0x10", "1_000", "abc", "0a1b2c3d-0000-4000-8000-00000000abc", "{0a1b2c3d-0000-4000-8000-00000000abcd}"} {
		_, ok := NormalizeID(in)
		require.False(t, ok, in)
	}
}

var requestIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// FuzzParseRequest checks that ParseRequestAt never panics, refuses only
// with a known reason, and that what it accepts is normalised and survives
// a round trip through JSON.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(validRequest))
	f.Add([]byte(`{"version":1,"request_id":"r","tenant_id":"0A1B2C3D-0000-4000-8000-00000000ABCD","requested_by":"0042","requested_at":"2026-06-01T13:30:00.5+02:00","x":[{}]}`))
	f.Add([]byte(`{"version":1,"request_id":"a","request_id":"b"}`))
	f.Add([]byte(`{"version":1,"x":[1,[{"a":1,"b":2,"a":3}]]}`))
	f.Add([]byte(`{"version":"1"}`))
	f.Add([]byte(`{"version":1,"tenant_id":1e3}`))
	f.Add([]byte(`{"version":1,"notify_email":"Bob <bob@example.com>"}`))
	f.Add([]byte("\x00\xff"))
	f.Add([]byte(""))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequestAt(b, reqNow)
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("error %v (%T) is not a *RequestError", err, err)
			}
			if !slices.Contains(allReasons, re.Reason) {
				t.Fatalf("unknown reason %q", re.Reason)
			}
			if re.Detail == "" {
				t.Fatalf("reason %s without detail", re.Reason)
			}
			return
		}
		if r.Version != RequestVersion || !requestIDPattern.MatchString(r.RequestID) {
			t.Fatalf("accepted bad version or request id: %+v", r)
		}
		for _, id := range []string{r.TenantID, r.RequestedBy} {
			if n, ok := NormalizeID(id); !ok || n != id {
				t.Fatalf("id %q is not normalised (%q, %v)", id, n, ok)
			}
		}
		if r.RequestedAt.Location() != time.UTC || r.RequestedAt.After(reqNow.Add(24*time.Hour)) {
			t.Fatalf("bad requested_at %v", r.RequestedAt)
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		// Accepted input decodes the same with encoding/json.
		var std struct {
			RequestID   string `json:"request_id"`
			NotifyEmail string `json:"notify_email"`
		}
		if err := json.Unmarshal(b, &std); err != nil || std.RequestID != r.RequestID || std.NotifyEmail != r.NotifyEmail {
			t.Fatalf("encoding/json disagrees: %+v, %v; got %+v", std, err, r)
		}
		enc, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := ParseRequestAt(enc, reqNow)
		if err != nil {
			t.Fatalf("round trip of %s: %v", enc, err)
		}
		if !r2.RequestedAt.Equal(r.RequestedAt) {
			t.Fatalf("round trip changed requested_at: %v != %v", r2.RequestedAt, r.RequestedAt)
		}
		r2.RequestedAt = r.RequestedAt
		if r2 != r {
			t.Fatalf("round trip changed the request: %+v != %+v", r2, r)
		}
	})
}
