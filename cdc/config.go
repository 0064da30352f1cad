package cdc

import (
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Config says which database and tables to replicate and how.
type Config struct {
	// ConnString reaches the platform's PostgreSQL as a role with REPLICATION
	// (and, for the publication to be created, ownership of the tables).
	ConnString string
	// Tables are the schema-qualified tables to replicate, e.g. "public.candidates".
	Tables []string
	// TenantColumn names the tenant id column every table carries (default "tenant_id").
	TenantColumn string
	// Publication and Slot name the publication and the logical replication slot
	// (default "exportd" both).
	Publication string
	Slot        string
	// CopyWorkers is the number of connections copying tables in parallel
	// during the initial snapshot (default 2).
	CopyWorkers int
	// FlushInterval bounds how long applied changes wait before they are made
	// durable and visible (default 200ms). FlushChanges commits earlier once that
	// many changes are pending (default 50,000).
	FlushInterval time.Duration
	FlushChanges  int
	// StatusInterval is how often the durable position is confirmed to the
	// server when nothing else prompts it (default 5s).
	StatusInterval time.Duration
	// HeartbeatInterval is how often exportd writes a logical decoding message
	// (pg_logical_emit_message) so an idle database or traffic on other tables
	// still moves the applied position (default 10s; 0 keeps the default, a
	// negative value disables it).
	HeartbeatInterval time.Duration
	// SlotCheckInterval is how often the slot's health (WAL retained, lost) is
	// read for metrics (default 15s).
	SlotCheckInterval time.Duration
	// ReconnectMin and ReconnectMax bound the exponential backoff between
	// reconnection attempts (default 500ms and 30s).
	ReconnectMin time.Duration
	ReconnectMax time.Duration
	// StandbyPoll is how often a standby of shared staging checks whether it
	// may take over as the writer (default 250ms).
	StandbyPoll time.Duration
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_$]{0,62}$`)

// withDefaults returns cfg with zero values replaced by defaults, or an error
// naming the first invalid field.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.TenantColumn == "" {
		cfg.TenantColumn = "tenant_id"
	}
	if cfg.Publication == "" {
		cfg.Publication = "exportd"
	}
	if cfg.Slot == "" {
		cfg.Slot = "exportd"
	}
	if cfg.CopyWorkers <= 0 {
		cfg.CopyWorkers = 2
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 200 * time.Millisecond
	}
	if cfg.FlushChanges <= 0 {
		cfg.FlushChanges = 50_000
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 5 * time.Second
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 10 * time.Second
	}
	if cfg.SlotCheckInterval <= 0 {
		cfg.SlotCheckInterval = 15 * time.Second
	}
	if cfg.ReconnectMin <= 0 {
		cfg.ReconnectMin = 500 * time.Millisecond
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = 30 * time.Second
	}
	if cfg.StandbyPoll <= 0 {
		cfg.StandbyPoll = 250 * time.Millisecond
	}
	var errs []error
	if cfg.ConnString == "" {
		errs = append(errs, errors.New("connection string is empty"))
	}
	if len(cfg.Tables) == 0 {
		errs = append(errs, errors.New("tables: no table to replicate"))
	}
	for _, name := range []struct{ key, v string }{{"publication", cfg.Publication}, {"slot", cfg.Slot}, {"tenant column", cfg.TenantColumn}} {
		if !identRE.MatchString(name.v) {
			errs = append(errs, fmt.Errorf("%s %q: use lowercase letters, digits and _ (at most 63)", name.key, name.v))
		}
	}
	seen := map[string]bool{}
	for _, t := range cfg.Tables {
		if _, _, err := splitTable(t); err != nil {
			errs = append(errs, fmt.Errorf("tables: %w", err))
		}
		if seen[t] {
			errs = append(errs, fmt.Errorf("tables: %q listed twice", t))
		}
		seen[t] = true
	}
	return cfg, errors.Join(errs...)
}

// splitTable splits "schema.table" (schema defaults to public).
func splitTable(name string) (schema, table string, err error) {
	schema, table = "public", name
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			schema, table = name[:i], name[i+1:]
			break
		}
	}
	if !identRE.MatchString(schema) || !identRE.MatchString(table) {
		return "", "", fmt.Errorf("table %q: want schema.table in lowercase letters, digits and _", name)
	}
	return schema, table, nil
}

// qualified returns the canonical "schema.table" form of name.
func qualified(name string) string {
	s, t, err := splitTable(name)
	if err != nil {
		return name
	}
	return s + "." + t
}
