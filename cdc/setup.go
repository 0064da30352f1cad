package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/exportd/exportd/snapshot"
)

// Errors a supervisor acts on. Each is wrapped with a message that names the fix.
var (
	// ErrSetup: the database or its tables are not fit for logical replication
	// as configured; an operator has to change something.
	ErrSetup = errors.New("replication setup")
	// ErrSlotLost: the replication slot was dropped or invalidated, so changes
	// were lost; staging must be rebuilt from a fresh snapshot.
	ErrSlotLost = errors.New("replication slot lost")
	// ErrSlotInUse: another process streams from the slot (another exportd
	// holds it); this one waits as a standby.
	ErrSlotInUse = errors.New("replication slot in use")
)

func setupErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrSetup, fmt.Sprintf(format, args...))
}

// Key and tenant column types the staging can order and partition by.
var keyTypes = map[uint32]string{20: "int8", 21: "int2", 23: "int4", 25: "text", 1043: "varchar", 1042: "bpchar", 2950: "uuid"}

// checkServer verifies wal_level and the role's REPLICATION attribute.
func checkServer(ctx context.Context, conn *pgx.Conn) error {
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return setupErr("wal_level is %q but logical replication needs \"logical\": run ALTER SYSTEM SET wal_level = logical (or set it in postgresql.conf) and restart PostgreSQL", walLevel)
	}
	var role string
	var canReplicate bool
	if err := conn.QueryRow(ctx, "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&role, &canReplicate); err != nil {
		return fmt.Errorf("read role attributes: %w", err)
	}
	if !canReplicate {
		return setupErr("role %q lacks the REPLICATION attribute: run ALTER ROLE %s WITH REPLICATION (as a superuser), or connect as a role that has it", role, pgx.Identifier{role}.Sanitize())
	}
	return nil
}

// describeTables reads each configured table's columns, primary key and replica
// identity from the catalog, and checks they can be replicated faithfully.
func describeTables(ctx context.Context, conn *pgx.Conn, cfg Config) ([]snapshot.TableSchema, error) {
	out := make([]snapshot.TableSchema, 0, len(cfg.Tables))
	for _, name := range cfg.Tables {
		ts, err := describeTable(ctx, conn, qualified(name), cfg.TenantColumn)
		if err != nil {
			return nil, err
		}
		out = append(out, ts)
	}
	return out, nil
}

func describeTable(ctx context.Context, conn *pgx.Conn, name, tenantColumn string) (snapshot.TableSchema, error) {
	schema, table, _ := splitTable(name)
	var (
		oid       uint32
		relkind   string
		replIdent string
	)
	err := conn.QueryRow(ctx, `SELECT c.oid, c.relkind::text, c.relreplident::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, schema, table).Scan(&oid, &relkind, &replIdent)
	if errors.Is(err, pgx.ErrNoRows) {
		return snapshot.TableSchema{}, setupErr("table %s does not exist: create it, or remove it from the configured tables", name)
	}
	if err != nil {
		return snapshot.TableSchema{}, fmt.Errorf("describe table %s: %w", name, err)
	}
	if relkind != "r" {
		return snapshot.TableSchema{}, setupErr("%s is not an ordinary table (relkind %q): only ordinary tables can be replicated; remove it from the configured tables", name, relkind)
	}
	ts := snapshot.TableSchema{Name: name, TenantColumn: -1}
	rows, err := conn.Query(ctx, `SELECT attname, atttypid FROM pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, oid)
	if err != nil {
		return snapshot.TableSchema{}, fmt.Errorf("read columns of %s: %w", name, err)
	}
	for rows.Next() {
		var c snapshot.Column
		if err := rows.Scan(&c.Name, &c.TypeOID); err != nil {
			return snapshot.TableSchema{}, fmt.Errorf("read columns of %s: %w", name, err)
		}
		if c.Name == tenantColumn {
			ts.TenantColumn = len(ts.Columns)
		}
		ts.Columns = append(ts.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return snapshot.TableSchema{}, fmt.Errorf("read columns of %s: %w", name, err)
	}
	if ts.TenantColumn < 0 {
		return snapshot.TableSchema{}, setupErr("table %s has no tenant column %q: every replicated table must carry the tenant id (or configure another tenant column)", name, tenantColumn)
	}
	if t := ts.Columns[ts.TenantColumn].TypeOID; keyTypes[t] == "" {
		return snapshot.TableSchema{}, setupErr("tenant column %s.%s has type oid %d: use bigint, integer, smallint, uuid or text", name, tenantColumn, t)
	}

	var pkCols []string
	var pkIndex uint32
	err = conn.QueryRow(ctx, `SELECT i.indexrelid, array_agg(a.attname ORDER BY k.ord)
		FROM pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1 AND i.indisprimary
		GROUP BY i.indexrelid`, oid).Scan(&pkIndex, &pkCols)
	if errors.Is(err, pgx.ErrNoRows) {
		return snapshot.TableSchema{}, setupErr("table %s has no primary key, so it has no replica identity to find rows by: add one (ALTER TABLE %s ADD PRIMARY KEY (...))", name, name)
	}
	if err != nil {
		return snapshot.TableSchema{}, fmt.Errorf("read primary key of %s: %w", name, err)
	}
	for _, col := range pkCols {
		i := slices.IndexFunc(ts.Columns, func(c snapshot.Column) bool { return c.Name == col })
		if i < 0 {
			return snapshot.TableSchema{}, fmt.Errorf("read primary key of %s: column %q not found", name, col)
		}
		if keyTypes[ts.Columns[i].TypeOID] == "" {
			return snapshot.TableSchema{}, setupErr("primary key column %s.%s has type oid %d: exportd orders rows by keys of type bigint, integer, smallint, uuid or text only", name, col, ts.Columns[i].TypeOID)
		}
		ts.KeyColumns = append(ts.KeyColumns, i)
	}
	switch replIdent {
	case "d", "f":
	case "n":
		return snapshot.TableSchema{}, setupErr("table %s has REPLICA IDENTITY NOTHING, so updates and deletes carry no key: run ALTER TABLE %s REPLICA IDENTITY DEFAULT", name, name)
	case "i":
		var identIndex uint32
		if err := conn.QueryRow(ctx, `SELECT indexrelid FROM pg_index WHERE indrelid = $1 AND indisreplident`, oid).Scan(&identIndex); err != nil {
			return snapshot.TableSchema{}, fmt.Errorf("read replica identity of %s: %w", name, err)
		}
		if identIndex != pkIndex {
			return snapshot.TableSchema{}, setupErr("table %s uses REPLICA IDENTITY USING INDEX on an index other than its primary key, so deletes would not name the primary key: run ALTER TABLE %s REPLICA IDENTITY DEFAULT (or FULL)", name, name)
		}
	}
	return ts, nil
}

// ensurePublication creates the publication for the configured tables, or
// adopts an existing one after checking it publishes every change of every
// configured table in full.
func ensurePublication(ctx context.Context, conn *pgx.Conn, cfg Config) (created bool, err error) {
	var ins, upd, del, trunc, viaRoot bool
	err = conn.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot FROM pg_publication WHERE pubname = $1`,
		cfg.Publication).Scan(&ins, &upd, &del, &trunc, &viaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		idents := make([]string, 0, len(cfg.Tables))
		for _, t := range cfg.Tables {
			s, n, _ := splitTable(t)
			idents = append(idents, pgx.Identifier{s, n}.Sanitize())
		}
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", pgx.Identifier{cfg.Publication}.Sanitize(), strings.Join(idents, ", "))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return false, fmt.Errorf("create publication %s (the role must own the tables, or create it yourself: %s): %w", cfg.Publication, sql, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read publication %s: %w", cfg.Publication, err)
	}
	if !ins || !upd || !del || !trunc {
		return false, setupErr("publication %q does not publish every kind of change (insert %t, update %t, delete %t, truncate %t), so staging would miss changes: run ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate')",
			cfg.Publication, ins, upd, del, trunc, pgx.Identifier{cfg.Publication}.Sanitize())
	}
	type pubTable struct {
		filtered, partial bool
	}
	published := map[string]pubTable{}
	rows, err := conn.Query(ctx, `SELECT pt.schemaname || '.' || pt.tablename, pt.rowfilter IS NOT NULL,
			pt.attnames IS NOT NULL AND cardinality(pt.attnames) <> (SELECT count(*) FROM pg_attribute a
				WHERE a.attrelid = format('%I.%I', pt.schemaname, pt.tablename)::regclass AND a.attnum > 0 AND NOT a.attisdropped)
		FROM pg_publication_tables pt WHERE pt.pubname = $1`, cfg.Publication)
	if err != nil {
		return false, fmt.Errorf("read tables of publication %s: %w", cfg.Publication, err)
	}
	for rows.Next() {
		var name string
		var pt pubTable
		if err := rows.Scan(&name, &pt.filtered, &pt.partial); err != nil {
			return false, fmt.Errorf("read tables of publication %s: %w", cfg.Publication, err)
		}
		published[name] = pt
	}
	if err := rows.Err(); err != nil {
		return false, fmt.Errorf("read tables of publication %s: %w", cfg.Publication, err)
	}
	for _, t := range cfg.Tables {
		name := qualified(t)
		pt, ok := published[name]
		switch {
		case !ok:
			s, n, _ := splitTable(t)
			return false, setupErr("publication %q exists but does not include table %s: run ALTER PUBLICATION %s ADD TABLE %s (or drop the publication and let exportd create it)",
				cfg.Publication, name, pgx.Identifier{cfg.Publication}.Sanitize(), pgx.Identifier{s, n}.Sanitize())
		case pt.filtered:
			return false, setupErr("publication %q publishes table %s with a row filter, so staging would miss rows: remove the WHERE clause (ALTER PUBLICATION ... SET TABLE %s)", cfg.Publication, name, name)
		case pt.partial:
			return false, setupErr("publication %q publishes only some columns of table %s: publish all columns (ALTER PUBLICATION ... SET TABLE %s)", cfg.Publication, name, name)
		}
	}
	return false, nil
}

// slotInfo is what pg_replication_slots says of exportd's slot.
type slotInfo struct {
	Exists         bool
	Plugin         string
	Database       string
	Active         bool
	WALStatus      string
	ConfirmedFlush snapshot.LSN
	RetainedBytes  int64
}

func readSlot(ctx context.Context, conn *pgx.Conn, slot string) (slotInfo, error) {
	var (
		si        slotInfo
		plugin    *string
		database  *string
		walStatus *string
		confirmed *string
		retained  *int64
	)
	err := conn.QueryRow(ctx, `SELECT plugin, database, active, wal_status, confirmed_flush_lsn::text,
			(pg_current_wal_lsn() - restart_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&plugin, &database, &si.Active, &walStatus, &confirmed, &retained)
	if errors.Is(err, pgx.ErrNoRows) {
		return si, nil
	}
	if err != nil {
		return si, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	si.Exists = true
	si.Plugin, si.Database, si.WALStatus = deref(plugin), deref(database), deref(walStatus)
	if retained != nil {
		si.RetainedBytes = *retained
	}
	if confirmed != nil {
		lsn, err := parseLSN(*confirmed)
		if err != nil {
			return si, fmt.Errorf("read replication slot %s: %w", slot, err)
		}
		si.ConfirmedFlush = lsn
	}
	return si, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
