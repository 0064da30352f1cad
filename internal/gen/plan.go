package gen

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/exportd/exportd/internal/refschema"
)

// Table indexes into the per-tenant plan, in load order (parents first).
const (
	tUsers = iota
	tCompanies
	tContacts
	tCandidates
	tJobs
	tJobPipelines
	tTasks
	tFolders
	tFolderRecords
	tAttachments
	tAuditLogs
	tInvoices
	numTables
)

// tableNames maps the indexes above to schema-qualified names.
var tableNames = [numTables]string{
	refschema.Users, refschema.Companies, refschema.Contacts, refschema.Candidates,
	refschema.Jobs, refschema.JobPipelines, refschema.Tasks, refschema.Folders,
	refschema.FolderRecords, refschema.Attachments, refschema.AuditLogs, refschema.Invoices,
}

// shares is the typical fraction of a tenant's rows in each table (invoices
// are counted apart: one per month of subscription).
var shares = [numTables]float64{
	tUsers:         0.03,
	tCompanies:     0.05,
	tContacts:      0.10,
	tCandidates:    0.20,
	tJobs:          0.03,
	tJobPipelines:  0.17,
	tTasks:         0.10,
	tFolders:       0.01,
	tFolderRecords: 0.06,
	tAttachments:   0.05,
	tAuditLogs:     0.20,
}

// tenantPlan is what is generated for one tenant: row counts and the first
// id of each table's rows (ids are allocated in tenant order, per table).
type tenantPlan struct {
	id          int64
	count       [numTables]int64
	firstID     [numTables]int64
	openInvoice bool
}

// randID returns a random id among this tenant's rows of table t; the tenant
// must have some.
func (p *tenantPlan) randID(r *rand.Rand, t int) int64 {
	return p.firstID[t] + r.Int64N(p.count[t])
}

// maybeID returns a random id of table t, or nil (NULL) with probability
// pNull or when the tenant has no rows in t.
func (p *tenantPlan) maybeID(r *rand.Rand, t int, pNull float64) any {
	if p.count[t] == 0 || chance(r, pNull) {
		return nil
	}
	id := p.randID(r, t)
	if t == tUsers || t == tFolders {
		return int32(id) // integer columns
	}
	return id
}

// plan decides the per-tenant row counts: tenant i (1-based) gets a share of
// cfg.Rows proportional to 1/i^Skew, split over the tables with some jitter.
func plan(cfg *Config) []tenantPlan {
	r := newRand(cfg.Seed, 0x91a2)
	n := cfg.Tenants
	weights := make([]float64, n)
	var sum float64
	for i := range weights {
		weights[i] = 1 / math.Pow(float64(i+1), cfg.Skew)
		sum += weights[i]
	}
	open := make(map[int64]bool, len(cfg.OpenInvoiceTenants))
	for _, id := range cfg.OpenInvoiceTenants {
		open[id] = true
	}
	plans := make([]tenantPlan, n)
	budget := float64(cfg.Rows - n) // the tenants rows themselves count too
	if budget < 0 {
		budget = 0
	}
	for i := range plans {
		p := &plans[i]
		p.id = int64(i + 1)
		rows := budget * weights[i] / sum
		var c [numTables]int64
		for t := range numTables {
			if t == tInvoices {
				continue
			}
			jitter := 0.7 + float64(0.6*r.Float64()) // no FMA: same counts on every platform
			c[t] = int64(math.Round(rows * shares[t] * jitter))
		}
		c[tInvoices] = 1 + min(35, int64(rows/500))
		c[tUsers] = max(c[tUsers], 1) // at least one active admin
		if c[tJobs] == 0 || c[tCandidates] == 0 {
			c[tJobPipelines] = 0
		}
		if c[tFolders] == 0 {
			c[tFolderRecords] = 0
		}
		p.count = c
		// Tenant 1 (the biggest) is never picked by the fraction.
		x := r.Float64()
		p.openInvoice = open[p.id] || (i > 0 && x < cfg.OpenInvoiceFraction)
	}
	// Allocate ids in tenant order; ids start at 1 for every table.
	for t := range numTables {
		next := int64(1)
		for i := range plans {
			plans[i].firstID[t] = next
			next += plans[i].count[t]
		}
	}
	return plans
}

// openInvoiceTenants lists the tenants planned with an open invoice.
func openInvoiceTenants(plans []tenantPlan) []int64 {
	var ids []int64
	for i := range plans {
		if plans[i].openInvoice {
			ids = append(ids, plans[i].id)
		}
	}
	slices.Sort(ids)
	return ids
}
