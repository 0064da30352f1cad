package gen

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// columns lists the columns each table is loaded with, in the order the
// fill functions produce values.
var columns = [numTables][]string{
	tUsers: {"tenant_id", "id", "email", "first_name", "last_name", "role", "is_active", "title",
		"phone", "locale", "time_zone", "signature", "last_login_at", "created_at"},
	tCompanies: {"tenant_id", "id", "name", "website", "industry", "size_range", "annual_revenue",
		"employee_count", "tags", "address", "owner_id", "created_at", "updated_at"},
	tContacts: {"tenant_id", "id", "company_id", "first_name", "last_name", "email", "phone", "job_title",
		"is_primary", "tags", "notes", "last_contacted_at", "owner_id", "created_at", "updated_at"},
	tCandidates: {"tenant_id", "id", "first_name", "last_name", "email", "phone", "headline", "location",
		"country", "date_of_birth", "current_salary", "expected_salary", "salary_currency", "rating",
		"score", "match_ratio", "skills", "notes", "source", "custom_fields", "photo", "notice_period",
		"gdpr_consent", "owner_id", "created_at", "updated_at"},
	tJobs: {"tenant_id", "id", "company_id", "title", "description", "status", "openings", "salary_min",
		"salary_max", "remote", "location", "tags", "opened_on", "closes_on", "hiring_manager_id",
		"created_at", "updated_at"},
	tJobPipelines: {"tenant_id", "id", "job_id", "candidate_id", "stage", "position", "rating",
		"time_in_stage", "rejection_reason", "entered_stage_at", "created_at", "updated_at"},
	tTasks: {"tenant_id", "id", "title", "body", "priority", "due_on", "due_at", "reminder", "completed",
		"completed_at", "record_type", "record_id", "assignee_id", "created_at", "updated_at"},
	tFolders:       {"tenant_id", "id", "name", "description", "is_shared", "owner_id", "created_at"},
	tFolderRecords: {"tenant_id", "folder_id", "record_type", "record_id", "added_by", "note", "added_at"},
	tAttachments: {"id", "tenant_id", "record_type", "record_id", "category", "file_name", "content_type",
		"size_bytes", "sha256", "object_key", "uploaded_by", "metadata", "uploaded_at"},
	tAuditLogs: {"id", "tenant_id", "actor_id", "action", "entity_type", "entity_id", "changes",
		"ip_address", "user_agent", "duration", "occurred_at"},
	tInvoices: {"tenant_id", "number", "amount", "currency", "status", "issued_on", "due_on", "paid_at",
		"line_items"},
}

// tableSource streams the rows of one table for every tenant, in tenant
// order, as a pgx.CopyFromSource. Each (table, tenant) has its own random
// stream, so a tenant's rows do not depend on the others'.
type tableSource struct {
	g      *generator
	t      int
	plans  []tenantPlan
	ti     int   // index into plans of the current tenant
	i      int64 // row index within the current tenant
	r      *rand.Rand
	vals   []any
	rows   int64
	err    error
	fill   func(g *generator, r *rand.Rand, p *tenantPlan, i int64, vals []any) error
	filled bool
}

func newTableSource(g *generator, t int, plans []tenantPlan) *tableSource {
	return &tableSource{g: g, t: t, plans: plans, ti: -1, vals: make([]any, len(columns[t])), fill: fills[t]}
}

// Next implements pgx.CopyFromSource.
func (s *tableSource) Next() bool {
	if s.err != nil {
		return false
	}
	if s.rows%1024 == 0 {
		if err := s.g.ctx.Err(); err != nil {
			s.err = err
			return false
		}
	}
	if s.ti >= 0 {
		s.i++
	}
	for s.ti < 0 || s.i >= s.plans[s.ti].count[s.t] {
		s.ti++
		s.i = 0
		if s.ti >= len(s.plans) {
			return false
		}
		s.r = newRand(s.g.cfg.Seed, uint64(s.t)+1, uint64(s.plans[s.ti].id))
	}
	s.rows++
	return true
}

// Values implements pgx.CopyFromSource.
func (s *tableSource) Values() ([]any, error) {
	if err := s.fill(s.g, s.r, &s.plans[s.ti], s.i, s.vals); err != nil {
		s.err = err
		return nil, err
	}
	return s.vals, nil
}

// Err implements pgx.CopyFromSource.
func (s *tableSource) Err() error { return s.err }

var fills = [numTables]func(g *generator, r *rand.Rand, p *tenantPlan, i int64, vals []any) error{
	tUsers:         fillUser,
	tCompanies:     fillCompany,
	tContacts:      fillContact,
	tCandidates:    fillCandidate,
	tJobs:          fillJob,
	tJobPipelines:  fillJobPipeline,
	tTasks:         fillTask,
	tFolders:       fillFolder,
	tFolderRecords: fillFolderRecord,
	tAttachments:   fillAttachment,
	tAuditLogs:     fillAuditLog,
	tInvoices:      fillInvoice,
}

var roles = []string{"recruiter", "recruiter", "recruiter", "hiring_manager", "hiring_manager", "interviewer", "viewer"}

func fillUser(_ *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	id := p.firstID[tUsers] + i
	first, last := firstName(r), lastName(r)
	role, active := pick(r, roles), !chance(r, 0.1)
	switch {
	case i == 0:
		role, active = "admin", true // every tenant has an active admin
	case chance(r, 0.06):
		role = "admin"
	}
	created := timestamp(r)
	v[0], v[1], v[2], v[3], v[4] = p.id, int32(id), email(r, first, last, id), first, last
	v[5], v[6], v[7], v[8] = role, active, nullable(r, 0.3, 0.05, pick(r, jobTitles)), phone(r)
	v[9], v[10] = nullable(r, 0.2, 0, pick(r, locales)), nullable(r, 0.2, 0, pick(r, timeZones))
	v[11] = notes(r, 0)
	if chance(r, 0.15) {
		v[12] = nil
	} else {
		v[12] = tsAfter(r, created, 400)
	}
	v[13] = created
	return nil
}

var sizeRanges = []string{"1-10", "11-50", "51-200", "201-1000", "1001-5000", "5000+"}

func fillCompany(_ *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	name := pick(r, companyWords) + " " + pick(r, companySuffixes)
	if chance(r, 0.03) {
		name = pick(r, hostile)
	}
	created := timestamp(r)
	v[0], v[1], v[2] = p.id, p.firstID[tCompanies]+i, name
	v[3] = nullable(r, 0.2, 0.05, "https://www."+asciiFold(name)+".example.com/")
	v[4] = nullable(r, 0.1, 0.05, pick(r, industries))
	v[5] = nullable(r, 0.3, 0, pick(r, sizeRanges))
	if chance(r, 0.3) {
		v[6] = nil
	} else {
		v[6] = money(r, 9_999_999_999)
	}
	if chance(r, 0.2) {
		v[7] = nil
	} else {
		v[7] = int32(r.IntN(200000))
	}
	v[8] = textArray(r, industries)
	if chance(r, 0.2) {
		v[9] = nil
	} else {
		b := []byte(`{"street": `)
		b = appendJSONString(b, strconv.Itoa(1+r.IntN(999))+" "+pick(r, lastNames)+" St.")
		b = append(b, `, "city": `...)
		b = appendJSONString(b, pick(r, cities))
		b = append(b, `, "country": `...)
		b = appendJSONString(b, pick(r, countries))
		v[9] = string(append(b, '}'))
	}
	v[10] = p.maybeID(r, tUsers, 0.1)
	v[11], v[12] = created, tsAfter(r, created, 900)
	return nil
}

func fillContact(g *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	id := p.firstID[tContacts] + i
	first, last := firstName(r), lastName(r)
	created := timestamp(r)
	v[0], v[1], v[2] = p.id, id, p.maybeID(r, tCompanies, 0.1)
	v[3], v[4] = nullable(r, 0.02, 0.02, first), nullable(r, 0.02, 0.02, last)
	v[5], v[6] = nullable(r, 0.1, 0.02, email(r, first, last, id)), phone(r)
	v[7], v[8] = nullable(r, 0.3, 0.05, pick(r, jobTitles)), chance(r, 0.2)
	v[9], v[10] = textArray(r, skills), notes(r, g.cfg.BigNoteFraction)
	if chance(r, 0.4) {
		v[11] = nil
	} else {
		v[11] = tsAfter(r, created, 700)
	}
	v[12] = p.maybeID(r, tUsers, 0.1)
	v[13], v[14] = created, tsAfter(r, created, 900)
	return nil
}

func fillCandidate(g *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	id := p.firstID[tCandidates] + i
	first, last := firstName(r), lastName(r)
	created := timestamp(r)
	v[0], v[1], v[2], v[3] = p.id, id, nullable(r, 0.01, 0.01, first), nullable(r, 0.01, 0.01, last)
	v[4], v[5] = nullable(r, 0.05, 0.02, email(r, first, last, id)), phone(r)
	v[6] = nullable(r, 0.3, 0.05, truncRunes(maybeHostile(r, 0.03, pick(r, jobTitles)+" at "+pick(r, companyWords)), 200))
	v[7], v[8] = nullable(r, 0.2, 0.02, pick(r, cities)), nullable(r, 0.2, 0, pick(r, countries))
	v[9] = birthDate(r)
	if chance(r, 0.3) {
		v[10], v[11], v[12] = nil, nil, nil
	} else {
		v[10], v[11], v[12] = money(r, 400_000), money(r, 500_000), pick(r, currencies)
	}
	if chance(r, 0.3) {
		v[13] = nil
	} else {
		v[13] = int16(1 + r.IntN(5))
	}
	v[14], v[15] = float8(r), float4(r)
	v[16], v[17] = textArray(r, skills), notes(r, g.cfg.BigNoteFraction)
	v[18], v[19], v[20] = nullable(r, 0.1, 0.02, pick(r, sources)), customFields(r), bytea(r)
	if chance(r, 0.3) {
		v[21] = nil
	} else {
		v[21] = interval(r)
	}
	v[22], v[23] = chance(r, 0.7), p.maybeID(r, tUsers, 0.1)
	v[24], v[25] = created, tsAfter(r, created, 900)
	return nil
}

var jobStatuses = []string{"draft", "open", "open", "open", "on_hold", "filled", "closed"}

func fillJob(_ *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	created := timestamp(r)
	v[0], v[1], v[2] = p.id, p.firstID[tJobs]+i, p.maybeID(r, tCompanies, 0.2)
	v[3], v[4] = maybeHostile(r, 0.03, pick(r, jobTitles)), nullable(r, 0.1, 0.05, text(r, 20+r.IntN(400)))
	v[5], v[6] = pick(r, jobStatuses), int16(1+r.IntN(10))
	if chance(r, 0.4) {
		v[7], v[8] = nil, nil
	} else {
		lo := r.Int64N(200_000_00)
		v[7], v[8] = cents(lo), cents(lo+r.Int64N(100_000_00))
	}
	switch r.IntN(3) {
	case 0:
		v[9] = nil
	case 1:
		v[9] = true
	default:
		v[9] = false
	}
	v[10], v[11] = nullable(r, 0.2, 0.02, pick(r, cities)), textArray(r, skills)
	opened := date(tsAfter(r, created, 30))
	v[12] = opened
	switch r.IntN(10) {
	case 0:
		v[13] = pgtype.Date{InfinityModifier: pgtype.Infinity, Valid: true}
	case 1, 2, 3:
		v[13] = nil
	default:
		v[13] = date(tsAfter(r, opened.Time, 120))
	}
	v[14] = p.maybeID(r, tUsers, 0.2)
	v[15], v[16] = created, tsAfter(r, created, 900)
	return nil
}

func fillJobPipeline(_ *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	created := timestamp(r)
	stage := pick(r, stages)
	v[0], v[1], v[2], v[3] = p.id, p.firstID[tJobPipelines]+i, p.randID(r, tJobs), p.randID(r, tCandidates)
	v[4], v[5], v[6] = stage, int32(r.IntN(1000)), float4(r)
	if chance(r, 0.2) {
		v[7] = nil
	} else {
		v[7] = interval(r)
	}
	if stage == "Rejected" {
		v[8] = nullable(r, 0.2, 0.1, maybeHostile(r, 0.1, text(r, 5+r.IntN(20))))
	} else {
		v[8] = nil
	}
	v[9] = tsAfter(r, created, 60)
	v[10], v[11] = created, tsAfter(r, created, 90)
	return nil
}

var recordTypes = []struct {
	name string
	t    int
}{{"candidate", tCandidates}, {"contact", tContacts}, {"company", tCompanies}, {"job", tJobs}}

// recordRef picks an owning record for a task or attachment.
func recordRef(r *rand.Rand, p *tenantPlan) (string, int64) {
	rt := recordTypes[r.IntN(len(recordTypes))]
	if p.count[rt.t] == 0 {
		return rt.name, 1_000_000_000 + r.Int64N(1000) // a dangling reference
	}
	return rt.name, p.randID(r, rt.t)
}

func fillTask(g *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	created := timestamp(r)
	due := tsAfter(r, created, 30)
	v[0], v[1] = p.id, p.firstID[tTasks]+i
	v[2], v[3], v[4] = maybeHostile(r, 0.03, text(r, 2+r.IntN(8))), notes(r, g.cfg.BigNoteFraction), int16(1+r.IntN(4))
	if chance(r, 0.3) {
		v[5], v[6] = nil, nil
	} else {
		v[5], v[6] = date(due), due
	}
	if chance(r, 0.5) {
		v[7] = nil
	} else {
		v[7] = interval(r)
	}
	done := chance(r, 0.5)
	v[8] = done
	if done {
		v[9] = tsAfter(r, created, 60)
	} else {
		v[9] = nil
	}
	if chance(r, 0.2) {
		v[10], v[11] = nil, nil
	} else {
		v[10], v[11] = recordRef(r, p)
	}
	v[12] = p.maybeID(r, tUsers, 0.1)
	v[13], v[14] = created, tsAfter(r, created, 90)
	return nil
}

var folderNames = []string{"Shortlist", "Top talent 2024", "Do not contact", "Silver medalists", "Engineering, Berlin", "\"Hot\" leads", "候補者", "Archive", "=SUM(A1:A9)", "Q3 / Q4 pipeline"}

func fillFolder(_ *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	v[0], v[1] = p.id, int32(p.firstID[tFolders]+i)
	v[2], v[3] = pick(r, folderNames)+" "+strconv.FormatInt(i+1, 10), nullable(r, 0.4, 0.1, text(r, 5+r.IntN(20)))
	v[4], v[5], v[6] = chance(r, 0.5), p.maybeID(r, tUsers, 0.1), timestamp(r)
	return nil
}

// fillFolderRecord files the i-th record: folders round-robin, and within a
// folder distinct (record_type, record_id) pairs, so the key is unique.
func fillFolderRecord(_ *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	nf := p.count[tFolders]
	k := i / nf
	rt := recordTypes[k%int64(len(recordTypes))]
	idx := k / int64(len(recordTypes))
	recordID := p.firstID[rt.t] + idx // past the tenant's rows: a dangling reference, as in real data
	if p.count[rt.t] == 0 {
		recordID = 1_000_000_000 + idx
	}
	v[0], v[1], v[2], v[3] = p.id, int32(p.firstID[tFolders]+i%nf), rt.name, recordID
	v[4], v[5], v[6] = p.maybeID(r, tUsers, 0.1), nullable(r, 0.6, 0.1, maybeHostile(r, 0.05, text(r, 3+r.IntN(15)))), timestamp(r)
	return nil
}

func fillAttachment(g *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	id := uuidv4(r)
	category := categories[r.IntN(len(categories))]
	if i < 2 || chance(r, 0.3) {
		category = "cv"
	}
	kind := pick(r, kindsByCategory[category])
	size := fileSize(r)
	name := fileName(r, p.id, i, category, kind)
	recordType, recordID := recordRef(r, p)
	if category == "cv" || category == "cover_letter" {
		recordType, recordID = "candidate", 1_000_000_000+r.Int64N(1000)
		if p.count[tCandidates] > 0 {
			recordID = p.randID(r, tCandidates)
		}
	}
	key := "tenants/" + strconv.FormatInt(p.id, 10) + "/attachments/" + uuidString(id)
	missing := chance(r, g.cfg.MissingFileFraction)

	var data []byte
	if g.files != nil && !missing {
		data = fileContent(make([]byte, 0, size), g.cfg.Seed, id, kind, size)
	} else {
		g.scratch = fileContent(g.scratch[:0], g.cfg.Seed, id, kind, size)
		data = g.scratch
	}
	sum := sha256.Sum256(data)

	contentType := any(kind.contentType)
	switch r.IntN(50) {
	case 0:
		contentType = nil
	case 1:
		contentType = ""
	}
	var meta any
	switch r.IntN(4) {
	case 0:
		meta = nil
	case 1:
		b := []byte(`{"original_name": `)
		b = appendJSONString(b, name)
		b = append(b, `, "pages": `...)
		b = strconv.AppendInt(b, int64(1+r.IntN(30)), 10)
		meta = string(append(b, `, "virus_scan": "clean"}`...))
	default:
		meta = `{"virus_scan": "clean"}`
	}
	v[0], v[1], v[2], v[3], v[4], v[5] = id, p.id, recordType, recordID, category, name
	v[6], v[7], v[8], v[9] = contentType, size, sum[:], key
	v[10], v[11], v[12] = p.maybeID(r, tUsers, 0.05), meta, timestamp(r)

	if missing {
		g.missing = append(g.missing, key)
		return nil
	}
	if g.files != nil {
		if err := g.files.put(key, data); err != nil {
			return err
		}
	}
	return nil
}

var entityTypes = []string{"candidate", "contact", "company", "job", "user", "task", "folder", "attachment", "export", "settings"}

func fillAuditLog(_ *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	entity := pick(r, entityTypes)
	var entityID any
	switch r.IntN(10) {
	case 0:
		entityID = nil
	case 1:
		entityID = uuidString(uuidv4(r))
	default:
		entityID = strconv.FormatInt(1+r.Int64N(1_000_000), 10)
	}
	var changes any
	switch r.IntN(6) {
	case 0:
		changes = nil
	case 1:
		changes = "{}"
	default:
		b := []byte(`{"field": `)
		b = appendJSONString(b, pick(r, columns[tCandidates]))
		b = append(b, `, "old": `...)
		b = appendJSONString(b, maybeHostile(r, 0.1, pick(r, words)))
		b = append(b, `, "new": `...)
		b = appendJSONString(b, maybeHostile(r, 0.1, pick(r, words)))
		changes = string(append(b, '}'))
	}
	var dur any
	if chance(r, 0.5) {
		dur = nil
	} else {
		dur = pgtype.Interval{Microseconds: r.Int64N(5_000_000), Valid: true}
	}
	v[0], v[1], v[2], v[3], v[4] = p.firstID[tAuditLogs]+i, p.id, p.maybeID(r, tUsers, 0.05), pick(r, actions), entity
	v[5], v[6], v[7], v[8] = entityID, changes, ipAddress(r), nullable(r, 0.1, 0.02, pick(r, userAgents))
	v[9], v[10] = dur, timestamp(r)
	return nil
}

// lastInvoice is the issue date of every tenant's latest invoice.
var lastInvoice = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// fillInvoice bills one month per invoice, the latest on lastInvoice. All
// are paid (a few void) except the latest of a tenant planned with an open
// invoice.
func fillInvoice(_ *generator, r *rand.Rand, p *tenantPlan, i int64, v []any) error {
	n := p.count[tInvoices]
	issued := lastInvoice.AddDate(0, int(i-n+1), 0)
	due := issued.AddDate(0, 0, 30)
	status := "paid"
	var paidAt any = issued.Add(time.Duration(r.Int64N(25*86400e6)) * time.Microsecond)
	switch {
	case i == n-1 && p.openInvoice:
		status, paidAt = "open", nil
	case i < n-1 && chance(r, 0.03):
		status, paidAt = "void", nil
	}
	seats := 1 + r.IntN(50)
	amount := int64(seats) * 4900
	b := []byte(`[{"description": "Seats", "quantity": `)
	b = strconv.AppendInt(b, int64(seats), 10)
	b = append(b, `, "unit_price": "49.00"}]`...)
	v[0], v[1] = p.id, fmt.Sprintf("INV-%d-%04d", p.id, i+1)
	v[2], v[3], v[4] = cents(amount), "USD", status
	v[5], v[6], v[7], v[8] = date(issued), date(due), paidAt, string(b)
	return nil
}
