package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
)

// redacted is what a set Secret prints as.
const redacted = "[redacted]"

// Secret is a configuration value that must not reach logs: a password, a
// key, or a connection string that may carry a password. Printed (with any
// fmt verb), logged with log/slog, or encoded as JSON, YAML or text, it shows
// "[redacted]", or "" when empty, so that whether it is set stays visible.
// Reveal returns the value itself.
type Secret string

var (
	_ slog.LogValuer = Secret("")
	_ json.Marshaler = Secret("")
	_ fmt.Formatter  = Secret("")
	_ fmt.GoStringer = Secret("")
)

// Reveal returns the secret's value, for the one place that uses it.
func (s Secret) Reveal() string { return string(s) }

// String returns "[redacted]", or "" if s is empty.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString is String, for the %#v verb.
func (s Secret) GoString() string { return s.String() }

// Format prints String with any verb: %x prints "[redacted]", not its hex,
// and %d is not a bad verb that shows the value.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, s.GoString())
		return
	}
	switch verb {
	case 'v', 's', 'q':
	default:
		verb = 's'
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), s.String())
}

// LogValue is String, for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText is String, for encoders of text (YAML, slog's text handler).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalJSON is String as a JSON string.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }
