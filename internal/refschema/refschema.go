// Package refschema holds the reference schema of the recruiting platform
// whose PostgreSQL database exportd replicates: the DDL (schema.sql) and the
// metadata the rest of exportd and its tests need about it.
package refschema

import (
	_ "embed"
	"slices"
)

//go:embed schema.sql
var schemaSQL string

// SQL returns the DDL that creates the reference schema (types, tables,
// constraints and indexes) in the public schema of an empty database.
func SQL() string { return schemaSQL }

// TenantColumn is the name of the tenant id column that every replicated
// table has.
const TenantColumn = "tenant_id"

// TenantsTable is the table of tenants. It has no tenant column (its id is the
// tenant id) and is not replicated.
const TenantsTable = "public.tenants"

// Table names, schema-qualified.
const (
	Users         = "public.users"
	Companies     = "public.companies"
	Contacts      = "public.contacts"
	Candidates    = "public.candidates"
	Jobs          = "public.jobs"
	JobPipelines  = "public.job_pipelines"
	Tasks         = "public.tasks"
	Folders       = "public.folders"
	FolderRecords = "public.folder_records"
	Attachments   = "public.attachments"
	AuditLogs     = "public.audit_logs"
	Invoices      = "public.invoices"
)

// tables is the ordered list behind Tables: parents before children, so
// loading in this order satisfies every foreign key.
var tables = []string{
	Users,
	Companies,
	Contacts,
	Candidates,
	Jobs,
	JobPipelines,
	Tasks,
	Folders,
	FolderRecords,
	Attachments,
	AuditLogs,
	Invoices,
}

// Tables returns the replicated tables, schema-qualified, parents before
// children. Every one has a TenantColumn. The caller owns the returned slice.
func Tables() []string { return slices.Clone(tables) }

// primaryKeys maps each table of the schema to its primary key columns.
var primaryKeys = map[string][]string{
	TenantsTable:  {"id"},
	Users:         {"tenant_id", "id"},
	Companies:     {"tenant_id", "id"},
	Contacts:      {"tenant_id", "id"},
	Candidates:    {"tenant_id", "id"},
	Jobs:          {"tenant_id", "id"},
	JobPipelines:  {"tenant_id", "id"},
	Tasks:         {"tenant_id", "id"},
	Folders:       {"tenant_id", "id"},
	FolderRecords: {"tenant_id", "folder_id", "record_type", "record_id"},
	Attachments:   {"id"},
	AuditLogs:     {"id"},
	Invoices:      {"tenant_id", "number"},
}

// PrimaryKey returns the primary key columns of a table of the schema (a
// schema-qualified name, including TenantsTable), or nil for an unknown table.
// The caller owns the returned slice.
func PrimaryKey(table string) []string { return slices.Clone(primaryKeys[table]) }
