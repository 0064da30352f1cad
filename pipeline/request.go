package pipeline

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// RequestVersion is the version of the request message format that exportd
// understands.
const RequestVersion = 1

// MaxRequestBytes is the largest request message accepted.
const MaxRequestBytes = 64 << 10

// Limits on request fields.
const (
	maxRequestIDLen = 128
	maxEmailLen     = 254
	// maxFutureSkew is how far in the future requested_at may be.
	maxFutureSkew = 24 * time.Hour
)

// minRequestedAt rejects zero and near-zero times, the usual sign of a
// producer that sends an unset timestamp.
var minRequestedAt = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Request is an export request, the JSON value of a message on the requests
// topic:
//
//	{"version": 1, "request_id": "r-1", "tenant_id": 42, "requested_by": 7,
//	 "requested_at": "2026-01-02T03:04:05Z", "notify_email": "a@example.com"}
//
// RequestID is the idempotency key. TenantID and RequestedBy are ids, sent as
// a JSON integer or string: an integer (42 or "42") is normalised to its
// decimal text, a UUID to lower case. RequestedAt is RFC 3339 and is held in
// UTC. NotifyEmail is optional and must be a bare address.
//
// Fields ParseRequest does not know are ignored, so that producers can add
// fields within version 1; a field whose name differs from a known one only
// in case is rejected (ReasonUnknownField), since it is surely a mistake.
type Request struct {
	Version     int       `json:"version"`
	RequestID   string    `json:"request_id"`
	TenantID    string    `json:"tenant_id"`
	RequestedBy string    `json:"requested_by"`
	RequestedAt time.Time `json:"requested_at"`
	NotifyEmail string    `json:"notify_email,omitempty"`
}

// Reasons a request message is refused: RequestError.Reason, the
// exportd-dlq-reason header of a dead-lettered message. They are stable
// machine codes.
const (
	ReasonEmpty          = "empty"           // no bytes, or only white space
	ReasonTooLarge       = "too_large"       // more than MaxRequestBytes
	ReasonNotJSON        = "not_json"        // not UTF-8, not JSON, or not a JSON object
	ReasonDuplicateKey   = "duplicate_key"   // an object, at any depth, repeats a key
	ReasonUnknownField   = "unknown_field"   // a known field's name in the wrong case
	ReasonWrongType      = "wrong_type"      // a field of the wrong JSON type (null included)
	ReasonMissingField   = "missing_field"   // a required field is absent
	ReasonUnknownVersion = "unknown_version" // version is not RequestVersion
	ReasonInvalidValue   = "invalid_value"   // a field of the right type with a bad value
)

// RequestError says why a request message was refused.
type RequestError struct {
	// Reason is one of the Reason* codes.
	Reason string
	// Detail is a human-readable explanation naming the field.
	Detail string
}

func (e *RequestError) Error() string {
	if e.Detail == "" {
		return "invalid request: " + e.Reason
	}
	return "invalid request: " + e.Reason + ": " + e.Detail
}

func reqErr(reason, format string, args ...any) *RequestError {
	return &RequestError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// AsRequestError returns the *RequestError in err's chain, if any.
func AsRequestError(err error) (*RequestError, bool) {
	var re *RequestError
	ok := errors.As(err, &re)
	return re, ok
}

// Request field names.
const (
	fieldVersion     = "version"
	fieldRequestID   = "request_id"
	fieldTenantID    = "tenant_id"
	fieldRequestedBy = "requested_by"
	fieldRequestedAt = "requested_at"
	fieldNotifyEmail = "notify_email"
)

var requestFields = []string{fieldVersion, fieldRequestID, fieldTenantID, fieldRequestedBy, fieldRequestedAt, fieldNotifyEmail}

// ParseRequest is ParseRequestAt(b, time.Now()).
func ParseRequest(b []byte) (Request, error) {
	return ParseRequestAt(b, time.Now())
}

// ParseRequestAt parses and validates a request message; now bounds
// requested_at (at most 24 hours ahead). Every error is a *RequestError.
//
// The checks run in this order, so that a message gets the most basic
// reason that applies: empty, too_large, not_json, duplicate_key,
// unknown_field, then version (missing_field or unknown_version: a message
// of another version may have other fields), then the other fields.
func ParseRequestAt(b []byte, now time.Time) (Request, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return Request{}, reqErr(ReasonEmpty, "message has no content")
	}
	if len(b) > MaxRequestBytes {
		return Request{}, reqErr(ReasonTooLarge, "message has %d bytes, limit %d", len(b), MaxRequestBytes)
	}
	if !utf8.Valid(b) {
		return Request{}, reqErr(ReasonNotJSON, "message is not valid UTF-8")
	}
	if err := checkJSON(b); err != nil {
		return Request{}, err
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		// checkJSON accepted it, so this is unexpected.
		return Request{}, reqErr(ReasonNotJSON, "%v", err)
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		for _, f := range requestFields {
			if k != f && strings.EqualFold(k, f) {
				return Request{}, reqErr(ReasonUnknownField, "field %q: did you mean %q?", shorten(k, 40), f)
			}
		}
	}

	var r Request
	var err error
	if r.Version, err = parseVersion(obj); err != nil {
		return Request{}, err
	}
	if r.RequestID, err = parseRequestID(obj); err != nil {
		return Request{}, err
	}
	if r.TenantID, err = parseID(obj, fieldTenantID); err != nil {
		return Request{}, err
	}
	if r.RequestedBy, err = parseID(obj, fieldRequestedBy); err != nil {
		return Request{}, err
	}
	if r.RequestedAt, err = parseRequestedAt(obj, now); err != nil {
		return Request{}, err
	}
	if r.NotifyEmail, err = parseEmail(obj); err != nil {
		return Request{}, err
	}
	return r, nil
}

// checkJSON checks that b is exactly one JSON object in which no object, at
// any depth, repeats a key (encoding/json would silently keep the last).
// Keys are compared after unescaping, so "a" and "\u0061" are the same key.
func checkJSON(b []byte) *RequestError {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return reqErr(ReasonNotJSON, "%v", err)
	}
	if tok != json.Delim('{') {
		return reqErr(ReasonNotJSON, "message is not a JSON object")
	}
	stack := []jsonFrame{{keys: map[string]struct{}{}}}
	for len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return reqErr(ReasonNotJSON, "%v", err)
		}
		top := &stack[len(stack)-1]
		if top.keys != nil && !top.haveKey {
			if tok == json.Delim('}') {
				stack = stack[:len(stack)-1]
				continue
			}
			k, ok := tok.(string)
			if !ok { // the decoder only yields a key or '}' here
				return reqErr(ReasonNotJSON, "unexpected %v in an object", tok)
			}
			if _, dup := top.keys[k]; dup {
				return reqErr(ReasonDuplicateKey, "key %q repeated in %s", shorten(k, 40), objectPath(stack))
			}
			top.keys[k] = struct{}{}
			top.key, top.haveKey = k, true
			continue
		}
		// tok is the value of top's key, an element of the array top, or
		// the end of the array top.
		top.haveKey = false
		switch tok {
		case json.Delim('{'):
			stack = append(stack, jsonFrame{keys: map[string]struct{}{}})
		case json.Delim('['):
			stack = append(stack, jsonFrame{})
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return reqErr(ReasonNotJSON, "data after the JSON object")
	}
	return nil
}

// jsonFrame is an open container of checkJSON's walk.
type jsonFrame struct {
	keys    map[string]struct{} // nil for an array
	key     string              // an object's current key
	haveKey bool                // the object's next token is the value of key
}

// objectPath names the innermost open object of stack, for errors: "the
// top-level object" or "object a.b[].c".
func objectPath(stack []jsonFrame) string {
	if len(stack) == 1 {
		return "the top-level object"
	}
	var sb strings.Builder
	for i, f := range stack[:len(stack)-1] {
		if f.keys == nil {
			sb.WriteString("[]")
			continue
		}
		if i > 0 {
			sb.WriteByte('.')
		}
		sb.WriteString(shorten(f.key, 40))
	}
	return "object " + sb.String()
}

// jsonKind names the JSON type of a raw value, for errors.
func jsonKind(raw json.RawMessage) string {
	switch raw[0] {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

func parseVersion(obj map[string]json.RawMessage) (int, error) {
	raw, ok := obj[fieldVersion]
	if !ok {
		return 0, reqErr(ReasonMissingField, "field version is required")
	}
	if kind := jsonKind(raw); kind != "number" {
		return 0, reqErr(ReasonUnknownVersion, "version is a %s, want the number %d", kind, RequestVersion)
	}
	v, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil || v != RequestVersion {
		return 0, reqErr(ReasonUnknownVersion, "version %s, want %d", shorten(string(raw), 40), RequestVersion)
	}
	return int(v), nil
}

func requiredString(obj map[string]json.RawMessage, field string) (string, error) {
	raw, ok := obj[field]
	if !ok {
		return "", reqErr(ReasonMissingField, "field %s is required", field)
	}
	if kind := jsonKind(raw); kind != "string" {
		return "", reqErr(ReasonWrongType, "%s is a %s, want a string", field, kind)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", reqErr(ReasonWrongType, "%s: %v", field, err)
	}
	return s, nil
}

func parseRequestID(obj map[string]json.RawMessage) (string, error) {
	s, err := requiredString(obj, fieldRequestID)
	if err != nil {
		return "", err
	}
	if len(s) == 0 || len(s) > maxRequestIDLen {
		return "", reqErr(ReasonInvalidValue, "request_id has %d characters, want 1 to %d", len(s), maxRequestIDLen)
	}
	for i := 0; i < len(s); i++ {
		if !isRequestIDByte(s[i]) {
			return "", reqErr(ReasonInvalidValue, "request_id %q: character %q not allowed (want A-Z a-z 0-9 . _ : -)", shorten(s, 40), s[i])
		}
	}
	return s, nil
}

func isRequestIDByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == ':' || c == '-'
}

// parseID parses a tenant or user id: a JSON integer, or a string holding an
// integer or a UUID.
func parseID(obj map[string]json.RawMessage, field string) (string, error) {
	raw, ok := obj[field]
	if !ok {
		return "", reqErr(ReasonMissingField, "field %s is required", field)
	}
	switch kind := jsonKind(raw); kind {
	case "number":
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return "", reqErr(ReasonInvalidValue, "%s %s is not a 64-bit integer", field, shorten(string(raw), 40))
		}
		return strconv.FormatInt(n, 10), nil
	case "string":
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", reqErr(ReasonWrongType, "%s: %v", field, err)
		}
		if id, ok := NormalizeID(s); ok {
			return id, nil
		}
		return "", reqErr(ReasonInvalidValue, "%s %q is neither an integer nor a UUID", field, shorten(s, 40))
	default:
		return "", reqErr(ReasonWrongType, "%s is a %s, want an integer or a string", field, kind)
	}
}

// NormalizeID returns the canonical text of a tenant or user id: the decimal
// text of a 64-bit integer ("0042" gives "42"), or a UUID in the
// 8-4-4-4-12 hex form in lower case. It reports false for anything else.
func NormalizeID(s string) (string, bool) {
	if s == "" {
		return "", false
	}
	if isUUID(s) {
		return strings.ToLower(s), true
	}
	if s[0] == '+' {
		return "", false // ParseInt accepts a plus sign; ids do not have one
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return "", false
	}
	return strconv.FormatInt(n, 10), true
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

func parseRequestedAt(obj map[string]json.RawMessage, now time.Time) (time.Time, error) {
	s, err := requiredString(obj, fieldRequestedAt)
	if err != nil {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, reqErr(ReasonInvalidValue, "requested_at %q is not an RFC 3339 time", shorten(s, 40))
	}
	t = t.UTC()
	if t.Before(minRequestedAt) {
		return time.Time{}, reqErr(ReasonInvalidValue, "requested_at %s is before %s", s, minRequestedAt.Format(time.DateOnly))
	}
	if t.After(now.Add(maxFutureSkew)) {
		return time.Time{}, reqErr(ReasonInvalidValue, "requested_at %s is more than %s in the future", s, maxFutureSkew)
	}
	return t, nil
}

func parseEmail(obj map[string]json.RawMessage) (string, error) {
	raw, ok := obj[fieldNotifyEmail]
	if !ok {
		return "", nil
	}
	switch kind := jsonKind(raw); kind {
	case "null":
		return "", nil
	case "string":
	default:
		return "", reqErr(ReasonWrongType, "notify_email is a %s, want a string", kind)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", reqErr(ReasonWrongType, "notify_email: %v", err)
	}
	if s == "" {
		return "", nil
	}
	if len(s) > maxEmailLen {
		return "", reqErr(ReasonInvalidValue, "notify_email has %d bytes, limit %d", len(s), maxEmailLen)
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", reqErr(ReasonInvalidValue, "notify_email %q: %v", shorten(s, 60), err)
	}
	if a.Name != "" || a.Address != s {
		return "", reqErr(ReasonInvalidValue, "notify_email %q is not a bare address (want e.g. user@example.com)", shorten(s, 60))
	}
	return s, nil
}

// shorten shortens s to at most n bytes (on a rune boundary) for messages.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
