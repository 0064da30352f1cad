package pgcluster

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidateSettings(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings map[string]string
		wantErr  string
	}{
		{"none", nil, ""},
		{"plain", map[string]string{"work_mem": "8MB", "log_min_messages": "debug1"}, ""},
		{"custom", map[string]string{"auto_explain.log_min_duration": "0"}, ""},
		{"quote in value", map[string]string{"application_name": `it's \ fine`}, ""},
		{"port", map[string]string{"port": "5432"}, "use Options.Port"},
		{"PORT", map[string]string{"PORT": "5432"}, "use Options.Port"},
		{"empty name", map[string]string{"": "1"}, "invalid setting name"},
		{"space in name", map[string]string{"work mem": "1"}, "invalid setting name"},
		{"equals in name", map[string]string{"a=b": "1"}, "invalid setting name"},
		{"newline", map[string]string{"work_mem": "1\nfsync=on"}, "line break"},
		{"carriage return", map[string]string{"work_mem": "1\r"}, "line break"},
		{"NUL", map[string]string{"work_mem": "1\x00"}, "NUL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateSettings(tc.settings)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestQuoteConf(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "''"},
		{"256MB", "'256MB'"},
		{"it's", "'it''s'"},
		{`a\b`, `'a\\b'`},
		{"%m [%p] ", "'%m [%p] '"},
	} {
		require.Equal(t, tc.want, quoteConf(tc.in), tc.in)
	}
}

func TestRenderConf(t *testing.T) {
	got := string(renderConf(5433, "/tmp/x/sock", map[string]string{
		"Shared_Buffers": "1GB",
		"work_mem":       "8MB",
	}))
	require.Contains(t, got, "\nport = '5433'\n")
	require.Contains(t, got, "\nunix_socket_directories = '/tmp/x/sock'\n")
	require.Contains(t, got, "\nwal_level = 'logical'\n")
	require.Contains(t, got, "\nshared_buffers = '1GB'\n", "extra settings override defaults whatever their case")
	require.NotContains(t, got, "256MB")
	require.Contains(t, got, "\nwork_mem = '8MB'\n")
	require.NotContains(t, got, "max_slot_wal_keep_size")
}

func TestLastLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"", 3, ""},
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"a\n\n", 1, "a"},
	} {
		require.Equal(t, tc.want, lastLines(tc.in, tc.n), "%q", tc.in)
	}
}
