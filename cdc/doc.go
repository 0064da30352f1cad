// Package cdc owns exportd's link to the platform's PostgreSQL: checking and
// preparing the publication and the logical replication slot, taking the initial
// snapshot (parallel COPY inside the slot's exported snapshot), and streaming
// pgoutput changes into package snapshot's staging, transaction by transaction.
//
// The slot's confirmed flush position only ever advances to what staging has
// made durable, so a crash at any moment loses nothing and applies nothing twice.
// A slot that was dropped or invalidated is detected, reported, and answered
// with a fresh snapshot.
//
// With shared staging a replica streams only as the staging writer: a
// standby waits in the session until the writer is gone, then takes over
// (snapshot.Store.Acquire) and streams from the last committed position.
package cdc
