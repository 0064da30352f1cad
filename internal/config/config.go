// Package config is exportd's configuration: a YAML file, environment
// variables that override it, and a few command-line flags that override
// both (see Flags).
//
// Every key has an environment variable: EXPORTD_ followed by the key's path
// in upper case joined by '_' (postgres.url is EXPORTD_POSTGRES_URL; lists
// are comma-separated). EnvNames lists them. Each secret (a Secret field,
// such as postgres.url) can instead be read from a file named by the key with
// "_file" appended (postgres.url_file), as container secrets are mounted; a
// trailing newline is dropped.
//
// Load decodes strictly (an unknown key, a value of the wrong type or a key
// given twice is an error) and Validate checks the values. Every error names
// where the value came from and its key:
//
//	config: exportd.yaml:12: export.link_ttl: 200h is above the 168h (7 day) limit of signed links
//	config: environment EXPORTD_HTTP_ADDR: http.addr: "localhost": missing port in address
//
// Relative paths (state_dir, *_file, export.spec, fs.dir) are relative to
// the working directory, not to the file.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/exportd/exportd/internal/refschema"
	"github.com/exportd/exportd/storage"
)

// Config is exportd's configuration. Its yaml tags are the keys of the file.
// Load returns one with defaults filled in; build one by hand from Default.
type Config struct {
	// StateDir holds staging and exportd's other local state; keep it on a
	// persistent volume.
	StateDir string `yaml:"state_dir"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json.
	LogFormat string `yaml:"log_format"`

	HTTP     HTTP     `yaml:"http"`
	Postgres Postgres `yaml:"postgres"`
	// Staging says where staging lives: in state_dir for one replica, or
	// in a bucket that several replicas share.
	Staging Staging `yaml:"staging"`
	// Cluster configures the replicas that share staging.
	Cluster Cluster `yaml:"cluster"`
	Export  Export  `yaml:"export"`
	// Files is the platform's object store, where the attachments that
	// exports include are read from. exportd never writes to it.
	Files Store `yaml:"files"`
	// Publish is where export bundles are written and linked from.
	Publish Publish `yaml:"publish"`
	Kafka   Kafka   `yaml:"kafka"`
	SMTP    SMTP    `yaml:"smtp"`

	// src records where each key was set, for the messages of Validate.
	src *sources
}

// HTTP configures exportd's HTTP server: metrics, health, the status API
// and the downloads of the filesystem publish store.
type HTTP struct {
	// Addr is the host:port to listen on.
	Addr string `yaml:"addr"`
	// PublicURL is the base URL that download links of the filesystem
	// publish store start with: the address at which clients reach Addr,
	// perhaps through a proxy. Default: http:// + Addr (localhost for an
	// unspecified host).
	PublicURL string `yaml:"public_url"`
	// ShutdownGrace is how long in-flight requests and exports may take to
	// finish at shutdown.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
}

// Postgres configures replication from the platform's database.
type Postgres struct {
	// URL is the connection string of a role with REPLICATION.
	URL     Secret `yaml:"url"`
	URLFile string `yaml:"url_file"`
	// Tables are the schema-qualified tables to replicate.
	Tables       []string `yaml:"tables"`
	TenantColumn string   `yaml:"tenant_column"`
	Publication  string   `yaml:"publication"`
	Slot         string   `yaml:"slot"`
	// CopyWorkers is the number of connections of the initial copy.
	CopyWorkers int `yaml:"copy_workers"`
	// Heartbeat is the interval of the messages that move the replication
	// position on an idle database.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// FlushInterval bounds how long applied changes wait to become durable.
	FlushInterval time.Duration `yaml:"flush_interval"`
}

// Staging backends.
const (
	StagingLocal = "local"
	StagingS3    = "s3"
	StagingFS    = "fs"
)

// Staging is where staging lives. With backend s3 (or fs, a directory
// every replica mounts, for demos and tests on one machine) it is shared:
// data files, the manifest log, request states and the replicas'
// heartbeats live in the bucket, and state_dir only caches files.
type Staging struct {
	// Backend is local, s3 or fs; only the section of the backend may be set.
	Backend string  `yaml:"backend"`
	FS      FSStore `yaml:"fs"`
	S3      S3      `yaml:"s3"`
	// PollInterval is how often a replica that is not the writer looks for
	// the writer's newest staging version.
	PollInterval time.Duration `yaml:"poll_interval"`
	// DeleteDelay is how long files a staging version stopped using stay
	// in the bucket for exports on other replicas that still read them.
	DeleteDelay time.Duration `yaml:"delete_delay"`
}

// Shared reports whether staging is shared by several replicas.
func (s Staging) Shared() bool { return s.Backend == StagingS3 || s.Backend == StagingFS }

// Cluster configures the replicas that share staging.
type Cluster struct {
	// ReplicaID names this replica; it must be unique and stable across
	// restarts (a StatefulSet's pod name). Default: the host name.
	ReplicaID string `yaml:"replica_id"`
	// Heartbeat is how often a replica writes its heartbeat; TTL is how
	// long a replica's heartbeat may stand still before the others take
	// over its work (the slot, its requests).
	Heartbeat time.Duration `yaml:"heartbeat"`
	TTL       time.Duration `yaml:"ttl"`
}

// Export configures the rendering of exports.
type Export struct {
	// Spec is the path of the export spec; "" means the built-in one.
	Spec string `yaml:"spec"`
	// LinkTTL is how long download links stay valid, at most
	// storage.MaxLinkTTL.
	LinkTTL time.Duration `yaml:"link_ttl"`
	// CompressionLevel is the deflate level of zipped files, 1-9.
	CompressionLevel int `yaml:"compression_level"`
	// Concurrency is how many exports render at once.
	Concurrency int `yaml:"concurrency"`
	// PrerenderMinRows: a tenant's table with at least this many rows in
	// its base file keeps a prerendered CSV (pipeline.Prerenderer); 0: none.
	PrerenderMinRows int64 `yaml:"prerender_min_rows"`
	// Prefix is the key prefix of published exports.
	Prefix string `yaml:"prefix"`
}

// Store types.
const (
	StoreFS = "fs"
	StoreS3 = "s3"
)

// Store is an object store: a directory (Type fs) or an S3 bucket (Type
// s3). Only the section of its type may be set.
type Store struct {
	Type string  `yaml:"type"`
	FS   FSStore `yaml:"fs"`
	S3   S3      `yaml:"s3"`
}

// FSStore is a store in a local directory.
type FSStore struct {
	Dir string `yaml:"dir"`
}

// S3 is a store in an S3 bucket; see storage.S3Config for the meaning of
// each field.
type S3 struct {
	Bucket    string `yaml:"bucket"`
	Prefix    string `yaml:"prefix"`
	Region    string `yaml:"region"`
	Endpoint  string `yaml:"endpoint"`
	PathStyle bool   `yaml:"path_style"`
	// AccessKeyID and SecretAccessKey are static credentials; without them
	// the AWS SDK's default chain provides credentials.
	AccessKeyID         string `yaml:"access_key_id"`
	SecretAccessKey     Secret `yaml:"secret_access_key"`
	SecretAccessKeyFile string `yaml:"secret_access_key_file"`
	SessionToken        Secret `yaml:"session_token"`
	SessionTokenFile    string `yaml:"session_token_file"`
	SSE                 string `yaml:"sse"`
	SSEKMSKeyID         string `yaml:"sse_kms_key_id"`
	RequestChecksum     string `yaml:"request_checksum"`
	PartSize            int64  `yaml:"part_size"`
	Concurrency         int    `yaml:"concurrency"`
}

// StorageConfig returns s as a storage.S3Config, secrets revealed.
func (s S3) StorageConfig() storage.S3Config {
	return storage.S3Config{
		Bucket:          s.Bucket,
		Prefix:          s.Prefix,
		Region:          s.Region,
		Endpoint:        s.Endpoint,
		PathStyle:       s.PathStyle,
		AccessKeyID:     s.AccessKeyID,
		SecretAccessKey: s.SecretAccessKey.Reveal(),
		SessionToken:    s.SessionToken.Reveal(),
		SSE:             s.SSE,
		SSEKMSKeyID:     s.SSEKMSKeyID,
		RequestChecksum: s.RequestChecksum,
		PartSize:        s.PartSize,
		Concurrency:     s.Concurrency,
	}
}

// Publish is the store exports are published to.
type Publish struct {
	Store `yaml:",inline"`
	// LinkSecret signs the download links of a filesystem store (at least
	// storage.MinSignerSecretLen bytes). Every exportd serving the links
	// must share it.
	LinkSecret     Secret `yaml:"link_secret"`
	LinkSecretFile string `yaml:"link_secret_file"`
}

// Kafka configures the consumer of export requests. Without brokers there
// is none.
type Kafka struct {
	Brokers         []string `yaml:"brokers"`
	Group           string   `yaml:"group"`
	RequestTopic    string   `yaml:"request_topic"`
	ResultTopic     string   `yaml:"result_topic"`
	DeadLetterTopic string   `yaml:"dead_letter_topic"`
	// FenceTimeout bounds the wait for staging to reach a request's fence.
	FenceTimeout time.Duration `yaml:"fence_timeout"`
	// ParkExpiry is how long a parked request is kept before it fails.
	ParkExpiry      time.Duration `yaml:"park_expiry"`
	MaxMessageBytes int           `yaml:"max_message_bytes"`
}

// SMTP modes, the values of SMTP.TLS.
const (
	SMTPTLSNone     = "none"
	SMTPTLSStartTLS = "starttls"
	SMTPTLSImplicit = "tls"
)

// SMTP configures the mail server that notifications go through. Without
// an address there are none.
type SMTP struct {
	// Addr is the server's host:port.
	Addr         string `yaml:"addr"`
	From         string `yaml:"from"`
	Username     string `yaml:"username"`
	Password     Secret `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// TLS is none, starttls or tls (implicit TLS, usually on port 465).
	TLS string `yaml:"tls"`
}

// Default returns the configuration with every default and nothing else
// set. The defaults are here and nowhere else.
func Default() *Config {
	s3 := S3{
		RequestChecksum: storage.RequestChecksumWhenSupported,
		PartSize:        storage.DefaultS3PartSize,
		Concurrency:     storage.DefaultS3Concurrency,
	}
	return &Config{
		StateDir:  "./exportd-state",
		LogLevel:  "info",
		LogFormat: "text",
		HTTP: HTTP{
			Addr:          "127.0.0.1:8080",
			ShutdownGrace: 30 * time.Second,
		},
		Postgres: Postgres{
			Tables:        refschema.Tables(),
			TenantColumn:  refschema.TenantColumn,
			Publication:   "exportd",
			Slot:          "exportd",
			CopyWorkers:   2,
			Heartbeat:     10 * time.Second,
			FlushInterval: 200 * time.Millisecond,
		},
		Staging: Staging{
			Backend:      StagingLocal,
			S3:           s3,
			PollInterval: 200 * time.Millisecond,
			DeleteDelay:  time.Hour,
		},
		Cluster: Cluster{
			Heartbeat: time.Second,
			TTL:       5 * time.Second,
		},
		Export: Export{
			LinkTTL:          storage.DefaultLinkTTL,
			CompressionLevel: 1,
			Concurrency:      2,
			PrerenderMinRows: 100_000,
			Prefix:           "exports",
		},
		Files:   Store{S3: s3},
		Publish: Publish{Store: Store{S3: s3}},
		Kafka: Kafka{
			Group:           "exportd",
			RequestTopic:    "exportd.requests",
			ResultTopic:     "exportd.results",
			DeadLetterTopic: "exportd.requests.dlq",
			FenceTimeout:    60 * time.Second,
			ParkExpiry:      720 * time.Hour,
			MaxMessageBytes: 64 << 10,
		},
		SMTP: SMTP{TLS: SMTPTLSStartTLS},
	}
}

// Load reads the configuration: the defaults, then the YAML file at path
// (none if path is ""), then the environment variables that env returns
// (os.Getenv; nil means none), then the secrets of *_file keys. It does not
// validate the result: apply any flags (Flags.Apply), then call Validate.
// The error joins every problem found.
func Load(path string, env func(string) string) (*Config, error) {
	var data []byte
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	return load(path, data, env)
}

// load is Load with the file's content read.
func load(path string, data []byte, env func(string) string) (*Config, error) {
	c := Default()
	c.src = &sources{file: path, at: map[string]string{}}
	var errs []error
	if path != "" {
		errs = append(errs, c.decodeYAML(path, data)...)
	}
	if env != nil {
		errs = append(errs, c.applyEnv(env)...)
	}
	errs = append(errs, c.readSecretFiles()...)
	c.derive()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// derive fills in the defaults computed from other keys, unless they were
// set.
func (c *Config) derive() {
	if c.src.origin("http.public_url") == "" {
		c.HTTP.PublicURL = defaultPublicURL(c.HTTP.Addr)
	}
	if c.src.origin("cluster.replica_id") == "" {
		if h, err := os.Hostname(); err == nil {
			c.Cluster.ReplicaID = h
		}
	}
}

// defaultPublicURL is http.public_url's default for http.addr addr.
func defaultPublicURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// Level returns log_level as a slog.Level (info if it is not valid).
func (c *Config) Level() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return slog.LevelInfo
	}
	return l
}

//go:embed example.yaml
var example []byte

// Example returns a commented example configuration file that documents
// every key. With the secrets it asks for in the environment, it is valid.
func Example() []byte { return append([]byte(nil), example...) }
