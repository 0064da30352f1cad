package config

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func parseFlags(t *testing.T, args ...string) *Flags {
	t.Helper()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	f := RegisterFlags(fs)
	require.NoError(t, fs.Parse(args))
	return f
}

func TestFlagsOverride(t *testing.T) {
	path := writeYAML(t, patch(validFile(), map[string]any{
		"log_level": "debug",
		"state_dir": "/from/file",
		"http":      map[string]any{"addr": "127.0.0.1:9000"},
	}))
	env := map[string]string{"EXPORTD_LOG_LEVEL": "error", "EXPORTD_POSTGRES_URL": "postgres://env"}
	f := parseFlags(t, "-config", path, "-log-level", "warn", "-http-addr", ":9200", "-pg-url", "postgres://flag")
	require.Equal(t, path, f.ConfigPath())

	// The file's postgres.url and the environment's would conflict with
	// nothing: the environment overrides the file, the flag both.
	c, err := f.Load(envMap(env))
	require.NoError(t, err)
	require.Equal(t, "warn", c.LogLevel, "flag over environment over file")
	require.Equal(t, "/from/file", c.StateDir, "not given as a flag")
	require.Equal(t, ":9200", c.HTTP.Addr)
	require.Equal(t, "http://localhost:9200", c.HTTP.PublicURL, "derived from the flag")
	require.Equal(t, "postgres://flag", c.Postgres.URL.Reveal())
}

func TestFlagsNotGiven(t *testing.T) {
	path := writeYAML(t, validFile())
	f := parseFlags(t, "-config", path)
	c, err := f.Load(nil)
	require.NoError(t, err)
	want, err := loadAndValidate(path, nil)
	require.NoError(t, err)
	want.src = c.src
	require.Equal(t, want, c)
}

func TestFlagsErrors(t *testing.T) {
	path := writeYAML(t, validFile())

	_, err := parseFlags(t, "-config", path, "-log-level", "loud").Load(nil)
	requireOneError(t, err, "flag -log-level", "log_level", `"loud" is not one of`)

	_, err = parseFlags(t, "-config", path, "-state-dir", "").Load(nil)
	requireOneError(t, err, "flag -state-dir", "state_dir", "required")

	_, err = parseFlags(t, "-config", path, "-http-addr", "nowhere").Load(nil)
	requireOneError(t, err, "flag -http-addr", "http.addr", `"nowhere": missing port in address`)

	// A load error stops before the flags.
	_, err = parseFlags(t, "-config", filepath.Join(t.TempDir(), "missing.yaml"), "-log-level", "loud").Load(nil)
	require.ErrorContains(t, err, "no such file")
}

// TestFlagsPGURLOverFile checks that -pg-url replaces a postgres.url read
// from postgres.url_file, and that a problem with it is reported as the
// flag's.
func TestFlagsPGURLOverFile(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "pg")
	require.NoError(t, os.WriteFile(secret, []byte(testPGURL+"\n"), 0o600))
	path := writeYAML(t, patch(validFile(), map[string]any{"postgres": map[string]any{"url": nil, "url_file": secret}}))

	c, err := parseFlags(t, "-config", path, "-pg-url", "postgres://flag").Load(nil)
	require.NoError(t, err)
	require.Equal(t, "postgres://flag", c.Postgres.URL.Reveal())

	_, err = parseFlags(t, "-config", path, "-pg-url", "").Load(nil)
	requireOneError(t, err, "flag -pg-url", "postgres.url", "required")
}

func TestFlagsUsage(t *testing.T) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	RegisterFlags(fs)
	fs.PrintDefaults()
	for _, want := range []string{
		"-config file", "-state-dir directory", "-http-addr host:port", "-pg-url string",
		"overrides log_level and EXPORTD_LOG_LEVEL", "(default 127.0.0.1:8080)", "process list",
	} {
		require.Contains(t, out.String(), want)
	}
}

// TestFlagsApplyHandBuilt applies flags to a Config built in code.
func TestFlagsApplyHandBuilt(t *testing.T) {
	c := Default()
	parseFlags(t, "-http-addr", "127.0.0.1:1234").Apply(c)
	require.Equal(t, "127.0.0.1:1234", c.HTTP.Addr)
	require.Equal(t, "http://127.0.0.1:1234", c.HTTP.PublicURL)
}
