package gen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/internal/refschema"
)

// Workload is a random concurrent write workload on a database loaded by
// Load: Workers goroutines, each on its own connection, run transactions of
// 1 to MaxStatements random statements (inserts, updates, deletes, tenant
// moves) on every table of the reference schema, and a few one-off schema
// events happen during the run. Half of the transactions run each statement
// in a savepoint: a statement that loses a race (deadlock, key or foreign
// key conflict, a column dropped meanwhile) is rolled back to it and
// skipped; in the other half such a loss aborts the transaction, which is
// counted and not retried. Updates set any column but keys, foreign keys
// and an attachment's object description, so they may pay or void an open
// invoice. The same Seed gives the same random choices per worker, though
// concurrency makes the outcome vary.
type Workload struct {
	// Seed determines each worker's random choices.
	Seed int64
	// Tenants are the tenants written to and moved between (default: every
	// tenant in the tenants table).
	Tenants []int64
	// Workers is the number of concurrent writers (default 4).
	Workers int
	// Duration bounds the run (0: until ctx is done).
	Duration time.Duration
	// MaxStatements is the largest number of statements per transaction
	// (default 20).
	MaxStatements int
	// RollbackFraction is the fraction of transactions rolled back at the end
	// instead of committed (default 0.05; negative: none).
	RollbackFraction float64
	// BigNoteFraction is the fraction of generated notes that are large and
	// TOASTed (default 0.02; negative: none).
	BigNoteFraction float64
	// Files, if not nil, stores the file of each attachment inserted, before
	// the row. Updates never change an attachment's object_key, size_bytes
	// or sha256.
	Files ObjectPutter

	// TruncateTable, if set, is a table of refschema.Tables that no foreign
	// key references (e.g. "public.tasks"), truncated once midway.
	TruncateTable string
	// AddColumn, if set, is a table of refschema.Tables to which a text
	// column ExtraColumn is added early in the run; writers then set it in
	// some inserts and updates of that table.
	AddColumn string
	// DropColumn drops the AddColumn column again late in the run.
	DropColumn bool
	// ExtraColumn is the name of the added column (default "workload_extra").
	ExtraColumn string
	// EventInterval spaces the schema events when Duration is 0: the column
	// is added after one interval, the table truncated after two and the
	// column dropped after three (default 1s). With a Duration they happen
	// at 1/4, 1/2 and 3/4 of it.
	EventInterval time.Duration

	// Logger receives progress (default slog.Default()).
	Logger *slog.Logger
}

// WorkloadStats counts what a Workload did. Statement counts include only
// committed statements that changed at least one row.
type WorkloadStats struct {
	Commits   int64
	Rollbacks int64 // transactions deliberately rolled back
	Inserts   int64
	Updates   int64 // updates other than those counted below
	// ToastUpdates update a small column of a row whose notes are stored out
	// of line, so pgoutput sends the notes as "unchanged TOAST".
	ToastUpdates int64
	Deletes      int64
	// TenantMoves change tenant_id on a table whose key lacks it
	// (audit_logs, attachments).
	TenantMoves int64
	// TenantKeyMoves change tenant_id on a table whose key holds it: a key change.
	TenantKeyMoves int64
	// ExtraColumnWrites are inserts and updates that set the added column.
	ExtraColumnWrites int64
	// Skipped statements lost a race (deadlock, conflict, dropped column)
	// and were rolled back to their savepoint.
	Skipped int64
	// Aborted transactions lost a race outside a savepoint and were rolled back.
	Aborted int64
	// Schema events done.
	Truncates   int64
	AddColumns  int64
	DropColumns int64
	// ByTable counts committed statements per table.
	ByTable map[string]int64
}

func (s *WorkloadStats) add(o *WorkloadStats) {
	s.Commits += o.Commits
	s.Rollbacks += o.Rollbacks
	s.Inserts += o.Inserts
	s.Updates += o.Updates
	s.ToastUpdates += o.ToastUpdates
	s.Deletes += o.Deletes
	s.TenantMoves += o.TenantMoves
	s.TenantKeyMoves += o.TenantKeyMoves
	s.ExtraColumnWrites += o.ExtraColumnWrites
	s.Skipped += o.Skipped
	s.Aborted += o.Aborted
	s.Truncates += o.Truncates
	s.AddColumns += o.AddColumns
	s.DropColumns += o.DropColumns
	if len(o.ByTable) > 0 && s.ByTable == nil {
		s.ByTable = make(map[string]int64, numTables)
	}
	for k, v := range o.ByTable {
		s.ByTable[k] += v
	}
}

func (w *Workload) withDefaults() (Workload, error) {
	c := *w
	if c.Workers == 0 {
		c.Workers = 4
	}
	if c.MaxStatements == 0 {
		c.MaxStatements = 20
	}
	if c.RollbackFraction == 0 {
		c.RollbackFraction = 0.05
	}
	if c.BigNoteFraction == 0 {
		c.BigNoteFraction = 0.02
	}
	if c.ExtraColumn == "" {
		c.ExtraColumn = "workload_extra"
	}
	if c.EventInterval == 0 {
		c.EventInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.Workers < 0:
		return c, fmt.Errorf("workers %d: must not be negative", c.Workers)
	case c.MaxStatements < 0:
		return c, fmt.Errorf("max statements %d: must not be negative", c.MaxStatements)
	case c.TruncateTable != "" && !slices.Contains(leafTables, tableIndex(c.TruncateTable)):
		return c, fmt.Errorf("truncate table %q: not a table of the schema that no foreign key references", c.TruncateTable)
	case c.AddColumn != "" && tableIndex(c.AddColumn) < 0:
		return c, fmt.Errorf("add column to %q: not a table of the schema", c.AddColumn)
	case c.DropColumn && c.AddColumn == "":
		return c, errors.New("drop column: needs AddColumn")
	case c.ExtraColumn != strings.ToLower(c.ExtraColumn) || slices.Contains(columns[max(tableIndex(c.AddColumn), 0)], c.ExtraColumn):
		return c, fmt.Errorf("extra column %q: must be a new lower-case name", c.ExtraColumn)
	}
	return c, nil
}

// leafTables are the tables that no foreign key references.
var leafTables = []int{tContacts, tJobPipelines, tTasks, tFolderRecords, tAttachments, tAuditLogs, tInvoices}

func tableIndex(name string) int {
	for t, n := range tableNames {
		if n == name {
			return t
		}
	}
	return -1
}

// seekColumn is the column that locates a random row of a tenant: the
// primary key column after tenant_id (or the id where the key lacks the
// tenant id).
var seekColumn = [numTables]string{
	tUsers: "id", tCompanies: "id", tContacts: "id", tCandidates: "id", tJobs: "id",
	tJobPipelines: "id", tTasks: "id", tFolders: "id", tFolderRecords: "folder_id",
	tAttachments: "id", tAuditLogs: "id", tInvoices: "number",
}

// refs are each table's foreign key columns (other than tenant_id) and the
// table they reference by id.
var refs = [numTables]map[string]int{
	tCompanies:     {"owner_id": tUsers},
	tContacts:      {"company_id": tCompanies, "owner_id": tUsers},
	tCandidates:    {"owner_id": tUsers},
	tJobs:          {"company_id": tCompanies, "hiring_manager_id": tUsers},
	tJobPipelines:  {"job_id": tJobs, "candidate_id": tCandidates},
	tTasks:         {"assignee_id": tUsers},
	tFolders:       {"owner_id": tUsers},
	tFolderRecords: {"folder_id": tFolders, "added_by": tUsers},
	tAttachments:   {"uploaded_by": tUsers},
}

// toastTables are the tables with a notes column that is sometimes large,
// with that column and a small column to update beside it.
var toastTables = []struct {
	t            int
	notes, small string
}{
	{tCandidates, "notes", "rating"},
	{tContacts, "notes", "is_primary"},
	{tTasks, "body", "priority"},
}

// keyMoveTables are tables whose key holds the tenant id, for key-changing
// tenant moves.
var keyMoveTables = []int{tCandidates, tContacts, tTasks, tJobPipelines, tCompanies, tFolderRecords}

// statements holds the SQL of every statement kind, built once per run.
type statements struct {
	insert      [numTables]string
	insertCols  [numTables][]int // indexes into columns[t] of the inserted values, in order
	insertRefs  [numTables][]int // referenced table of each ref placeholder, in order
	insertExtra string           // insert into AddColumn with the extra column
	update      [numTables][]string
	updateCol   [numTables][]int // value index into columns[t] of each update
	extraUpdate string
	toast       []string
	del         [numTables]string
	move        [numTables]string
}

// identity reports whether table t's id column is an identity the insert
// leaves to the database.
func identity(t int) bool { return slices.Contains(identityTables, t) }

func buildStatements(w *Workload) *statements {
	s := &statements{}
	extraTable := tableIndex(w.AddColumn)
	for t := range numTables {
		name := tableNames[t]
		key := refschema.PrimaryKey(name)
		seek := seekColumn[t]
		tenantParam := ""
		var cols, vals []string
		n := 0
		for i, c := range columns[t] {
			if c == "id" && identity(t) {
				continue
			}
			if target, ok := refs[t][c]; ok {
				// $n is a random id of the target table; the subquery picks
				// the tenant's first row at or after it (TENANT becomes the
				// tenant_id parameter below).
				n++
				cols = append(cols, c)
				vals = append(vals, fmt.Sprintf("(SELECT id FROM %s WHERE tenant_id = TENANT AND id >= $%d ORDER BY id LIMIT 1)", tableNames[target], n))
				s.insertRefs[t] = append(s.insertRefs[t], target)
				s.insertCols[t] = append(s.insertCols[t], -1)
				continue
			}
			n++
			if c == refschema.TenantColumn {
				tenantParam = "$" + strconv.Itoa(n)
			}
			cols = append(cols, c)
			vals = append(vals, "$"+strconv.Itoa(n))
			s.insertCols[t] = append(s.insertCols[t], i)
		}
		for i := range vals {
			vals[i] = strings.ReplaceAll(vals[i], "TENANT", tenantParam)
		}
		s.insert[t] = "INSERT INTO " + name + " (" + strings.Join(cols, ", ") + ") VALUES (" + strings.Join(vals, ", ") + ")"
		if t == extraTable {
			s.insertExtra = "INSERT INTO " + name + " (" + strings.Join(cols, ", ") + ", " + w.ExtraColumn +
				") VALUES (" + strings.Join(vals, ", ") + ", $" + strconv.Itoa(n+1) + ")"
		}

		// Updates locate a row by $1 = tenant and $2 = a seek value.
		where := " WHERE ctid = (SELECT ctid FROM " + name + " WHERE tenant_id = $1 AND " + seek + " >= $2 ORDER BY " + seek + " LIMIT 1)"
		touch := ""
		if slices.Contains(columns[t], "updated_at") {
			touch = ", updated_at = now()"
		}
		for i, c := range columns[t] {
			if c == refschema.TenantColumn || slices.Contains(key, c) || c == "created_at" || c == "updated_at" {
				continue
			}
			if t == tAttachments && (c == "object_key" || c == "size_bytes" || c == "sha256") {
				continue // files are immutable: these describe the stored object
			}
			if _, ok := refs[t][c]; ok {
				continue
			}
			s.update[t] = append(s.update[t], "UPDATE "+name+" SET "+c+" = $3"+touch+where)
			s.updateCol[t] = append(s.updateCol[t], i)
		}
		if t == extraTable {
			s.extraUpdate = "UPDATE " + name + " SET " + w.ExtraColumn + " = $3" + where
		}
		s.del[t] = "DELETE FROM " + name + where
		s.move[t] = "UPDATE " + name + " SET tenant_id = $3" + where
	}
	for _, tt := range toastTables {
		s.toast = append(s.toast, "UPDATE "+tableNames[tt.t]+" SET "+tt.small+" = $3 WHERE tenant_id = $1 AND id = $2")
	}
	return s
}

// idRange is the range of ids (or folder ids) of a tenant's rows in a table
// when the run started.
type idRange struct{ lo, hi int64 }

// toastRow is a row with a large notes value.
type toastRow struct {
	table  int // index into toastTables
	tenant int64
	id     int64
}

// runState is what the workers share; read-only but for the atomics.
type runState struct {
	w          Workload
	sql        *statements
	tenants    []int64
	ranges     [numTables]map[int64]idRange
	toastRows  []toastRow
	extraOn    atomic.Bool // the extra column exists and may be written
	extraTable int
}

// Run runs the workload against the database at connString until ctx is
// done or Duration has passed, and returns what was done. It returns an
// error only for failures that are not races between writers.
func (w Workload) Run(ctx context.Context, connString string) (_ WorkloadStats, err error) {
	cfg, err := w.withDefaults()
	if err != nil {
		return WorkloadStats{}, fmt.Errorf("check workload: %w", err)
	}
	logger := cfg.Logger.With("component", "gen.workload")
	// Schema events that fell due before the end are finished after it, with
	// the caller's context: the writers have stopped and the locks are free.
	eventCtx := ctx
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}

	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return WorkloadStats{}, fmt.Errorf("connect: %w", err)
	}
	defer func() {
		err = errors.Join(err, conn.Close(context.WithoutCancel(ctx)))
	}()
	st := &runState{w: cfg, sql: buildStatements(&cfg), extraTable: tableIndex(cfg.AddColumn)}
	if err := st.survey(ctx, conn); err != nil {
		if ctx.Err() != nil {
			return WorkloadStats{}, nil
		}
		return WorkloadStats{}, err
	}
	logger.InfoContext(ctx, "workload starting", "workers", cfg.Workers, "tenants", len(st.tenants), "toast_rows", len(st.toastRows))

	start := time.Now()
	stats := make([]WorkloadStats, cfg.Workers+1)
	g, gctx := errgroup.WithContext(ctx)
	for i := range cfg.Workers {
		g.Go(func() error { return st.worker(gctx, connString, i, &stats[i]) })
	}
	g.Go(func() error { return st.schemaEvents(gctx, eventCtx, conn, &stats[cfg.Workers]) })
	err = g.Wait()
	var total WorkloadStats
	for i := range stats {
		total.add(&stats[i])
	}
	logger.InfoContext(ctx, "workload done", "elapsed", time.Since(start), "commits", total.Commits,
		"inserts", total.Inserts, "updates", total.Updates, "deletes", total.Deletes, "skipped", total.Skipped)
	if err != nil {
		return total, fmt.Errorf("run workload: %w", err)
	}
	return total, nil
}

// survey reads the tenants, each tenant's id ranges and some rows with large
// notes.
func (st *runState) survey(ctx context.Context, conn *pgx.Conn) error {
	st.tenants = slices.Clone(st.w.Tenants)
	if len(st.tenants) == 0 {
		rows, err := conn.Query(ctx, "SELECT id FROM "+refschema.TenantsTable+" ORDER BY id")
		if err != nil {
			return fmt.Errorf("list tenants: %w", err)
		}
		if st.tenants, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return fmt.Errorf("list tenants: %w", err)
		}
	}
	if len(st.tenants) == 0 {
		return errors.New("list tenants: there are none")
	}
	for t := range numTables {
		st.ranges[t] = map[int64]idRange{}
		if t == tAttachments || t == tInvoices {
			continue // not integer keys: seek values are random
		}
		q := "SELECT tenant_id, min(" + seekColumn[t] + "), max(" + seekColumn[t] + ") FROM " + tableNames[t] +
			" WHERE tenant_id = ANY($1) GROUP BY tenant_id"
		rows, err := conn.Query(ctx, q, st.tenants)
		if err != nil {
			return fmt.Errorf("survey %s: %w", tableNames[t], err)
		}
		var tenant, lo, hi int64
		_, err = pgx.ForEachRow(rows, []any{&tenant, &lo, &hi}, func() error {
			st.ranges[t][tenant] = idRange{lo, hi}
			return nil
		})
		if err != nil {
			return fmt.Errorf("survey %s: %w", tableNames[t], err)
		}
	}
	for i, tt := range toastTables {
		rows, err := conn.Query(ctx, "SELECT tenant_id, id FROM "+tableNames[tt.t]+
			" WHERE octet_length("+tt.notes+") > 8192 AND tenant_id = ANY($1) ORDER BY tenant_id, id LIMIT 2000", st.tenants)
		if err != nil {
			return fmt.Errorf("find large notes in %s: %w", tableNames[tt.t], err)
		}
		var tenant, id int64
		_, err = pgx.ForEachRow(rows, []any{&tenant, &id}, func() error {
			st.toastRows = append(st.toastRows, toastRow{table: i, tenant: tenant, id: id})
			return nil
		})
		if err != nil {
			return fmt.Errorf("find large notes in %s: %w", tableNames[tt.t], err)
		}
	}
	return nil
}

// schedule returns when the n-th (1..3) schema event is due.
func (st *runState) schedule(n int) time.Duration {
	if st.w.Duration > 0 {
		return st.w.Duration * time.Duration(n) / 4
	}
	return st.w.EventInterval * time.Duration(n)
}

// schemaEvents adds the extra column, truncates the table and drops the
// column at their times, while ctx lasts. An event that fell due is done, and
// retried until it succeeds, while execCtx lasts.
func (st *runState) schemaEvents(ctx, execCtx context.Context, conn *pgx.Conn, stats *WorkloadStats) error {
	w := &st.w
	if w.AddColumn == "" && w.TruncateTable == "" {
		return nil
	}
	// Waiting for its lock, an ALTER or TRUNCATE holds up every writer of the
	// table, and may deadlock with them until deadlock_timeout: give up soon
	// and try again instead.
	if _, err := conn.Exec(ctx, "SET lock_timeout = '100ms'"); err != nil {
		return ignoreDone(ctx, fmt.Errorf("set lock timeout: %w", err))
	}
	start := time.Now()
	events := []struct {
		at   int
		on   bool
		sql  string
		done func()
	}{
		{1, w.AddColumn != "", "ALTER TABLE " + w.AddColumn + " ADD COLUMN " + w.ExtraColumn + " text",
			func() { stats.AddColumns++; st.extraOn.Store(true) }},
		{2, w.TruncateTable != "", "TRUNCATE " + w.TruncateTable, func() { stats.Truncates++ }},
		{3, w.DropColumn, "ALTER TABLE " + w.AddColumn + " DROP COLUMN " + w.ExtraColumn, func() { stats.DropColumns++ }},
	}
	for _, e := range events {
		if !e.on {
			continue
		}
		timer := time.NewTimer(time.Until(start.Add(st.schedule(e.at))))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		if e.at == 3 {
			st.extraOn.Store(false) // stop writing the column before it goes
		}
		for attempt := 1; ; attempt++ {
			_, err := conn.Exec(execCtx, e.sql)
			if err == nil {
				e.done()
				st.w.Logger.InfoContext(ctx, "schema event", "component", "gen.workload", "sql", e.sql, "attempts", attempt)
				break
			}
			if execCtx.Err() != nil {
				return nil
			}
			if !retryable(err) {
				return fmt.Errorf("%s: %w", e.sql, err)
			}
			backoff := time.NewTimer(min(time.Duration(attempt)*10*time.Millisecond, 200*time.Millisecond))
			select {
			case <-execCtx.Done():
				backoff.Stop()
				return nil
			case <-backoff.C:
			}
		}
	}
	return nil
}

// ignoreDone drops err if ctx is done: the run is over.
func ignoreDone(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// retryable reports whether err is a race between writers or with a schema
// change, after which the statement may be skipped or the transaction retried.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "40001", // serialization_failure
		"40P01", // deadlock_detected
		"55P03", // lock_not_available
		"23505", // unique_violation: key moves and random keys collide
		"23503", // foreign_key_violation: the referenced row went meanwhile
		"23502", // not_null_violation: no referenced row was found
		"42703", // undefined_column: the extra column was dropped meanwhile
		"0A000": // feature_not_supported: cached plan must not change result type
		return true
	}
	return false
}

// worker runs transactions until ctx is done.
func (st *runState) worker(ctx context.Context, connString string, n int, stats *WorkloadStats) (err error) {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return ignoreDone(ctx, fmt.Errorf("connect worker %d: %w", n, err))
	}
	defer func() {
		err = errors.Join(err, conn.Close(context.WithoutCancel(ctx)))
	}()
	// Long lock waits (deadlocks wait for deadlock_timeout, 1s) would hold
	// up the schema events: lose the race sooner.
	if _, err := conn.Exec(ctx, "SET lock_timeout = '250ms'"); err != nil {
		return ignoreDone(ctx, fmt.Errorf("set lock timeout: %w", err))
	}
	wk := &worker{
		st:   st,
		conn: conn,
		r:    newRand(st.w.Seed, 0x30b, uint64(n)),
		g: &generator{ctx: ctx, cfg: Config{
			Seed:                st.w.Seed,
			BigNoteFraction:     st.w.BigNoteFraction,
			MissingFileFraction: -1,
		}},
	}
	for i := range wk.plan.count {
		wk.plan.count[i], wk.plan.firstID[i] = 1, 1
	}
	wk.plan.count[tInvoices] = 36
	for ctx.Err() == nil {
		var tx WorkloadStats
		err := wk.transaction(ctx, &tx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			stats.add(&tx)
		case retryable(err):
			stats.Aborted++
		default:
			return fmt.Errorf("worker %d: %w", n, err)
		}
	}
	return nil
}

type worker struct {
	st   *runState
	conn *pgx.Conn
	r    *rand.Rand
	g    *generator
	plan tenantPlan
	vals []any
	args []any
	// The file of the attachment about to be inserted, if any.
	fileKey  string
	fileData []byte
}

// transaction runs one transaction and counts what it did into tx.
func (wk *worker) transaction(ctx context.Context, tx *WorkloadStats) (err error) {
	if _, err := wk.conn.Exec(ctx, "BEGIN"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			if _, rerr := wk.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil && ctx.Err() == nil {
				err = errors.Join(err, fmt.Errorf("roll back: %w", rerr))
			}
		}
	}()
	// Half of the transactions run each statement in a savepoint and skip
	// those that lose a race; in the others such a loss aborts the whole
	// transaction.
	n := 1 + wk.r.IntN(wk.st.w.MaxStatements)
	savepoints := wk.r.IntN(2) == 0
	for range n {
		if err := wk.statement(ctx, tx, savepoints); err != nil {
			return err
		}
	}
	if chance(wk.r, wk.st.w.RollbackFraction) {
		if _, err := wk.conn.Exec(ctx, "ROLLBACK"); err != nil {
			return fmt.Errorf("roll back: %w", err)
		}
		*tx = WorkloadStats{Rollbacks: 1}
		return nil
	}
	if _, err := wk.conn.Exec(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	tx.Commits++
	return nil
}

// statement runs one random statement, in a savepoint if asked: then if it
// loses a race it is rolled back to the savepoint and counted as skipped.
func (wk *worker) statement(ctx context.Context, tx *WorkloadStats, savepoint bool) error {
	if savepoint {
		if _, err := wk.conn.Exec(ctx, "SAVEPOINT s"); err != nil {
			return fmt.Errorf("savepoint: %w", err)
		}
	}
	wk.fileKey = ""
	kind, t, sql, args := wk.choose()
	if wk.fileKey != "" {
		// The file first, as an upload would: a rolled back insert leaves an
		// orphan object, never a row without its file.
		if _, err := wk.st.w.Files.Put(ctx, wk.fileKey, bytes.NewReader(wk.fileData)); err != nil {
			return fmt.Errorf("put %s: %w", wk.fileKey, err)
		}
	}
	tag, err := wk.conn.Exec(ctx, sql, args...)
	if err != nil {
		if !savepoint || !retryable(err) {
			return fmt.Errorf("%s: %w", sql, err)
		}
		if _, err := wk.conn.Exec(ctx, "ROLLBACK TO SAVEPOINT s"); err != nil {
			return fmt.Errorf("roll back to savepoint: %w", err)
		}
		tx.Skipped++
		return nil
	}
	if savepoint {
		if _, err := wk.conn.Exec(ctx, "RELEASE SAVEPOINT s"); err != nil {
			return fmt.Errorf("release savepoint: %w", err)
		}
	}
	if tag.RowsAffected() == 0 {
		return nil
	}
	*kind(tx)++
	if tx.ByTable == nil {
		tx.ByTable = make(map[string]int64, numTables)
	}
	tx.ByTable[tableNames[t]]++
	return nil
}

// tenant returns a random tenant of the run.
func (wk *worker) tenant() int64 { return pick(wk.r, wk.st.tenants) }

// seek returns a value of table t's seek column that locates a random row
// of tenant.
func (wk *worker) seek(t int, tenant int64) any {
	switch t {
	case tAttachments:
		return uuidv4(wk.r)
	case tInvoices:
		return fmt.Sprintf("INV-%d-%04d", tenant, wk.r.IntN(40))
	}
	rg, ok := wk.st.ranges[t][tenant]
	if !ok {
		return int64(0)
	}
	return rg.lo + wk.r.Int64N(rg.hi-rg.lo+1)
}

type counter func(*WorkloadStats) *int64

// choose picks a statement: its counter, table, SQL and arguments.
func (wk *worker) choose() (counter, int, string, []any) {
	st, r := wk.st, wk.r
	tenant := wk.tenant()
	x := r.IntN(100)
	switch {
	case x < 6 && st.extraOn.Load():
		t := st.extraTable
		v := any(maybeHostile(r, 0.2, text(r, 1+r.IntN(10))))
		if r.IntN(2) == 0 {
			_, args := wk.insertArgs(t, tenant)
			return func(s *WorkloadStats) *int64 { return &s.ExtraColumnWrites }, t, st.sql.insertExtra, append(args, v)
		}
		return func(s *WorkloadStats) *int64 { return &s.ExtraColumnWrites }, t,
			st.sql.extraUpdate, []any{tenant, wk.seek(t, tenant), v}
	case x < 40:
		t := r.IntN(numTables)
		sql, args := wk.insertArgs(t, tenant)
		return func(s *WorkloadStats) *int64 { return &s.Inserts }, t, sql, args
	case x < 70:
		t := r.IntN(numTables)
		i := r.IntN(len(st.sql.update[t]))
		wk.fill(t)
		return func(s *WorkloadStats) *int64 { return &s.Updates }, t,
			st.sql.update[t][i], []any{tenant, wk.seek(t, tenant), wk.vals[st.sql.updateCol[t][i]]}
	case x < 78 && len(st.toastRows) > 0:
		row := pick(r, st.toastRows)
		tt := toastTables[row.table]
		var v any
		switch tt.small {
		case "rating":
			v = int16(1 + r.IntN(5))
		case "is_primary":
			v = r.IntN(2) == 0
		default:
			v = int16(1 + r.IntN(4))
		}
		return func(s *WorkloadStats) *int64 { return &s.ToastUpdates }, tt.t, st.sql.toast[row.table], []any{row.tenant, row.id, v}
	case x < 88:
		// Fewer deletes of parents, so that children keep references.
		t := pick(r, leafTables)
		if r.IntN(5) == 0 {
			t = r.IntN(numTables)
		}
		return func(s *WorkloadStats) *int64 { return &s.Deletes }, t, st.sql.del[t], []any{tenant, wk.seek(t, tenant)}
	case x < 94 && len(st.tenants) > 1:
		t := pick(r, []int{tAuditLogs, tAttachments})
		return func(s *WorkloadStats) *int64 { return &s.TenantMoves }, t,
			st.sql.move[t], []any{tenant, wk.seek(t, tenant), wk.otherTenant(tenant)}
	case len(st.tenants) > 1:
		t := pick(r, keyMoveTables)
		return func(s *WorkloadStats) *int64 { return &s.TenantKeyMoves }, t,
			st.sql.move[t], []any{tenant, wk.seek(t, tenant), wk.otherTenant(tenant)}
	}
	sql, args := wk.insertArgs(tAuditLogs, tenant)
	return func(s *WorkloadStats) *int64 { return &s.Inserts }, tAuditLogs, sql, args
}

func (wk *worker) otherTenant(tenant int64) int64 {
	for {
		if o := wk.tenant(); o != tenant {
			return o
		}
	}
}

// fill generates a row of table t into wk.vals.
func (wk *worker) fill(t int) {
	if cap(wk.vals) < len(columns[t]) {
		wk.vals = make([]any, 32)
	}
	wk.vals = wk.vals[:len(columns[t])]
	// Row index 2+: no forced admin, "CV.pdf" or hostile-name-in-turn rows;
	// invoices are issued in the months before lastInvoice.
	i := 2 + wk.r.Int64N(1<<40)
	if t == tInvoices {
		i = wk.r.Int64N(wk.plan.count[tInvoices])
	}
	// fills fail only on file writes, and the workload writes no files.
	_ = fills[t](wk.g, wk.r, &wk.plan, i, wk.vals)
}

// insertArgs returns the insert statement of table t and its arguments for
// a new row of tenant.
func (wk *worker) insertArgs(t int, tenant int64) (string, []any) {
	wk.plan.id = tenant
	wk.fill(t)
	if t == tInvoices {
		wk.vals[1] = "W-" + uuidString(uuidv4(wk.r)) // unique enough
	}
	args := wk.args[:0]
	ref := 0
	for _, i := range wk.st.sql.insertCols[t] {
		if i < 0 {
			args = append(args, wk.seek(wk.st.sql.insertRefs[t][ref], tenant))
			ref++
			continue
		}
		args = append(args, wk.vals[i])
	}
	wk.args = args
	if t == tAttachments && wk.st.w.Files != nil {
		// fillAttachment left the content in the generator's scratch buffer.
		wk.fileKey, wk.fileData = wk.vals[9].(string), wk.g.scratch
	}
	return wk.st.sql.insert[t], args
}

// BigTransaction inserts n audit log rows for tenant in one transaction, to
// test how replication copes with transactions larger than memory.
func BigTransaction(ctx context.Context, conn *pgx.Conn, tenant int64, n int) (err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin big transaction: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, tx.Rollback(context.WithoutCancel(ctx)))
		}
	}()
	const q = `INSERT INTO public.audit_logs
		(tenant_id, actor_id, action, entity_type, entity_id, changes, ip_address, user_agent, duration, occurred_at)
	SELECT $1, NULL, 'bulk.import', 'candidate', g::text,
		jsonb_build_object('row', g, 'note', 'imported, "quoted"' || repeat('x', g % 64)),
		('198.51.100.' || g % 256)::inet, 'bulk-loader/1.0', make_interval(secs => g % 60),
		timestamptz '2025-01-01 00:00:00.000001+00' + g * interval '1.000001 second'
	FROM generate_series(1, $2::int) AS g`
	tag, err := tx.Exec(ctx, q, tenant, n)
	if err != nil {
		return fmt.Errorf("insert big transaction: %w", err)
	}
	if tag.RowsAffected() != int64(n) {
		return fmt.Errorf("insert big transaction: inserted %d rows of %d", tag.RowsAffected(), n)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit big transaction: %w", err)
	}
	return nil
}
