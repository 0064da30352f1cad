// Package lowprio runs background work (compaction, prerendering) at a
// lower CPU priority than the replication stream and exports.
package lowprio
