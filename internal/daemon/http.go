package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/exportd/exportd/internal/cluster"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
)

// routes mounts the daemon's HTTP endpoints on mux (downloads are mounted by
// openPublisher).
func (d *Daemon) routes(mux *http.ServeMux) {
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.ready() {
			http.Error(w, "not ready: initial snapshot or replication pending", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /api/status", d.handleStatus)
	mux.HandleFunc("GET /api/requests/{id}", func(w http.ResponseWriter, r *http.Request) {
		rec, ok, err := d.requests.Get(r.PathValue("id"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if !ok {
			http.Error(w, "no such request", http.StatusNotFound)
			return
		}
		writeJSON(w, rec)
	})
	mux.HandleFunc("GET /api/tenants/{tenant}/requests", func(w http.ResponseWriter, r *http.Request) {
		recs, err := d.requests.ByTenant(r.PathValue("tenant"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, recs)
	})
}

// ready reports whether the daemon serves exports: staging holds a
// snapshot, and it is current: this replica streams changes into it, or
// (shared staging) follows the writer's log.
func (d *Daemon) ready() bool {
	if !d.staging.State().SnapshotDone {
		return false
	}
	if d.repl.Connected() {
		return true
	}
	sh := d.staging.Shared()
	return sh.Shared && !sh.Writer && time.Since(sh.LastPoll) < followerStale
}

// followerStale: a follower whose last read of the log is older is not
// ready.
const followerStale = 10 * time.Second

// Status is the JSON of /api/status.
type Status struct {
	Time        time.Time         `json:"time"`
	Ready       bool              `json:"ready"`
	Replication ReplicationStatus `json:"replication"`
	// Cluster describes shared staging and the replicas (absent for local
	// staging).
	Cluster  *ClusterStatus                `json:"cluster,omitempty"`
	Staging  snapshot.Stats                `json:"staging"`
	Requests map[pipeline.RequestState]int `json:"requests"`
	// Active lists the requests not yet in a final state.
	Active []pipeline.RequestRecord `json:"active"`
	// Exports lists the exports rendering now, with their progress.
	Exports []pipeline.ExportProgress `json:"exports"`
}

// ReplicationStatus is the replication part of Status. Every tenant's
// snapshot is at the same position: staging is one consistent copy.
type ReplicationStatus struct {
	Connected    bool    `json:"connected"`
	SnapshotDone bool    `json:"snapshot_done"`
	AppliedLSN   string  `json:"applied_lsn"`
	LagBytes     int64   `json:"lag_bytes"`
	LagSeconds   float64 `json:"lag_seconds"`
	// Snapshot reports the progress of a running initial snapshot.
	Snapshot *SnapshotProgress `json:"snapshot,omitempty"`
}

// ClusterStatus is the shared-staging part of Status.
type ClusterStatus struct {
	ReplicaID string `json:"replica_id"`
	// Role is writer (holds the slot's stream and commits staging),
	// standby (waits to take over) or follower.
	Role string `json:"role"`
	// Term and Writer: the staging writer's term and replica id.
	Term   uint64 `json:"term"`
	Writer string `json:"writer"`
	// Entry is the newest staging log entry applied here.
	Entry uint64 `json:"entry"`
	// IndexBehind counts applied entries whose key-to-tenant index
	// effects are still to be applied here.
	IndexBehind int              `json:"index_behind"`
	Members     []cluster.Member `json:"members"`
}

// SnapshotProgress is the progress of the initial snapshot.
type SnapshotProgress struct {
	Rows       int64   `json:"rows"`
	Bytes      int64   `json:"bytes"`
	Percent    float64 `json:"percent"`
	ETASeconds float64 `json:"eta_seconds"`
}

func (d *Daemon) status() (Status, error) {
	st := d.staging.State()
	lag := d.repl.Lag()
	s := Status{
		Time:  time.Now().UTC(),
		Ready: d.ready(),
		Replication: ReplicationStatus{
			Connected: d.repl.Connected(), SnapshotDone: st.SnapshotDone, AppliedLSN: st.LSN.String(),
			LagBytes: lag.Bytes, LagSeconds: lag.Seconds,
		},
		Staging:  d.staging.Stats(),
		Requests: map[pipeline.RequestState]int{},
		Exports:  d.exporter.Progress(),
	}
	if p := d.repl.Progress(); p.Running {
		s.Replication.Snapshot = &SnapshotProgress{Rows: p.Rows, Bytes: p.Bytes, Percent: p.Percent, ETASeconds: p.ETA.Seconds()}
	}
	if d.members != nil {
		sh := d.staging.Shared()
		role := "follower"
		switch {
		case sh.Writer:
			role = "writer"
		case d.repl.Standby():
			role = "standby"
		}
		s.Cluster = &ClusterStatus{ReplicaID: d.members.ID(), Role: role, Term: sh.Term, Writer: sh.WriterID,
			Entry: sh.Entry, IndexBehind: sh.IndexBehind, Members: d.members.Members()}
		// Listing every finished request of every replica would grow
		// without bound: count the unfinished ones only.
		recs, err := d.requests.Open()
		if err != nil {
			return s, err
		}
		for _, r := range recs {
			s.Requests[r.State]++
		}
		s.Active = recs
		return s, nil
	}
	for _, state := range []pipeline.RequestState{pipeline.StateReceived, pipeline.StateAccepted, pipeline.StateBlockedUnpaid,
		pipeline.StateRendering, pipeline.StateCompleted, pipeline.StateFailed, pipeline.StateRejected, pipeline.StateExpired} {
		recs, err := d.requests.ByState(state)
		if err != nil {
			return s, err
		}
		s.Requests[state] = len(recs)
		switch state {
		case pipeline.StateReceived, pipeline.StateAccepted, pipeline.StateBlockedUnpaid, pipeline.StateRendering:
			s.Active = append(s.Active, recs...)
		}
	}
	return s, nil
}

func (d *Daemon) handleStatus(w http.ResponseWriter, _ *http.Request) {
	s, err := d.status()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, s)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
