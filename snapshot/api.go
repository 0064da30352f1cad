// Package snapshot owns exportd's staging: a transaction-consistent copy of every
// tenant's rows of the replicated tables, kept as Parquet files under a state
// directory.
//
// Layout: immutable base files, one per (tenant, table), sorted by primary key,
// with real column names; delta segments, one per spill or commit, holding the
// changes of many tenants and tables sorted by (table, tenant, key, seq); a
// local metadata store (pebble) holding the manifest (which files make up the
// current version, the applied LSN, table schemas) and the key-to-tenant index
// needed for tables whose key does not hold the tenant id. A background
// compactor merges segments and folds them into base files so the number of
// files and the cost of a read stay bounded.
//
// Every staged value is PostgreSQL's text output for it (as COPY prints it
// with the session settings pinned by package cdc), or NULL. Writers are the
// initial Load and the streaming Batch; readers Pin a Version and Scan one
// tenant's table in primary-key order while apply goes on.
//
// # Change semantics
//
// A row's identity is (table, primary key); its tenant is the value of the
// table's tenant column.
//
//   - Insert upserts the row into its tenant. The key is assumed not to be in
//     use in another tenant (PostgreSQL enforces the primary key).
//   - Update(old, row, unchanged): old is nil when pgoutput sent no old tuple
//     (key unchanged), else the old key tuple (nil except the key columns) or
//     the full old row (REPLICA IDENTITY FULL). The old key comes from old if
//     non-nil, else from row; the previous tenant from old's tenant column if
//     non-nil, else from the key if it holds the tenant column, else from the
//     key-to-tenant index. If key or tenant changed, the old row disappears.
//     unchanged[i] (an unchanged TOASTed value; row[i] is ignored) takes the
//     value from the row's previous version, also across a tenant move; if
//     there is no previous row the error wraps ErrInconsistent.
//   - Delete(old) removes the row (tenant found as for Update); a row that
//     is not staged is ignored.
//   - Truncate removes all rows of a table in all tenants.
//   - SetSchema changes a table's columns, matched by name: added columns
//     read as NULL for older rows, dropped ones disappear, and a column
//     dropped and re-added does not bring old values back (each column has a
//     "since" sequence). The key and tenant columns must not change.
//
// Values of unchanged columns are resolved when the Update is applied (from
// the batch's own changes, its spilled runs, the segments and the base file),
// so every staged change is a complete row or a deletion.
//
// # Durability
//
// Data files are written under new names (objects), made durable, and only
// then referenced by a synced manifest edit in pebble (the commit marker);
// Open removes every data file the manifest does not reference, finishes or
// discards pending index updates and drops index entries of unknown tables.
//
// # Shared staging
//
// With Options.Shared the same store lives in a bucket several replicas
// share (shared.go): data files are uploaded before the manifest entry that
// names them is appended to a log in the bucket with a conditional write,
// which is the commit. One replica, the writer (Store.Acquire), writes; the
// others follow the log, and a writer another replica took over from is
// fenced: its commits fail with ErrFenced.
package snapshot

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// LSN is a PostgreSQL write-ahead log position.
type LSN uint64

// String prints the position as PostgreSQL does, e.g. "16/B374D848".
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// ParseLSN parses a position as String prints it.
func ParseLSN(s string) (LSN, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		return 0, fmt.Errorf("parse LSN %q: %w", s, err)
	}
	return LSN(uint64(hi)<<32 | uint64(lo)), nil
}

// Column is one column of a staged table.
type Column struct {
	Name    string `json:"name"`
	TypeOID uint32 `json:"type_oid"`
}

// TableSchema describes one replicated table as it is now.
type TableSchema struct {
	// Name is the schema-qualified table name, e.g. "public.candidates".
	Name string `json:"name"`
	// Columns in attribute order: the order of COPY's output and of pgoutput tuples.
	Columns []Column `json:"columns"`
	// KeyColumns are indexes into Columns, in primary-key order. Supported key
	// types: int2, int4, int8, uuid, text, varchar, bpchar.
	KeyColumns []int `json:"key_columns"`
	// TenantColumn is the index into Columns of the tenant id (int2, int4, int8, uuid or text).
	TenantColumn int `json:"tenant_column"`
}

// Row is one row: a value per column of the table's current schema, each
// PostgreSQL's text output, nil for NULL (an empty non-nil slice is the empty
// string). The store copies what it keeps: callers may reuse the memory.
type Row = [][]byte

// Options configures a Store. Zero values take the defaults.
type Options struct {
	Logger     *slog.Logger          // default slog.Default()
	Registerer prometheus.Registerer // nil: metrics are not registered
	// MemoryLimit bounds the bytes of pending changes held in memory by a Batch
	// or Load before they are spilled to disk (default 64 MiB). It counts row
	// data plus per-change overhead (entries, hash slots, sort references,
	// key-to-tenant index updates); a Load uses half for the chunks being
	// filled and half for the run being written.
	MemoryLimit int64
	// CompactInterval is how often the background compactor looks for work
	// (default 1s). Compaction never blocks a Commit for long.
	CompactInterval time.Duration
	// NoCompaction turns the background compactor off, for tools that only
	// read a store (compaction would compete with them for memory and CPU).
	NoCompaction bool
	// Compression of base files: "zstd" (default; fastest level), "snappy"
	// or "none".
	Compression string
	// SegmentCompression of delta segments (default "snappy": they are
	// transient and point lookups decode their pages).
	SegmentCompression string
	// LoadCompression of the runs an initial snapshot spills: "auto"
	// (default), "none", "snappy" or "zstd". The runs are written once and
	// read once, by the fold into base files, so compressing them costs the
	// load CPU it shares with the database it copies from, for disk space
	// held only until the fold. "auto" writes them uncompressed unless the
	// staging volume's free space is short of 2.5 times the size the
	// load expects (Load.SizeHint), and then as snappy.
	LoadCompression string
	// MetaCacheSize is the block cache of the metadata store, which holds the
	// key-to-tenant index; its 8 MiB memtables are reserved from it (default
	// 48 MiB).
	MetaCacheSize int64
	// MaxOpenFiles bounds the data files kept open while unused (default 256).
	MaxOpenFiles int
	// Shared, if set, keeps staging in a bucket shared by several replicas
	// (see shared.go); dir then only caches data files and holds the
	// key-to-tenant index. The store opens as a follower; Acquire makes it
	// the writer.
	Shared *SharedOptions

	// hook, if set (tests only), is called at named points of Commit and
	// compaction; an error simulates a crash there.
	hook func(point string) error
	// policy overrides the compaction thresholds (tests only; zero: defaults).
	policy policy
}

// ErrInconsistent reports that a change cannot be applied to the staged data
// (e.g. an update with unchanged TOAST values whose previous row is not
// staged, or a changed primary key definition): staged data and the change
// stream disagree and the tables must be snapshotted again.
var ErrInconsistent = errors.New("staged data inconsistent with change stream")

// ErrClosed is returned by operations on a closed Store.
var ErrClosed = errors.New("snapshot store closed")

// ErrBusy is returned when a Batch or Load is already open.
var ErrBusy = errors.New("a batch or load is already open")

// Stats describes the store's current files and activity.
type Stats struct {
	LSN            LSN
	Tables         int
	Files          int   // data files of the current version
	Bytes          int64 // their total size
	Segments       int
	SegmentBytes   int64
	BaseFiles      int
	BaseBytes      int64
	ObsoleteFiles  int // files kept only for pinned versions
	OpenFiles      int
	PinnedVersions int
	// Pending changes and bytes of the open Batch (0 without one).
	Pending      int
	PendingBytes int64
	Commits      int64
	Compactions  int64 // merges + folds
	Merges       int64
	Folds        int64
	SpilledBytes int64
}

// State is the store's durable position.
type State struct {
	// LSN: every change up to here is applied, durable and visible to Pin.
	// This is the position that may be confirmed to the replication slot.
	LSN LSN
	// SnapshotDone reports whether an initial Load has been committed.
	SnapshotDone bool
	// Slot is the replication slot the committed Load was taken with.
	Slot string
}
