package config

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/exportd/exportd/internal/refschema"
	"github.com/exportd/exportd/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Secrets of validFile, which no printed or logged configuration may show.
const (
	testPGURL      = "postgres://exportd:pg-password-31337@db:5432/platform"
	testLinkSecret = "link-secret-0123456789abcdef0123456789"
)

// validFile returns the content of a valid configuration file, as a map
// that tests change.
func validFile() map[string]any {
	return map[string]any{
		"state_dir": "/var/lib/exportd",
		"postgres":  map[string]any{"url": testPGURL},
		"files": map[string]any{
			"type": "fs",
			"fs":   map[string]any{"dir": "/srv/platform-files"},
		},
		"publish": map[string]any{
			"type":        "fs",
			"fs":          map[string]any{"dir": "/srv/exports"},
			"link_secret": testLinkSecret,
		},
	}
}

// patch merges p into m: a map value merges into the map at its key, a nil
// value deletes the key, and any other value replaces it.
func patch(m, p map[string]any) map[string]any {
	for k, v := range p {
		switch v := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			sub, ok := m[k].(map[string]any)
			if !ok {
				sub = map[string]any{}
			}
			m[k] = patch(sub, v)
		default:
			m[k] = v
		}
	}
	return m
}

// writeFile writes content to a file exportd.yaml in a new temporary
// directory and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "exportd.yaml")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func writeYAML(t *testing.T, m map[string]any) string {
	t.Helper()
	data, err := yaml.Marshal(m)
	require.NoError(t, err)
	return writeFile(t, string(data))
}

// envMap returns an env function that looks up m.
func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// loadAndValidate is what exportd does at start.
func loadAndValidate(path string, env map[string]string) (*Config, error) {
	c, err := Load(path, envMap(env))
	if err != nil {
		return nil, err
	}
	return c, c.Validate()
}

// errs splits a joined error into its messages.
func errs(err error) []string {
	if err == nil {
		return nil
	}
	var j interface{ Unwrap() []error }
	if errors.As(err, &j) {
		var msgs []string
		for _, e := range j.Unwrap() {
			msgs = append(msgs, errs(e)...)
		}
		return msgs
	}
	return []string{err.Error()}
}

// requireOneError checks that err is one error from where, naming key, and
// containing each of want.
func requireOneError(t *testing.T, err error, where, key string, want ...string) {
	t.Helper()
	msgs := errs(err)
	require.Len(t, msgs, 1, "errors: %q", msgs)
	msg := msgs[0]
	re := `^config: ` + regexp.QuoteMeta(where) + `(:\d+)?: ` + regexp.QuoteMeta(key) + `: `
	require.Regexp(t, re, msg)
	for _, w := range want {
		require.Contains(t, msg, w)
	}
	require.NotContains(t, msg, testPGURL)
	require.NotContains(t, msg, "pg-password-31337")
	require.NotContains(t, msg, testLinkSecret)
}

func TestLoadValid(t *testing.T) {
	path := writeYAML(t, validFile())
	c, err := loadAndValidate(path, nil)
	require.NoError(t, err)

	want := Default()
	want.StateDir = "/var/lib/exportd"
	want.Postgres.URL = testPGURL
	want.Files.Type = StoreFS
	want.Files.FS.Dir = "/srv/platform-files"
	want.Publish.Type = StoreFS
	want.Publish.FS.Dir = "/srv/exports"
	want.Publish.LinkSecret = testLinkSecret
	want.HTTP.PublicURL = "http://127.0.0.1:8080"
	want.Cluster.ReplicaID, err = os.Hostname()
	require.NoError(t, err)
	want.src = c.src
	require.Equal(t, want, c)
}

func TestDefaults(t *testing.T) {
	c := Default()
	require.Equal(t, "./exportd-state", c.StateDir)
	require.Equal(t, "info", c.LogLevel)
	require.Equal(t, "text", c.LogFormat)
	require.Equal(t, "127.0.0.1:8080", c.HTTP.Addr)
	require.Equal(t, 30*time.Second, c.HTTP.ShutdownGrace)
	require.Equal(t, refschema.Tables(), c.Postgres.Tables)
	require.Len(t, c.Postgres.Tables, 12)
	require.Equal(t, "tenant_id", c.Postgres.TenantColumn)
	require.Equal(t, "exportd", c.Postgres.Slot)
	require.Equal(t, "exportd", c.Postgres.Publication)
	require.Equal(t, 2, c.Postgres.CopyWorkers)
	require.Equal(t, 10*time.Second, c.Postgres.Heartbeat)
	require.Equal(t, 200*time.Millisecond, c.Postgres.FlushInterval)
	require.Equal(t, "", c.Export.Spec)
	require.Equal(t, 168*time.Hour, c.Export.LinkTTL)
	require.Equal(t, 1, c.Export.CompressionLevel)
	require.Equal(t, 2, c.Export.Concurrency)
	require.Equal(t, "exports", c.Export.Prefix)
	for _, s := range []S3{c.Files.S3, c.Publish.S3} {
		require.Equal(t, "when_supported", s.RequestChecksum)
		require.Equal(t, int64(8<<20), s.PartSize)
		require.Equal(t, 5, s.Concurrency)
	}
	require.Empty(t, c.Kafka.Brokers)
	require.Equal(t, "exportd", c.Kafka.Group)
	require.Equal(t, "exportd.requests", c.Kafka.RequestTopic)
	require.Equal(t, "exportd.results", c.Kafka.ResultTopic)
	require.Equal(t, "exportd.requests.dlq", c.Kafka.DeadLetterTopic)
	require.Equal(t, 60*time.Second, c.Kafka.FenceTimeout)
	require.Equal(t, 720*time.Hour, c.Kafka.ParkExpiry)
	require.Equal(t, 65536, c.Kafka.MaxMessageBytes)
	require.Equal(t, "starttls", c.SMTP.TLS)

	// The defaults are fresh each time.
	c.Postgres.Tables[0] = "changed"
	require.Equal(t, refschema.Tables(), Default().Postgres.Tables)
}

// TestLoadEnvOnly configures exportd from the environment alone.
func TestLoadEnvOnly(t *testing.T) {
	c, err := loadAndValidate("", map[string]string{
		"EXPORTD_POSTGRES_URL":          testPGURL,
		"EXPORTD_FILES_TYPE":            "s3",
		"EXPORTD_FILES_S3_BUCKET":       "platform-files",
		"EXPORTD_PUBLISH_TYPE":          "s3",
		"EXPORTD_PUBLISH_S3_BUCKET":     "exports",
		"EXPORTD_PUBLISH_S3_REGION":     "eu-west-1",
		"EXPORTD_PUBLISH_S3_SSE":        "aws:kms",
		"EXPORTD_KAFKA_BROKERS":         "k1:9092, k2:9092,",
		"EXPORTD_PUBLISH_S3_PATH_STYLE": "true",
	})
	require.NoError(t, err)
	require.Equal(t, Secret(testPGURL), c.Postgres.URL)
	require.Equal(t, "exports", c.Publish.S3.Bucket)
	require.Equal(t, "aws:kms", c.Publish.S3.SSE)
	require.True(t, c.Publish.S3.PathStyle)
	require.Equal(t, []string{"k1:9092", "k2:9092"}, c.Kafka.Brokers)
	require.Equal(t, "./exportd-state", c.StateDir)
}

func TestEnvOverridesFile(t *testing.T) {
	path := writeYAML(t, patch(validFile(), map[string]any{
		"log_level": "debug",
		"publish":   map[string]any{"type": "s3", "fs": nil, "s3": map[string]any{"bucket": "b"}},
		"kafka":     map[string]any{"brokers": []string{"k:9092"}},
		"http":      map[string]any{"addr": "127.0.0.1:9000"},
		"postgres":  map[string]any{"tables": []string{"public.users"}, "copy_workers": 3},
	}))
	c, err := loadAndValidate(path, map[string]string{
		"EXPORTD_LOG_LEVEL":               "warn",
		"EXPORTD_HTTP_ADDR":               "0.0.0.0:9100",
		"EXPORTD_HTTP_SHUTDOWN_GRACE":     "1m30s",
		"EXPORTD_POSTGRES_TABLES":         "public.jobs,public.tasks",
		"EXPORTD_POSTGRES_COPY_WORKERS":   "4",
		"EXPORTD_PUBLISH_S3_PART_SIZE":    "16777216",
		"EXPORTD_KAFKA_MAX_MESSAGE_BYTES": "1048576",
	})
	require.NoError(t, err)
	require.Equal(t, "warn", c.LogLevel)
	require.Equal(t, "0.0.0.0:9100", c.HTTP.Addr)
	require.Equal(t, "http://localhost:9100", c.HTTP.PublicURL, "derived from the overridden address")
	require.Equal(t, 90*time.Second, c.HTTP.ShutdownGrace)
	require.Equal(t, []string{"public.jobs", "public.tasks"}, c.Postgres.Tables)
	require.Equal(t, 4, c.Postgres.CopyWorkers)
	require.Equal(t, int64(16<<20), c.Publish.S3.PartSize)
	require.Equal(t, 1<<20, c.Kafka.MaxMessageBytes)
	require.Equal(t, slogLevel(t, "warn"), c.Level())
}

func TestEnvErrors(t *testing.T) {
	for _, tc := range []struct {
		env, val, key, want string
	}{
		{"EXPORTD_POSTGRES_COPY_WORKERS", "two", "postgres.copy_workers", `"two" is not an integer`},
		{"EXPORTD_PUBLISH_S3_PART_SIZE", "8MiB", "publish.s3.part_size", `"8MiB" is not an integer`},
		{"EXPORTD_HTTP_SHUTDOWN_GRACE", "30", "http.shutdown_grace", `"30" is not a duration such as 30s`},
		{"EXPORTD_KAFKA_PARK_EXPIRY", "30 days", "kafka.park_expiry", `"30 days" is not a duration`},
		{"EXPORTD_FILES_S3_PATH_STYLE", "yes", "files.s3.path_style", `"yes" is not true or false`},
	} {
		t.Run(tc.env, func(t *testing.T) {
			_, err := Load(writeYAML(t, validFile()), envMap(map[string]string{tc.env: tc.val}))
			requireOneError(t, err, "environment "+tc.env, tc.key, tc.want)
		})
	}
}

func TestEnvNames(t *testing.T) {
	names := EnvNames()
	require.Len(t, names, len(keys))
	seen := map[string]bool{}
	for _, n := range names {
		require.Regexp(t, `^EXPORTD_[A-Z0-9_]+$`, n)
		require.False(t, seen[n], "%s twice", n)
		seen[n] = true
	}
	for _, n := range []string{
		"EXPORTD_STATE_DIR",
		"EXPORTD_HTTP_ADDR",
		"EXPORTD_POSTGRES_URL",
		"EXPORTD_POSTGRES_URL_FILE",
		"EXPORTD_KAFKA_BROKERS",
		"EXPORTD_PUBLISH_TYPE",
		"EXPORTD_PUBLISH_LINK_SECRET",
		"EXPORTD_PUBLISH_S3_SECRET_ACCESS_KEY",
		"EXPORTD_PUBLISH_S3_SECRET_ACCESS_KEY_FILE",
		"EXPORTD_FILES_FS_DIR",
		"EXPORTD_SMTP_PASSWORD_FILE",
	} {
		require.True(t, seen[n], "no %s", n)
	}
	// Every key is settable from the environment.
	for _, k := range keys {
		env := map[string]string{}
		val := map[string]string{
			"[]string": "x", "time.Duration": "1s", "int": "1", "int64": "1", "bool": "true",
		}[k.typ.String()]
		if val == "" {
			val = "x"
		}
		env[k.env] = val
		c := Default()
		c.src = &sources{at: map[string]string{}}
		require.Empty(t, c.applyEnv(envMap(env)), k.env)
		require.Equal(t, "environment "+k.env, c.src.origin(k.path))
	}
}

func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	pgFile := write("pg", testPGURL+"\n")
	linkFile := write("link", testLinkSecret+"\r\n")
	smtpFile := write("smtp", "smtp pass word") // no newline
	keyFile := write("s3key", "s3-secret\n\n")  // one newline trimmed only

	path := writeYAML(t, patch(validFile(), map[string]any{
		"postgres": map[string]any{"url": nil, "url_file": pgFile},
		"publish":  map[string]any{"link_secret": nil},
		"smtp": map[string]any{
			"addr": "smtp.example.com:587", "from": "exports@example.com",
			"username": "exportd", "password_file": smtpFile,
		},
		"files": map[string]any{
			"type": "s3", "fs": nil,
			"s3": map[string]any{"bucket": "b", "access_key_id": "AKIA", "secret_access_key_file": keyFile},
		},
	}))
	c, err := loadAndValidate(path, map[string]string{"EXPORTD_PUBLISH_LINK_SECRET_FILE": linkFile})
	require.NoError(t, err)
	require.Equal(t, testPGURL, c.Postgres.URL.Reveal())
	require.Equal(t, testLinkSecret, c.Publish.LinkSecret.Reveal())
	require.Equal(t, "smtp pass word", c.SMTP.Password.Reveal())
	require.Equal(t, "s3-secret\n", c.Files.S3.SecretAccessKey.Reveal())
	require.Equal(t, "s3-secret\n", c.Files.S3.StorageConfig().SecretAccessKey)
}

func TestSecretFileErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, []byte("\n"), 0o600))
	short := filepath.Join(dir, "short")
	require.NoError(t, os.WriteFile(short, []byte("too-short-secret\n"), 0o600))
	missing := filepath.Join(dir, "missing")

	for _, tc := range []struct {
		name     string
		patch    map[string]any
		env      map[string]string
		envWhere string // where the error is from, if not the file
		key      string
		want     []string
	}{
		{
			name:  "missing file",
			patch: map[string]any{"postgres": map[string]any{"url": nil, "url_file": missing}},
			key:   "postgres.url_file", want: []string{missing, "no such file"},
		},
		{
			name:  "unreadable file",
			patch: map[string]any{"postgres": map[string]any{"url": nil, "url_file": dir}},
			key:   "postgres.url_file", want: []string{dir, "is a directory"},
		},
		{
			name:  "empty file",
			patch: map[string]any{"postgres": map[string]any{"url": nil, "url_file": empty}},
			key:   "postgres.url_file", want: []string{empty + " is empty"},
		},
		{
			name:  "secret and file",
			patch: map[string]any{"postgres": map[string]any{"url_file": empty}},
			key:   "postgres.url_file", want: []string{"postgres.url is also set", "keep one"},
		},
		{
			name:  "secret from the environment and file",
			patch: map[string]any{"publish": map[string]any{"link_secret": nil, "link_secret_file": short}},
			env:   map[string]string{"EXPORTD_PUBLISH_LINK_SECRET": testLinkSecret},
			key:   "publish.link_secret_file",
			want:  []string{"publish.link_secret is also set (environment EXPORTD_PUBLISH_LINK_SECRET)"},
		},
		{
			name:     "file from the environment",
			env:      map[string]string{"EXPORTD_SMTP_PASSWORD_FILE": missing},
			envWhere: "environment EXPORTD_SMTP_PASSWORD_FILE",
			key:      "smtp.password_file", want: []string{"no such file"},
		},
		{
			name:  "short secret in a file",
			patch: map[string]any{"publish": map[string]any{"link_secret": nil, "link_secret_file": short}},
			key:   "publish.link_secret_file", want: []string{"is 16 bytes, want at least 32"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeYAML(t, patch(validFile(), tc.patch))
			_, err := loadAndValidate(path, tc.env)
			where := path
			if tc.envWhere != "" {
				where = tc.envWhere
			}
			requireOneError(t, err, where, tc.key, tc.want...)
			require.NotContains(t, err.Error(), "too-short-secret")
		})
	}
}

func TestMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(path, nil)
	require.ErrorContains(t, err, "config: open "+path+": no such file or directory")
}

func TestEmptyFile(t *testing.T) {
	for _, content := range []string{"", "# only a comment\n", "---\n"} {
		c, err := Load(writeFile(t, content), nil)
		require.NoError(t, err, "%q", content)
		require.Equal(t, Default().Postgres, c.Postgres)
	}
}

// TestYAMLErrors checks the errors of the file's syntax and types.
func TestYAMLErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		line       int
		key        string
		want       string
	}{
		{"unknown key", "state_dir: x\npostgress:\n  url: x\n", 2, "postgress", "unknown key (did you mean postgres?)"},
		{"unknown nested key", "postgres:\n  slot: x\n  url_fiel: /x\n", 3, "postgres.url_fiel", "unknown key (did you mean postgres.url_file?)"},
		{"unknown key far from any", "publish:\n  s3:\n    colour: blue\n", 3, "publish.s3.colour", "unknown key (the keys of publish.s3 are bucket, prefix,"},
		{"unknown top-level key far from any", "\n\nfrobnicate: 1\n", 3, "frobnicate", "unknown key (the top-level keys are state_dir,"},
		{"inline key of files", "files:\n  link_secret: x\n", 2, "files.link_secret", "unknown key"},
		{"key twice", "http:\n  addr: a:1\n  addr: b:2\n", 3, "http.addr", "given twice (first on line 2)"},
		{"not an integer", "postgres:\n  copy_workers: two\n", 2, "postgres.copy_workers", `"two" is not an integer`},
		{"float for an integer", "export:\n  compression_level: 1.5\n", 2, "export.compression_level", `"1.5" is not an integer`},
		{"quoted integer", "export:\n  compression_level: \"5\"\n", 2, "export.compression_level", `"5" is not an integer`},
		{"integer overflow", "export:\n  concurrency: 99999999999999999999\n", 2, "export.concurrency", "is not an integer"},
		{"yes for a boolean", "files:\n  s3:\n    path_style: yes\n", 3, "files.s3.path_style", `"yes" is not true or false`},
		{"duration without unit", "postgres:\n  heartbeat: 10\n", 2, "postgres.heartbeat", `"10" is not a duration such as 30s or 1h30m`},
		{"bad duration", "http:\n  shutdown_grace: soon\n", 2, "http.shutdown_grace", `"soon" is not a duration`},
		{"scalar for a section", "http: 8080\n", 1, "http", "want a mapping of keys, got an integer"},
		{"list for a section", "smtp:\n  - a\n", 2, "smtp", "want a mapping of keys, got a list"},
		{"scalar for a list", "postgres:\n  tables: public.users\n", 2, "postgres.tables", "want a list of strings, got a string"},
		{"mapping in a list", "kafka:\n  brokers:\n    - a:1\n    - {host: b}\n", 4, "kafka.brokers", "item 2: want a string, got a mapping"},
		{"list for a string", "state_dir: [a, b]\n", 1, "state_dir", "want a string, got a list"},
		{"mapping for a secret", "postgres:\n  url:\n    password: hunter2\n", 3, "postgres.url", "want a string, got a mapping"},
		{"no value", "log_level:\n", 1, "log_level", "no value: give one, or remove the key for the default"},
		{"list key", "? [a, b]\n: c\n", 1, "?", "a key must be a name, got a list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, tc.yaml)
			_, err := Load(path, nil)
			requireOneError(t, err, path, tc.key, tc.want)
			require.Contains(t, err.Error(), "config: "+path+":"+itoa(tc.line)+": ")
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
}

func TestYAMLDocumentErrors(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"syntax", "http:\n  addr: a\n bad: [\n", `:2: did not find expected key`},
		{"tab indent", "http:\n\taddr: a\n", `:2: found character that cannot start any token`},
		{"top-level list", "- a\n- b\n", ":1: want a mapping of keys, got a list"},
		{"top-level scalar", "hello\n", ":1: want a mapping of keys, got a string"},
		{"two documents", "state_dir: a\n---\nstate_dir: b\n", ":2: a second YAML document"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, tc.yaml)
			_, err := Load(path, nil)
			require.Len(t, errs(err), 1, "%v", err)
			require.True(t, strings.HasPrefix(err.Error(), "config: "+path+":"), err.Error())
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestYAMLAllErrors checks that every problem of a file is reported, not
// the first.
func TestYAMLAllErrors(t *testing.T) {
	path := writeFile(t, "log_levl: x\nhttp:\n  addr: [a]\npostgres:\n  copy_workers: x\n")
	_, err := Load(path, nil)
	msgs := errs(err)
	require.Len(t, msgs, 3, "%q", msgs)
	require.Contains(t, msgs[0], ":1: log_levl: unknown key (did you mean log_level?)")
	require.Contains(t, msgs[1], ":3: http.addr: want a string, got a list")
	require.Contains(t, msgs[2], ":5: postgres.copy_workers:")
}

func TestYAMLAliases(t *testing.T) {
	path := writeYAML(t, validFile())
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	extra := "x-s3: &s3\n  bucket: shared\n"
	_, err = Load(writeFile(t, extra+string(data)), nil)
	require.ErrorContains(t, err, "x-s3: unknown key")

	content := "kafka:\n  brokers: &b [k1:9092]\n  group: g\nfiles:\n  type: s3\n  s3: &s3\n    bucket: shared\n    region: r\n" +
		"publish:\n  type: s3\n  s3: *s3\npostgres:\n  url: x\n  tables: [public.users]\n"
	c, err := loadAndValidate(writeFile(t, content), nil)
	require.NoError(t, err)
	require.Equal(t, "shared", c.Publish.S3.Bucket)
	require.Equal(t, "r", c.Publish.S3.Region)
}

func TestExample(t *testing.T) {
	ex := Example()
	path := writeFile(t, string(ex))
	// The example asks for these secrets in the environment.
	c, err := loadAndValidate(path, map[string]string{
		"EXPORTD_POSTGRES_URL":        testPGURL,
		"EXPORTD_PUBLISH_LINK_SECRET": testLinkSecret,
	})
	require.NoError(t, err)
	require.Equal(t, "https://exports.example.com", c.HTTP.PublicURL)
	require.Equal(t, refschema.Tables(), c.Postgres.Tables)

	// The example documents every key.
	for _, k := range keys {
		name := k.path[strings.LastIndex(k.path, ".")+1:]
		require.Regexp(t, `(?m)^[ #]*`+regexp.QuoteMeta(name)+`:`, string(ex), "example lacks %s", k.path)
	}
	// Its values are the defaults where they are shown.
	d := Default()
	require.Equal(t, d.Export, c.Export)
	require.Equal(t, d.Postgres.Slot, c.Postgres.Slot)
	require.Equal(t, d.Kafka.ParkExpiry, c.Kafka.ParkExpiry)
	require.Equal(t, d.Files.S3.PartSize, c.Files.S3.PartSize)

	// Without the secrets, the errors say where to set them.
	_, err = loadAndValidate(path, nil)
	msgs := errs(err)
	require.Len(t, msgs, 2, "%q", msgs)
	require.Contains(t, msgs[0], "postgres.url: required: set it, postgres.url_file, or EXPORTD_POSTGRES_URL")
	require.Contains(t, msgs[1], "publish.link_secret: required with publish.type fs")
}

func TestLevel(t *testing.T) {
	for _, l := range logLevels {
		c := Default()
		c.LogLevel = l
		require.Equal(t, slogLevel(t, l), c.Level())
	}
}

func TestDefaultPublicURL(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:8080": "http://127.0.0.1:8080",
		":8080":          "http://localhost:8080",
		"0.0.0.0:80":     "http://localhost:80",
		"[::]:8080":      "http://localhost:8080",
		"[::1]:8080":     "http://[::1]:8080",
		"exportd:8080":   "http://exportd:8080",
	} {
		require.Equal(t, want, defaultPublicURL(addr), addr)
	}
}

func TestStorageConfig(t *testing.T) {
	s := S3{
		Bucket: "b", Prefix: "p", Region: "r", Endpoint: "http://e", PathStyle: true,
		AccessKeyID: "id", SecretAccessKey: "sk", SessionToken: "st", SSE: "aws:kms", SSEKMSKeyID: "k",
		RequestChecksum: "when_required", PartSize: 6 << 20, Concurrency: 3,
	}
	require.Equal(t, storage.S3Config{
		Bucket: "b", Prefix: "p", Region: "r", Endpoint: "http://e", PathStyle: true,
		AccessKeyID: "id", SecretAccessKey: "sk", SessionToken: "st", SSE: "aws:kms", SSEKMSKeyID: "k",
		RequestChecksum: "when_required", PartSize: 6 << 20, Concurrency: 3,
	}, s.StorageConfig())
}

func FuzzLoad(f *testing.F) {
	f.Add(Example())
	f.Add([]byte("postgres:\n  url: x\n  tables: [a.b, a.b]\nhttp: {addr: ':0'}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := load("fuzz.yaml", data, nil)
		if err != nil {
			require.Nil(t, c)
			require.True(t, strings.HasPrefix(err.Error(), "config: fuzz.yaml"), err.Error())
			return
		}
		_ = c.Validate()
	})
}
