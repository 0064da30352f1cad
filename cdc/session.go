package cdc

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SessionSettings are pinned on every connection exportd opens to PostgreSQL,
// replication and COPY alike, so that every value's text output is the same as
// what COPY prints with these settings: the staged text is the exported text.
func SessionSettings() map[string]string {
	return map[string]string{
		"DateStyle":          "ISO, YMD",
		"TimeZone":           "UTC",
		"IntervalStyle":      "postgres",
		"extra_float_digits": "1",
		"bytea_output":       "hex",
		"client_encoding":    "UTF8",
		"application_name":   "exportd",
	}
}

// ConnConfig parses connString and pins SessionSettings on it.
func ConnConfig(connString string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse connection string: %w", redactErr(err))
	}
	for k, v := range SessionSettings() {
		cfg.RuntimeParams[k] = v
	}
	return cfg, nil
}

// replicationConfig parses connString for a logical replication connection.
func replicationConfig(connString string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse connection string: %w", redactErr(err))
	}
	for k, v := range SessionSettings() {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "exportd_replication"
	return cfg, nil
}

// redactErr keeps a connection-string parse error from carrying a password
// into logs: pgconn's parse errors quote the string they failed on.
func redactErr(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		if inner := errors.Unwrap(pe); inner != nil {
			return fmt.Errorf("invalid connection string (not shown: it may hold a password): %w", inner)
		}
		return errors.New("invalid connection string (not shown: it may hold a password)")
	}
	return err
}
