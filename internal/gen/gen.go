// Package gen generates reproducible test data for the reference schema
// (package refschema): a skewed population of tenants loaded with COPY, the
// attachment files their rows point at, and concurrent write workloads for
// replication tests.
//
// Everything generated depends only on Config.Seed and the rest of Config:
// two loads with the same Config produce byte-identical tables and files.
package gen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/exportd/exportd/internal/refschema"
)

// Config describes the data set that Load generates. Zero values take the
// defaults.
type Config struct {
	// Seed determines every generated value.
	Seed int64
	// Tenants is the number of tenants, with ids 1..Tenants (default 10).
	Tenants int
	// Rows is the approximate total number of rows across all tables,
	// tenants included (default 10,000).
	Rows int
	// Skew is the exponent of the Zipf-like tenant sizes: tenant i gets a
	// share of Rows proportional to 1/i^Skew, so tenant 1 is the biggest
	// (default 1.0).
	Skew float64
	// Files writes each attachment's content to the ObjectPutter given to
	// Load (which must then be non-nil), except the missing ones.
	Files bool
	// CreateSchema runs refschema.SQL before loading; the database must not
	// have the schema yet. Without it the tables must exist and be empty.
	CreateSchema bool
	// OpenInvoiceTenants have an open (unpaid) latest invoice; every other
	// tenant has paid all of its invoices unless OpenInvoiceFraction picks it.
	OpenInvoiceTenants []int64
	// OpenInvoiceFraction is the probability for each tenant other than
	// tenant 1 to have an open invoice too (default 0).
	OpenInvoiceFraction float64
	// MissingFileFraction is the fraction of attachments whose file is not
	// written (default 0.01; negative: none).
	MissingFileFraction float64
	// BigNoteFraction is the fraction of candidates', contacts' and tasks'
	// notes that are large (8 to 40 kB) and incompressible, so that
	// PostgreSQL TOASTs them out of line (default 0.005; negative: none).
	BigNoteFraction float64
	// FileWorkers is the number of concurrent ObjectPutter.Put calls
	// (default 4).
	FileWorkers int
	// Logger receives progress (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) withDefaults() (Config, error) {
	cfg := *c
	if cfg.Tenants == 0 {
		cfg.Tenants = 10
	}
	if cfg.Rows == 0 {
		cfg.Rows = 10_000
	}
	if cfg.Skew == 0 {
		cfg.Skew = 1
	}
	if cfg.MissingFileFraction == 0 {
		cfg.MissingFileFraction = 0.01
	}
	if cfg.BigNoteFraction == 0 {
		cfg.BigNoteFraction = 0.005
	}
	if cfg.FileWorkers == 0 {
		cfg.FileWorkers = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.Tenants < 0:
		return cfg, fmt.Errorf("tenants %d: must not be negative", cfg.Tenants)
	case cfg.Rows < 0:
		return cfg, fmt.Errorf("rows %d: must not be negative", cfg.Rows)
	case cfg.Skew < 0:
		return cfg, fmt.Errorf("skew %g: must not be negative", cfg.Skew)
	case cfg.FileWorkers < 0:
		return cfg, fmt.Errorf("file workers %d: must not be negative", cfg.FileWorkers)
	}
	for _, id := range cfg.OpenInvoiceTenants {
		if id < 1 || id > int64(cfg.Tenants) {
			return cfg, fmt.Errorf("open invoice tenant %d: not in 1..%d", id, cfg.Tenants)
		}
	}
	return cfg, nil
}

// TenantSummary is what was loaded for one tenant.
type TenantSummary struct {
	ID int64
	// Rows counts the tenant's rows per table (schema-qualified name, as in
	// refschema.Tables), zero counts included.
	Rows map[string]int64
	// OpenInvoice reports whether the tenant's latest invoice is open.
	OpenInvoice bool
}

// Summary describes what Load generated.
type Summary struct {
	// Tenants in id order, 1..Config.Tenants.
	Tenants []TenantSummary
	// OpenInvoiceTenants lists, in order, the tenants with an open invoice.
	OpenInvoiceTenants []int64
	// MissingFiles lists the object keys of attachments whose file was
	// deliberately not written, in load order.
	MissingFiles []string
	// TotalRows counts every row loaded, the tenants table included.
	TotalRows int64
	// TableRows counts the rows loaded per table (schema-qualified name).
	TableRows map[string]int64
	// FilesWritten and FileBytes count the attachment files written.
	FilesWritten int64
	FileBytes    int64
	// Duration is how long Load took.
	Duration time.Duration
}

// Tenant returns the summary of tenant id, or false if there is none.
func (s *Summary) Tenant(id int64) (TenantSummary, bool) {
	i, ok := slices.BinarySearchFunc(s.Tenants, id, func(t TenantSummary, id int64) int {
		return int(t.ID - id)
	})
	if !ok {
		return TenantSummary{}, false
	}
	return s.Tenants[i], true
}

// generator is the state of one Load.
type generator struct {
	ctx     context.Context
	cfg     Config
	files   *fileWriter // nil: do not write files
	scratch []byte      // content buffer when files are not written
	missing []string
}

// Load generates the data set described by cfg into the database of conn
// (optionally creating the schema first) with COPY, streaming rows so memory
// stays bounded whatever cfg.Rows, and writes attachment files to files when
// cfg.Files is set. It also moves the identity sequences past the loaded ids
// and analyzes the tables.
func Load(ctx context.Context, conn *pgx.Conn, files ObjectPutter, cfg Config) (_ *Summary, err error) {
	start := time.Now()
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("check config: %w", err)
	}
	if cfg.Files && files == nil {
		return nil, errors.New("check config: Files is set but no ObjectPutter was given")
	}
	logger := cfg.Logger.With("component", "gen")

	if cfg.CreateSchema {
		if err := conn.PgConn().Exec(ctx, refschema.SQL()).Close(); err != nil {
			return nil, fmt.Errorf("create schema: %w", err)
		}
	}

	plans := plan(&cfg)
	// Foreign keys hold by construction; checking them row by row would
	// double the load time. Only a superuser may skip the checks.
	var superuser string
	if err := conn.QueryRow(ctx, "SELECT current_setting('is_superuser')").Scan(&superuser); err != nil {
		return nil, fmt.Errorf("check role: %w", err)
	}
	if superuser == "on" {
		if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil {
			return nil, fmt.Errorf("disable foreign key checks: %w", err)
		}
		defer func() {
			if _, rerr := conn.Exec(context.WithoutCancel(ctx), "RESET session_replication_role"); rerr != nil {
				err = errors.Join(err, fmt.Errorf("enable foreign key checks: %w", rerr))
			}
		}()
	}
	g := &generator{ctx: ctx, cfg: cfg}
	if cfg.Files {
		g.files = newFileWriter(ctx, files, cfg.FileWorkers)
	}
	sum := &Summary{TableRows: make(map[string]int64, numTables+1)}

	n, err := conn.CopyFrom(ctx, pgx.Identifier{"public", "tenants"},
		[]string{"id", "name", "slug", "plan", "settings", "created_at"}, &tenantSource{g: g, plans: plans, i: -1})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("copy %s: %w", refschema.TenantsTable, err), g.closeFiles(sum))
	}
	sum.TableRows[refschema.TenantsTable] = n
	sum.TotalRows += n

	for t := range numTables {
		src := newTableSource(g, t, plans)
		tstart := time.Now()
		n, err := conn.CopyFrom(ctx, pgx.Identifier{"public", tableNames[t][len("public."):]}, columns[t], src)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("copy %s: %w", tableNames[t], err), g.closeFiles(sum))
		}
		if n != src.rows {
			return nil, errors.Join(fmt.Errorf("copy %s: copied %d rows of %d", tableNames[t], n, src.rows), g.closeFiles(sum))
		}
		sum.TableRows[tableNames[t]] = n
		sum.TotalRows += n
		logger.DebugContext(ctx, "table loaded", "table", tableNames[t], "rows", n, "elapsed", time.Since(tstart))
	}
	if err := g.closeFiles(sum); err != nil {
		return nil, err
	}

	if err := finish(ctx, conn, plans); err != nil {
		return nil, err
	}

	for i := range plans {
		p := &plans[i]
		ts := TenantSummary{ID: p.id, Rows: make(map[string]int64, numTables), OpenInvoice: p.openInvoice}
		for t := range numTables {
			ts.Rows[tableNames[t]] = p.count[t]
		}
		sum.Tenants = append(sum.Tenants, ts)
	}
	sum.OpenInvoiceTenants = openInvoiceTenants(plans)
	sum.MissingFiles = g.missing
	sum.Duration = time.Since(start)
	logger.InfoContext(ctx, "data set loaded", "tenants", cfg.Tenants, "rows", sum.TotalRows,
		"files", sum.FilesWritten, "file_bytes", sum.FileBytes, "elapsed", sum.Duration)
	return sum, nil
}

// closeFiles waits for the queued files to be written and counts them.
func (g *generator) closeFiles(sum *Summary) error {
	if g.files == nil {
		return nil
	}
	files, bytes, err := g.files.wait()
	g.files = nil
	sum.FilesWritten, sum.FileBytes = files, bytes
	if err != nil {
		return fmt.Errorf("write attachment files: %w", err)
	}
	return nil
}

// identityTables are the tables whose id column is an identity; Load moves
// their sequences past the ids it loaded.
var identityTables = []int{tUsers, tCompanies, tContacts, tCandidates, tJobs, tJobPipelines, tTasks, tFolders, tAuditLogs}

// finish moves the identity sequences past the loaded ids, so that later
// inserts get fresh ones, and analyzes the tables.
func finish(ctx context.Context, conn *pgx.Conn, plans []tenantPlan) error {
	for _, t := range identityTables {
		next := int64(1)
		if n := len(plans); n > 0 {
			next = plans[n-1].firstID[t] + plans[n-1].count[t]
		}
		if _, err := conn.Exec(ctx, "SELECT setval(pg_get_serial_sequence($1, 'id'), $2, false)", tableNames[t], next); err != nil {
			return fmt.Errorf("set id sequence of %s: %w", tableNames[t], err)
		}
	}
	if _, err := conn.Exec(ctx, "ANALYZE "+refschema.TenantsTable+", "+strings.Join(tableNames[:], ", ")); err != nil {
		return fmt.Errorf("analyze: %w", err)
	}
	return nil
}

// tenantSource streams the tenants table.
type tenantSource struct {
	g     *generator
	plans []tenantPlan
	i     int
	vals  [6]any
}

var planNames = []string{"starter", "standard", "professional", "enterprise"}

func (s *tenantSource) Next() bool { s.i++; return s.i < len(s.plans) }

func (s *tenantSource) Values() ([]any, error) {
	p := &s.plans[s.i]
	r := newRand(s.g.cfg.Seed, 0x7e4a47, uint64(p.id))
	name := pick(r, companyWords) + " " + pick(r, companySuffixes)
	if p.id%7 == 0 {
		name = pick(r, hostile)
	}
	settings := `{"locale": "en-US", "sso": false}`
	if r.IntN(3) == 0 {
		settings = `{"locale": "de-DE", "sso": true, "export": {"include_cvs": true}}`
	}
	s.vals = [6]any{p.id, name, "tenant-" + strconv.FormatInt(p.id, 10), pick(r, planNames), settings, timestamp(r)}
	return s.vals[:], nil
}

func (s *tenantSource) Err() error { return nil }
