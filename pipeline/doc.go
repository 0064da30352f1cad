// Package pipeline owns what exportd does with the staged snapshot: export
// specs, rendering, bundles, manifests, requests and notifications.
//
// An export spec (a strict YAML file; DefaultSpec for the reference schema)
// says which CSV files a tenant's Full Data Export holds, which table, tenant
// column and columns each comes from, which rows are files (attachments and
// internal CVs) and which invoices are outstanding. Spec.Resolve checks it
// against the staged table schemas and returns a Plan: column indexes, header
// names and formula-protection flags that the renderer applies row by row.
//
// Attachment files go into zip bundles under names made by a ZipNamer:
// readable, sanitised and collision-free whatever the stored file names are.
//
// A Prerenderer keeps the CSVs of large, settled base files rendered and
// deflated as zip entries; an Exporter copies an entry instead of rendering
// its CSV when the staged rows are exactly that base file's
// (prerender.go).
//
// Request records live in a RequestStore (one replica's disk) or a
// SharedRequestStore (a bucket several replicas share, written with
// compare-and-swap); with Peers the Service processes the requests its
// replica owns and takes over those of replicas that are gone.
package pipeline
