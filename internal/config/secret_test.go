package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

func TestSecret(t *testing.T) {
	s := Secret("hunter2")
	require.Equal(t, "hunter2", s.Reveal())
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10s", "%-10v"} {
		out := fmt.Sprintf(format, s)
		require.NotContains(t, out, "hunter2", format)
		require.NotContains(t, out, fmt.Sprintf("%x", "hunter2"), format)
		require.NotContains(t, out, fmt.Sprintf("%X", "hunter2"), format)
	}
	require.Equal(t, "[redacted]", fmt.Sprint(s))
	require.Equal(t, "[redacted]", fmt.Sprintf("%#v", s))
	require.Equal(t, "[redacted]", s.LogValue().String())
	j, err := json.Marshal(s)
	require.NoError(t, err)
	require.JSONEq(t, `"[redacted]"`, string(j))

	var empty Secret
	require.Equal(t, "", fmt.Sprint(empty))
	require.Equal(t, "", empty.LogValue().String())
	j, err = json.Marshal(empty)
	require.NoError(t, err)
	require.JSONEq(t, `""`, string(j))
}

// secretConfig returns a valid Config with every secret set to a value
// that the returned list holds, and the list.
func secretConfig(t *testing.T) (*Config, []string) {
	t.Helper()
	path := writeYAML(t, patch(validFile(), map[string]any{
		"files": map[string]any{"type": "s3", "fs": nil, "s3": map[string]any{
			"bucket": "f", "access_key_id": "AKIAFILES",
			"secret_access_key": "files-secret-key-6502", "session_token": "files-session-token-6809",
		}},
		"publish": map[string]any{"fs": nil},
		"staging": map[string]any{"backend": "s3", "s3": map[string]any{
			"bucket": "s", "access_key_id": "AKIASTAGING",
			"secret_access_key": "staging-secret-key-6800", "session_token": "staging-session-token-1802",
		}},
		"cluster": map[string]any{"replica_id": "exportd-0"},
		"smtp": map[string]any{
			"addr": "smtp.example.com:465", "from": "exports@example.com", "tls": "tls",
			"username": "exportd", "password": "smtp-password-8086",
		},
	}))
	c, err := loadAndValidate(path, map[string]string{
		"EXPORTD_PUBLISH_TYPE":                 "s3",
		"EXPORTD_PUBLISH_S3_BUCKET":            "p",
		"EXPORTD_PUBLISH_S3_ACCESS_KEY_ID":     "AKIAPUBLISH",
		"EXPORTD_PUBLISH_S3_SECRET_ACCESS_KEY": "publish-secret-key-z80",
		"EXPORTD_PUBLISH_S3_SESSION_TOKEN":     "publish-session-token-68000",
	})
	require.NoError(t, err)
	secrets := []string{
		testPGURL, "pg-password-31337", testLinkSecret,
		"files-secret-key-6502", "files-session-token-6809",
		"publish-secret-key-z80", "publish-session-token-68000",
		"staging-secret-key-6800", "staging-session-token-1802",
		"smtp-password-8086",
	}
	// Every secret of the Config is set, to one of secrets.
	v := reflect.ValueOf(c).Elem()
	for _, k := range keys {
		if k.typ == secretType {
			require.Contains(t, secrets, v.FieldByIndex(k.index).String(), k.path)
		}
	}
	return c, secrets
}

// TestRedaction prints, logs and encodes a whole Config and checks that no
// secret shows.
func TestRedaction(t *testing.T) {
	c, secrets := secretConfig(t)

	var outputs = map[string]string{}
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		outputs["fmt "+format] = fmt.Sprintf(format, c)
		outputs["fmt value "+format] = fmt.Sprintf(format, *c)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("config", "config", c, "postgres", c.Postgres, "url", c.Postgres.URL)
	outputs["slog json"] = buf.String()
	buf.Reset()
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "config", c, "publish", c.Publish, "secret", c.Publish.LinkSecret)
	outputs["slog text"] = buf.String()
	j, err := json.Marshal(c)
	require.NoError(t, err)
	outputs["json"] = string(j)
	y, err := yaml.Marshal(c)
	require.NoError(t, err)
	outputs["yaml"] = string(y)

	for name, out := range outputs {
		for _, s := range secrets {
			require.NotContains(t, out, s, name)
			require.NotContains(t, out, fmt.Sprintf("%x", s), name)
		}
		require.Contains(t, out, "redacted", name)
	}
	// The JSON log shows which secrets are set.
	require.Contains(t, outputs["slog json"], `"url":"[redacted]"`)
	require.Contains(t, outputs["slog json"], `"URL":"[redacted]"`)
	require.Contains(t, outputs["yaml"], "link_secret: '[redacted]'")
}
