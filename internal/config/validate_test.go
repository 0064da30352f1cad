package config

import (
	"log/slog"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func itoa(i int) string { return strconv.Itoa(i) }

func slogLevel(t *testing.T, s string) slog.Level {
	t.Helper()
	var l slog.Level
	require.NoError(t, l.UnmarshalText([]byte(s)))
	return l
}

// s3Store is a valid S3 store section.
func s3Store() map[string]any {
	return map[string]any{"type": "s3", "fs": nil, "s3": map[string]any{"bucket": "b"}}
}

// withS3 returns a patch that makes the publish store s3, with more
// keys of its s3 section.
func withS3(s3 map[string]any) map[string]any {
	p := s3Store()
	for k, v := range s3 {
		p["s3"].(map[string]any)[k] = v
	}
	return map[string]any{"publish": p}
}

func smtpWith(m map[string]any) map[string]any {
	s := map[string]any{"addr": "smtp.example.com:587", "from": "exportd <exports@example.com>"}
	for k, v := range m {
		s[k] = v
	}
	return map[string]any{"smtp": s}
}

func kafkaWith(m map[string]any) map[string]any {
	k := map[string]any{"brokers": []string{"kafka-1:9092"}}
	for key, v := range m {
		k[key] = v
	}
	return map[string]any{"kafka": k}
}

// TestValidateErrors checks every error of Validate on a file: one error,
// naming the file and the key.
func TestValidateErrors(t *testing.T) {
	missingSpec := filepath.Join(t.TempDir(), "spec.yaml")
	for _, tc := range []struct {
		name  string
		patch map[string]any
		key   string
		want  []string
	}{
		// Top level.
		{"no state dir", map[string]any{"state_dir": ""}, "state_dir", []string{"required"}},
		{"bad log level", map[string]any{"log_level": "loud"}, "log_level", []string{`"loud" is not one of "debug", "info", "warn", "error"`}},
		{"upper-case log level", map[string]any{"log_level": "INFO"}, "log_level", []string{`"INFO" is not one of`}},
		{"bad log format", map[string]any{"log_format": "xml"}, "log_format", []string{`"xml" is not one of "text", "json"`}},

		// http.
		{"no http addr", map[string]any{"http": map[string]any{"addr": ""}}, "http.addr", []string{"required"}},
		{"http addr without port", map[string]any{"http": map[string]any{"addr": "localhost", "public_url": "http://x"}}, "http.addr", []string{`"localhost": missing port in address`}},
		{"http addr bad port", map[string]any{"http": map[string]any{"addr": "localhost:http", "public_url": "http://x"}}, "http.addr", []string{`port "http" is not a number from 0 to 65535`}},
		{"public url not http", map[string]any{"http": map[string]any{"public_url": "ftp://x"}}, "http.public_url", []string{`"ftp://x": want an http or https URL`}},
		{"public url without host", map[string]any{"http": map[string]any{"public_url": "https:///x"}}, "http.public_url", []string{"no host"}},
		{"public url with query", map[string]any{"http": map[string]any{"public_url": "https://x/?a=b"}}, "http.public_url", []string{"want no user, query or fragment"}},
		{"empty public url", map[string]any{"http": map[string]any{"public_url": ""}}, "http.public_url", []string{"required with publish.type fs"}},
		{"zero shutdown grace", map[string]any{"http": map[string]any{"shutdown_grace": "0s"}}, "http.shutdown_grace", []string{"0s: want a positive duration"}},
		{"negative shutdown grace", map[string]any{"http": map[string]any{"shutdown_grace": "-1m"}}, "http.shutdown_grace", []string{"-1m: want a positive duration"}},

		// postgres.
		{"no postgres url", map[string]any{"postgres": map[string]any{"url": nil}}, "postgres.url", []string{"required: set it, postgres.url_file, or EXPORTD_POSTGRES_URL"}},
		{"empty postgres url", map[string]any{"postgres": map[string]any{"url": ""}}, "postgres.url", []string{"required"}},
		{"no tables", map[string]any{"postgres": map[string]any{"tables": []string{}}}, "postgres.tables", []string{"no table to replicate"}},
		{"bad table", map[string]any{"postgres": map[string]any{"tables": []string{"public.users", "Public.Users"}}}, "postgres.tables", []string{`"Public.Users": want schema.table`}},
		{"table twice", map[string]any{"postgres": map[string]any{"tables": []string{"users", "public.users"}}}, "postgres.tables", []string{`"public.users" is listed twice`}},
		{"bad slot", map[string]any{"postgres": map[string]any{"slot": "export-d"}}, "postgres.slot", []string{`"export-d": use lowercase letters`}},
		{"no publication", map[string]any{"postgres": map[string]any{"publication": ""}}, "postgres.publication", []string{"required"}},
		{"bad tenant column", map[string]any{"postgres": map[string]any{"tenant_column": "TenantID"}}, "postgres.tenant_column", []string{`"TenantID"`}},
		{"no copy workers", map[string]any{"postgres": map[string]any{"copy_workers": 0}}, "postgres.copy_workers", []string{"0 is below the minimum of 1"}},
		{"zero heartbeat", map[string]any{"postgres": map[string]any{"heartbeat": "0s"}}, "postgres.heartbeat", []string{"want a positive duration"}},
		{"negative flush interval", map[string]any{"postgres": map[string]any{"flush_interval": "-200ms"}}, "postgres.flush_interval", []string{"-200ms: want a positive duration"}},

		// export.
		{"missing spec", map[string]any{"export": map[string]any{"spec": missingSpec}}, "export.spec", []string{missingSpec, "no such file"}},
		{"link ttl too long", map[string]any{"export": map[string]any{"link_ttl": "200h"}}, "export.link_ttl", []string{"200h is above the 168h (7 day) limit of signed links"}},
		{"link ttl too short", map[string]any{"export": map[string]any{"link_ttl": "500ms"}}, "export.link_ttl", []string{"500ms is below the minimum of 1s"}},
		{"compression level 0", map[string]any{"export": map[string]any{"compression_level": 0}}, "export.compression_level", []string{"0 is not a level from 1 (fastest) to 9 (smallest)"}},
		{"compression level 10", map[string]any{"export": map[string]any{"compression_level": 10}}, "export.compression_level", []string{"10 is not a level"}},
		{"no concurrency", map[string]any{"export": map[string]any{"concurrency": 0}}, "export.concurrency", []string{"0 is below the minimum of 1"}},
		{"negative concurrency", map[string]any{"export": map[string]any{"concurrency": -1}}, "export.concurrency", []string{"-1 is below the minimum of 1"}},
		{"no prefix", map[string]any{"export": map[string]any{"prefix": ""}}, "export.prefix", []string{"required"}},
		{"bad prefix", map[string]any{"export": map[string]any{"prefix": "a/../b"}}, "export.prefix", []string{"invalid key"}},

		// Stores.
		{"no files store", map[string]any{"files": nil}, "files.type", []string{"required: fs or s3"}},
		{"no publish store", map[string]any{"publish": map[string]any{"type": nil, "fs": nil}}, "publish.type", []string{"required: fs or s3"}},
		{"unknown store type", map[string]any{"files": map[string]any{"type": "gcs"}}, "files.type", []string{`"gcs" is not "fs" or "s3"`}},
		{"fs without dir", map[string]any{"files": map[string]any{"fs": nil}}, "files.fs.dir", []string{"required"}},
		{"fs with s3", map[string]any{"files": map[string]any{"s3": map[string]any{"bucket": "b"}}}, "files.s3.bucket", []string{"set, but files.type is fs"}},
		{"s3 with fs", map[string]any{"files": map[string]any{"type": "s3", "s3": map[string]any{"bucket": "b"}}}, "files.fs.dir", []string{"set, but files.type is s3"}},
		{"s3 without bucket", map[string]any{"publish": map[string]any{"type": "s3", "fs": nil, "s3": map[string]any{"region": "r"}}}, "publish.s3.bucket", []string{"required"}},
		{"s3 bad prefix", withS3(map[string]any{"prefix": "/abs"}), "publish.s3.prefix", []string{"invalid key"}},
		{"s3 bad endpoint", withS3(map[string]any{"endpoint": "127.0.0.1:9000"}), "publish.s3.endpoint", []string{`"127.0.0.1:9000"`}},
		{"s3 key id without secret", withS3(map[string]any{"access_key_id": "AKIA"}), "publish.s3.secret_access_key", []string{"required with publish.s3.access_key_id"}},
		{"s3 secret without key id", withS3(map[string]any{"secret_access_key": "s3cr3t-key"}), "publish.s3.access_key_id", []string{"required with publish.s3.secret_access_key"}},
		{"s3 session token alone", withS3(map[string]any{"session_token": "t0ken"}), "publish.s3.session_token", []string{"needs publish.s3.access_key_id"}},
		{"bad sse", withS3(map[string]any{"sse": "aes256"}), "publish.s3.sse", []string{`"aes256" is not "" (the bucket's default), AES256 or aws:kms`}},
		{"kms key without kms", withS3(map[string]any{"sse": "AES256", "sse_kms_key_id": "k"}), "publish.s3.sse_kms_key_id", []string{"needs publish.s3.sse aws:kms"}},
		{"bad request checksum", withS3(map[string]any{"request_checksum": "always"}), "publish.s3.request_checksum", []string{`"always" is not one of "when_supported", "when_required"`}},
		{"small part size", withS3(map[string]any{"part_size": 1 << 20}), "publish.s3.part_size", []string{"1048576 bytes is below S3's minimum part size of 5242880 (5 MiB)"}},
		{"no s3 concurrency", withS3(map[string]any{"concurrency": 0}), "publish.s3.concurrency", []string{"0 is below the minimum of 1"}},
		{"files s3 checked too", map[string]any{"files": map[string]any{"type": "s3", "fs": nil, "s3": map[string]any{"bucket": "b", "sse": "x"}}}, "files.s3.sse", []string{`"x"`}},

		// publish.link_secret.
		{"no link secret", map[string]any{"publish": map[string]any{"link_secret": nil}}, "publish.link_secret", []string{"required with publish.type fs", "publish.link_secret_file", "EXPORTD_PUBLISH_LINK_SECRET", "at least 32"}},
		{"short link secret", map[string]any{"publish": map[string]any{"link_secret": "hunter2"}}, "publish.link_secret", []string{"is 7 bytes, want at least 32"}},

		// kafka.
		{"kafka keys without brokers", map[string]any{"kafka": map[string]any{"group": "g"}}, "kafka.brokers", []string{"required when other kafka keys are set (kafka.group)"}},
		{"broker without port", kafkaWith(map[string]any{"brokers": []string{"kafka-1:9092", "kafka-2"}}), "kafka.brokers", []string{`"kafka-2": missing port in address`}},
		{"broker port 0", kafkaWith(map[string]any{"brokers": []string{"kafka-1:0"}}), "kafka.brokers", []string{`port "0" is not a number from 1 to 65535`}},
		{"broker without host", kafkaWith(map[string]any{"brokers": []string{":9092"}}), "kafka.brokers", []string{"no host"}},
		{"no group", kafkaWith(map[string]any{"group": ""}), "kafka.group", []string{"required"}},
		{"bad topic", kafkaWith(map[string]any{"result_topic": "export results"}), "kafka.result_topic", []string{`"export results" is not a topic name`}},
		{"no topic", kafkaWith(map[string]any{"request_topic": ""}), "kafka.request_topic", []string{"required"}},
		{"dead letters to requests", kafkaWith(map[string]any{"dead_letter_topic": "exportd.requests"}), "kafka.dead_letter_topic", []string{"is also kafka.request_topic"}},
		{"zero fence timeout", kafkaWith(map[string]any{"fence_timeout": "0s"}), "kafka.fence_timeout", []string{"want a positive duration"}},
		{"negative park expiry", kafkaWith(map[string]any{"park_expiry": "-1h"}), "kafka.park_expiry", []string{"-1h: want a positive duration"}},
		{"small max message", kafkaWith(map[string]any{"max_message_bytes": 100}), "kafka.max_message_bytes", []string{"100 is below the minimum of 1024"}},

		// smtp.
		{"smtp without addr", map[string]any{"smtp": map[string]any{"from": "a@example.com"}}, "smtp.addr", []string{"required when other smtp keys are set (smtp.from)"}},
		{"smtp without from", map[string]any{"smtp": map[string]any{"addr": "smtp.example.com:587"}}, "smtp.from", []string{"required"}},
		{"smtp bad from", smtpWith(map[string]any{"from": "exportd"}), "smtp.from", []string{`"exportd" is not an email address`}},
		{"smtp addr without port", smtpWith(map[string]any{"addr": "smtp.example.com"}), "smtp.addr", []string{"missing port"}},
		{"smtp username without password", smtpWith(map[string]any{"username": "u"}), "smtp.password", []string{"required with smtp.username", "EXPORTD_SMTP_PASSWORD"}},
		{"smtp password without username", smtpWith(map[string]any{"password": "hunter2"}), "smtp.username", []string{"required with smtp.password"}},
		{"smtp bad tls", smtpWith(map[string]any{"tls": "ssl"}), "smtp.tls", []string{`"ssl" is not one of "none", "starttls", "tls"`}},
		{"smtp password in the clear", smtpWith(map[string]any{"tls": "none", "username": "u", "password": "hunter2"}), "smtp.tls", []string{"in the clear"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeYAML(t, patch(validFile(), tc.patch))
			_, err := loadAndValidate(path, nil)
			requireOneError(t, err, path, tc.key, tc.want...)
			require.NotContains(t, err.Error(), "hunter2")
			require.NotContains(t, err.Error(), "s3cr3t-key")
			require.NotContains(t, err.Error(), "t0ken")
		})
	}
}

// TestValidateOK checks configurations that are valid though unusual.
func TestValidateOK(t *testing.T) {
	for _, tc := range []struct {
		name  string
		patch map[string]any
	}{
		{"port 0 and any host", map[string]any{"http": map[string]any{"addr": ":0"}}},
		{"publish to s3 needs no link secret", map[string]any{"publish": map[string]any{"type": "s3", "fs": nil, "link_secret": nil, "s3": map[string]any{"bucket": "b"}}}},
		{"s3 with everything", withS3(map[string]any{
			"prefix": "exports/", "region": "eu-west-1", "endpoint": "http://127.0.0.1:9000", "path_style": true,
			"access_key_id": "AKIA", "secret_access_key": "s", "session_token": "t", "sse": "aws:kms", "sse_kms_key_id": "k",
			"request_checksum": "when_required", "part_size": 5 << 20, "concurrency": 1,
		})},
		{"smtp", smtpWith(map[string]any{"username": "u", "password": "p", "tls": "tls"})},
		{"smtp without auth in the clear", smtpWith(map[string]any{"tls": "none"})},
		{"kafka", kafkaWith(map[string]any{"brokers": []string{"k1:9092", "[::1]:9093"}})},
		{"link ttl a second", map[string]any{"export": map[string]any{"link_ttl": "1s", "compression_level": 9}}},
		{"unqualified table", map[string]any{"postgres": map[string]any{"tables": []string{"users", "other.users"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadAndValidate(writeYAML(t, patch(validFile(), tc.patch)), nil)
			require.NoError(t, err)
		})
	}
}

// TestValidateAllErrors checks that Validate reports every problem.
func TestValidateAllErrors(t *testing.T) {
	path := writeFile(t, `log_level: loud
export:
  link_ttl: 200h
  compression_level: 0
files: {type: fs, fs: {dir: /f}}
publish: {type: s3, s3: {bucket: b}}
`)
	_, err := loadAndValidate(path, map[string]string{"EXPORTD_HTTP_SHUTDOWN_GRACE": "-1s"})
	msgs := errs(err)
	require.Equal(t, []string{
		"config: " + path + ":1: log_level: \"loud\" is not one of \"debug\", \"info\", \"warn\", \"error\"",
		"config: environment EXPORTD_HTTP_SHUTDOWN_GRACE: http.shutdown_grace: -1s: want a positive duration",
		"config: " + path + ": postgres.url: required: set it, postgres.url_file, or EXPORTD_POSTGRES_URL",
		"config: " + path + ":3: export.link_ttl: 200h is above the 168h (7 day) limit of signed links",
		"config: " + path + ":4: export.compression_level: 0 is not a level from 1 (fastest) to 9 (smallest)",
	}, msgs)
}

// TestValidateWhere checks that errors name where the value came from.
func TestValidateWhere(t *testing.T) {
	// From the environment, with no file.
	_, err := loadAndValidate("", map[string]string{
		"EXPORTD_POSTGRES_URL": testPGURL,
		"EXPORTD_FILES_TYPE":   "s3", "EXPORTD_FILES_S3_BUCKET": "f",
		"EXPORTD_PUBLISH_TYPE": "s3", "EXPORTD_PUBLISH_S3_BUCKET": "p",
		"EXPORTD_EXPORT_LINK_TTL": "200h",
	})
	requireOneError(t, err, "environment EXPORTD_EXPORT_LINK_TTL", "export.link_ttl", "200h is above the 168h (7 day) limit")

	// A missing key with no file.
	_, err = loadAndValidate("", map[string]string{
		"EXPORTD_FILES_TYPE": "s3", "EXPORTD_FILES_S3_BUCKET": "f",
		"EXPORTD_PUBLISH_TYPE": "s3", "EXPORTD_PUBLISH_S3_BUCKET": "p",
	})
	requireOneError(t, err, "environment", "postgres.url", "required")

	// A key of the environment that the file's store type does not use.
	_, err = loadAndValidate(writeYAML(t, validFile()), map[string]string{"EXPORTD_PUBLISH_S3_PART_SIZE": "16777216"})
	requireOneError(t, err, "environment EXPORTD_PUBLISH_S3_PART_SIZE", "publish.s3.part_size", "set, but publish.type is fs")

	// The environment overrides a valid value in the file.
	path := writeYAML(t, patch(validFile(), map[string]any{"export": map[string]any{"link_ttl": "24h"}}))
	_, err = loadAndValidate(path, map[string]string{"EXPORTD_EXPORT_LINK_TTL": "169h"})
	requireOneError(t, err, "environment EXPORTD_EXPORT_LINK_TTL", "export.link_ttl", "169h is above")
}

// TestValidateHandBuilt validates a Config built in code.
func TestValidateHandBuilt(t *testing.T) {
	c := Default()
	c.Postgres.URL = testPGURL
	c.Files = Store{Type: StoreFS, FS: FSStore{Dir: "/f"}, S3: Default().Files.S3}
	c.Publish.Type = StoreS3
	c.Publish.S3.Bucket = "b"
	require.NoError(t, c.Validate())

	c.Publish.Type = StoreFS
	c.Publish.S3 = Default().Publish.S3
	c.Publish.FS.Dir = "/p"
	msgs := errs(c.Validate())
	require.Len(t, msgs, 2, "%q", msgs)
	require.Contains(t, msgs[0], "config: environment: http.public_url: required with publish.type fs")
	require.Contains(t, msgs[1], "config: environment: publish.link_secret: required")
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[string]string{
		"200h": "200h", "168h": "168h", "1h30m": "1h30m", "5m": "5m", "10m": "10m",
		"30s": "30s", "1m30s": "1m30s", "0s": "0s", "200ms": "200ms", "-1h": "-1h", "1h0m1s": "1h0m1s",
	} {
		require.Equal(t, want, fmtDuration(mustDuration(t, d)), d)
	}
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	require.NoError(t, err)
	return d
}
