package config

import (
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/exportd/exportd/storage"
)

// Values of log_level and log_format.
var (
	logLevels  = []string{"debug", "info", "warn", "error"}
	logFormats = []string{"text", "json"}
)

// identRE matches the PostgreSQL names exportd accepts (as cdc does):
// lowercase identifiers that need no quoting.
var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_$]{0,62}$`)

// topicRE matches Kafka topic names.
var topicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// minMaxMessageBytes is the least kafka.max_message_bytes: room for a
// request and its headers.
const minMaxMessageBytes = 1 << 10

// Validate checks c and returns an error joining one error per problem,
// each naming where the value came from and its key, or nil. It reads
// nothing but the existence of export.spec.
func (c *Config) Validate() error {
	v := &validator{c: c}
	v.required("state_dir", c.StateDir)
	v.oneOf("log_level", c.LogLevel, logLevels...)
	v.oneOf("log_format", c.LogFormat, logFormats...)
	v.http()
	v.postgres()
	v.staging()
	v.cluster()
	v.export()
	v.store("files", c.Files)
	v.publish()
	v.kafka()
	v.smtp()
	return errors.Join(v.errs...)
}

type validator struct {
	c    *Config
	errs []error
}

// errorf records a problem with key. A problem with a secret read from a
// file is reported as one with the key naming the file.
func (v *validator) errorf(key, format string, args ...any) {
	if v.c.src != nil && v.c.src.viaFile[key] != "" {
		key = v.c.src.viaFile[key]
	}
	v.errs = append(v.errs, fmt.Errorf("config: %s: %s: %s", v.c.src.where(key), key, fmt.Sprintf(format, args...)))
}

func (v *validator) required(key, val string) bool {
	if val == "" {
		v.errorf(key, "required")
		return false
	}
	return true
}

func (v *validator) oneOf(key, val string, vals ...string) {
	for _, ok := range vals {
		if val == ok {
			return
		}
	}
	v.errorf(key, "%q is not one of %s", val, quoteList(vals))
}

func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.errorf(key, "%s: want a positive duration", fmtDuration(d))
	}
}

func (v *validator) atLeast(key string, n, least int64) {
	if n < least {
		v.errorf(key, "%d is below the minimum of %d", n, least)
	}
}

// hostPort checks addr, a host:port with a host and a port other than 0.
func (v *validator) hostPort(key, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.errorf(key, "%q: %s", addr, addrError(err))
		return
	}
	if host == "" {
		v.errorf(key, "%q: no host", addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		v.errorf(key, "%q: port %q is not a number from 1 to 65535", addr, port)
	}
}

// addrError returns the message of a net.SplitHostPort error without the
// address, which the caller quotes.
func addrError(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}

// httpURL checks that val is an http or https URL with a host.
func (v *validator) httpURL(key, val string) {
	u, err := url.Parse(val)
	switch {
	case err != nil:
		v.errorf(key, "%q is not a URL", val)
	case u.Scheme != "http" && u.Scheme != "https":
		v.errorf(key, "%q: want an http or https URL", val)
	case u.Host == "":
		v.errorf(key, "%q: no host", val)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		v.errorf(key, "%q: want no user, query or fragment", val)
	}
}

func (v *validator) http() {
	h := v.c.HTTP
	if v.required("http.addr", h.Addr) {
		// Port 0 (any free port) is allowed here, as is an empty host.
		if _, port, err := net.SplitHostPort(h.Addr); err != nil {
			v.errorf("http.addr", "%q: %s", h.Addr, addrError(err))
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			v.errorf("http.addr", "%q: port %q is not a number from 0 to 65535", h.Addr, port)
		}
	}
	switch {
	case h.PublicURL == "":
		if v.c.Publish.Type == StoreFS {
			v.errorf("http.public_url", "required with publish.type fs, to build download links")
		}
	case v.c.src == nil || v.c.src.origin("http.public_url") != "":
		// A derived public_url is only as good as http.addr, checked above.
		v.httpURL("http.public_url", h.PublicURL)
	}
	v.positive("http.shutdown_grace", h.ShutdownGrace)
}

func (v *validator) postgres() {
	p := v.c.Postgres
	if p.URL == "" {
		v.errorf("postgres.url", "required: set it, postgres.url_file, or %s", keyEnv("postgres.url"))
	}
	if len(p.Tables) == 0 {
		v.errorf("postgres.tables", "no table to replicate")
	}
	seen := map[string]bool{}
	for _, t := range p.Tables {
		schema, table, ok := strings.Cut(t, ".")
		if !ok {
			schema, table = "public", t
		}
		if !identRE.MatchString(schema) || !identRE.MatchString(table) {
			v.errorf("postgres.tables", "%q: want schema.table in lowercase letters, digits and _", t)
			continue
		}
		if q := schema + "." + table; seen[q] {
			v.errorf("postgres.tables", "%q is listed twice", t)
		} else {
			seen[q] = true
		}
	}
	for _, k := range []struct{ key, val string }{
		{"postgres.tenant_column", p.TenantColumn},
		{"postgres.publication", p.Publication},
		{"postgres.slot", p.Slot},
	} {
		if v.required(k.key, k.val) && !identRE.MatchString(k.val) {
			v.errorf(k.key, "%q: use lowercase letters, digits and _ (at most 63)", k.val)
		}
	}
	v.atLeast("postgres.copy_workers", int64(p.CopyWorkers), 1)
	v.positive("postgres.heartbeat", p.Heartbeat)
	v.positive("postgres.flush_interval", p.FlushInterval)
}

func (v *validator) export() {
	e := v.c.Export
	if e.Spec != "" {
		if _, err := os.Stat(e.Spec); err != nil {
			v.errorf("export.spec", "%v", err)
		}
	}
	switch {
	case e.LinkTTL > storage.MaxLinkTTL:
		v.errorf("export.link_ttl", "%s is above the %s (%d day) limit of signed links",
			fmtDuration(e.LinkTTL), fmtDuration(storage.MaxLinkTTL), storage.MaxLinkTTL/(24*time.Hour))
	case e.LinkTTL < time.Second:
		v.errorf("export.link_ttl", "%s is below the minimum of 1s", fmtDuration(e.LinkTTL))
	}
	if e.CompressionLevel < 1 || e.CompressionLevel > 9 {
		v.errorf("export.compression_level", "%d is not a level from 1 (fastest) to 9 (smallest)", e.CompressionLevel)
	}
	v.atLeast("export.concurrency", int64(e.Concurrency), 1)
	v.atLeast("export.prerender_min_rows", e.PrerenderMinRows, 0)
	if v.required("export.prefix", e.Prefix) {
		if err := storage.ValidateKey(strings.Trim(e.Prefix, "/")); err != nil {
			v.errorf("export.prefix", "%v", err)
		}
	}
}

// store checks the store at key.
func (v *validator) store(key string, s Store) { v.storeTyped(key, key+".type", s) }

// storeTyped checks the store at key whose type typeKey sets.
func (v *validator) storeTyped(key, typeKey string, s Store) {
	def := Default().Files
	switch s.Type {
	case "":
		v.errorf(typeKey, "required: %s or %s", StoreFS, StoreS3)
	case StoreFS:
		v.required(key+".fs.dir", s.FS.Dir)
		if s.S3 != def.S3 {
			v.errorf(v.firstSet(key+".s3"), "set, but %s is %s", typeKey, s.Type)
		}
	case StoreS3:
		v.s3(key+".s3", s.S3)
		if s.FS != def.FS {
			v.errorf(v.firstSet(key+".fs"), "set, but %s is %s", typeKey, s.Type)
		}
	default:
		v.errorf(typeKey, "%q is not %q or %q", s.Type, StoreFS, StoreS3)
	}
}

func (v *validator) s3(key string, s S3) {
	v.required(key+".bucket", s.Bucket)
	if s.Prefix != "" {
		if err := storage.ValidateKey(strings.TrimSuffix(s.Prefix, "/")); err != nil {
			v.errorf(key+".prefix", "%v", err)
		}
	}
	if s.Endpoint != "" {
		v.httpURL(key+".endpoint", s.Endpoint)
	}
	switch {
	case s.AccessKeyID != "" && s.SecretAccessKey == "":
		v.errorf(key+".secret_access_key", "required with %s.access_key_id", key)
	case s.AccessKeyID == "" && s.SecretAccessKey != "":
		v.errorf(key+".access_key_id", "required with %s.secret_access_key", key)
	}
	if s.SessionToken != "" && s.AccessKeyID == "" {
		v.errorf(key+".session_token", "needs %s.access_key_id and %s.secret_access_key", key, key)
	}
	switch s.SSE {
	case "", "AES256":
		if s.SSEKMSKeyID != "" {
			v.errorf(key+".sse_kms_key_id", "needs %s.sse aws:kms", key)
		}
	case "aws:kms":
	default:
		v.errorf(key+".sse", "%q is not \"\" (the bucket's default), AES256 or aws:kms", s.SSE)
	}
	v.oneOf(key+".request_checksum", s.RequestChecksum,
		storage.RequestChecksumWhenSupported, storage.RequestChecksumWhenRequired)
	if s.PartSize < storage.MinS3PartSize {
		v.errorf(key+".part_size", "%d bytes is below S3's minimum part size of %d (5 MiB)", s.PartSize, storage.MinS3PartSize)
	}
	v.atLeast(key+".concurrency", int64(s.Concurrency), 1)
}

func (v *validator) staging() {
	st := v.c.Staging
	def := Default().Staging
	switch st.Backend {
	case StagingLocal:
		if st.S3 != def.S3 {
			v.errorf(v.firstSet("staging.s3"), "set, but staging.backend is %s", st.Backend)
		}
		if st.FS != def.FS {
			v.errorf(v.firstSet("staging.fs"), "set, but staging.backend is %s", st.Backend)
		}
	case StagingS3, StagingFS:
		v.storeTyped("staging", "staging.backend", Store{Type: st.Backend, FS: st.FS, S3: st.S3})
	default:
		v.errorf("staging.backend", "%q is not %s, %s or %s", st.Backend, StagingLocal, StagingS3, StagingFS)
	}
	v.positive("staging.poll_interval", st.PollInterval)
	v.positive("staging.delete_delay", st.DeleteDelay)
}

func (v *validator) cluster() {
	c := v.c.Cluster
	v.positive("cluster.heartbeat", c.Heartbeat)
	v.positive("cluster.ttl", c.TTL)
	if c.Heartbeat > 0 && c.TTL <= 2*c.Heartbeat {
		v.errorf("cluster.ttl", "%s must be more than twice cluster.heartbeat (%s)", fmtDuration(c.TTL), fmtDuration(c.Heartbeat))
	}
	if !v.c.Staging.Shared() {
		return
	}
	if v.required("cluster.replica_id", c.ReplicaID) && !replicaIDRE.MatchString(c.ReplicaID) {
		v.errorf("cluster.replica_id", "%q: use letters, digits, '.', '_' and '-' (at most 128)", c.ReplicaID)
	}
}

var replicaIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func (v *validator) publish() {
	p := v.c.Publish
	v.store("publish", p.Store)
	if p.Type != StoreFS {
		return
	}
	switch {
	case p.LinkSecret == "":
		v.errorf("publish.link_secret", "required with publish.type fs, to sign download links: set it, publish.link_secret_file, or %s (at least %d random bytes)",
			keyEnv("publish.link_secret"), storage.MinSignerSecretLen)
	case len(p.LinkSecret) < storage.MinSignerSecretLen:
		v.errorf("publish.link_secret", "is %d bytes, want at least %d", len(p.LinkSecret), storage.MinSignerSecretLen)
	}
}

func (v *validator) kafka() {
	k := v.c.Kafka
	def := Default().Kafka
	if len(k.Brokers) == 0 {
		k.Brokers = nil
		if !reflect.DeepEqual(k, def) {
			v.errorf("kafka.brokers", "required when other kafka keys are set (%s)", v.firstSet("kafka"))
		}
		return
	}
	for _, b := range k.Brokers {
		v.hostPort("kafka.brokers", b)
	}
	v.required("kafka.group", k.Group)
	for _, t := range []struct{ key, val string }{
		{"kafka.request_topic", k.RequestTopic},
		{"kafka.result_topic", k.ResultTopic},
		{"kafka.dead_letter_topic", k.DeadLetterTopic},
	} {
		if v.required(t.key, t.val) && (!topicRE.MatchString(t.val) || t.val == "." || t.val == "..") {
			v.errorf(t.key, "%q is not a topic name (letters, digits, '.', '_' and '-')", t.val)
		}
	}
	if k.DeadLetterTopic == k.RequestTopic && k.RequestTopic != "" {
		v.errorf("kafka.dead_letter_topic", "%q is also kafka.request_topic", k.DeadLetterTopic)
	}
	v.positive("kafka.fence_timeout", k.FenceTimeout)
	v.positive("kafka.park_expiry", k.ParkExpiry)
	v.atLeast("kafka.max_message_bytes", int64(k.MaxMessageBytes), minMaxMessageBytes)
}

func (v *validator) smtp() {
	s := v.c.SMTP
	if s.Addr == "" {
		if s != Default().SMTP {
			v.errorf("smtp.addr", "required when other smtp keys are set (%s)", v.firstSet("smtp"))
		}
		return
	}
	v.hostPort("smtp.addr", s.Addr)
	if v.required("smtp.from", s.From) {
		if _, err := mail.ParseAddress(s.From); err != nil {
			v.errorf("smtp.from", "%q is not an email address", s.From)
		}
	}
	switch {
	case s.Username != "" && s.Password == "":
		v.errorf("smtp.password", "required with smtp.username: set it, smtp.password_file, or %s", keyEnv("smtp.password"))
	case s.Username == "" && s.Password != "":
		v.errorf("smtp.username", "required with smtp.password")
	}
	v.oneOf("smtp.tls", s.TLS, SMTPTLSNone, SMTPTLSStartTLS, SMTPTLSImplicit)
	if s.TLS == SMTPTLSNone && s.Password != "" {
		v.errorf("smtp.tls", "none would send smtp.password in the clear: use starttls or tls")
	}
}

// firstSet returns the first key of section that was set, or section if
// none was (in a Config built in code).
func (v *validator) firstSet(section string) string {
	for _, k := range keys {
		if strings.HasPrefix(k.path, section+".") && v.c.src.origin(k.path) != "" {
			return k.path
		}
	}
	return section
}

// keyEnv returns the environment variable of key.
func keyEnv(path string) string {
	for _, k := range keys {
		if k.path == path {
			return k.env
		}
	}
	panic("config: no key " + path)
}

func quoteList(vals []string) string {
	q := make([]string, len(vals))
	for i, s := range vals {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// fmtDuration formats d without zero minutes and seconds: 168h, not
// 168h0m0s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
