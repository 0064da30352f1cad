package bench

import "time"

// Results is everything a Run measured; it is written as
// bench/results-<scale>.json.
type Results struct {
	Scale    Scale     `json:"scale"`
	Started  time.Time `json:"started"`
	Duration float64   `json:"duration_s"`
	Command  string    `json:"command"`
	Machine  Machine   `json:"machine"`
	Data     Data      `json:"data"`

	Snapshot  SnapshotResult    `json:"snapshot"`
	Exports   []ExportResult    `json:"exports"`
	Render    RenderResult      `json:"render"`
	Apply     ApplyResult       `json:"apply"`
	Freshness []FreshnessResult `json:"freshness"`
	Failover  FailoverResult    `json:"failover"`
	Staging   StagingResult     `json:"staging"`

	// PhaseLoad is the load average as each phase started: the machine may
	// be shared.
	PhaseLoad []PhaseLoad `json:"phase_load"`

	// Figures is the table of BENCHMARKS.md.
	Figures []Figure `json:"figures"`
	// Notes are facts about the run worth reading beside the table.
	Notes []string `json:"notes"`
}

// PhaseLoad is /proc/loadavg as a phase started.
type PhaseLoad struct {
	Phase   string `json:"phase"`
	LoadAvg string `json:"loadavg"`
}

// Machine describes where a run happened.
type Machine struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	MemoryMiB  int64  `json:"memory_mib"`
	OS         string `json:"os"`
	Go         string `json:"go"`
	PostgreSQL string `json:"postgresql"`
	LoadAvg    string `json:"loadavg_at_start"`
}

// Data describes the generated data set.
type Data struct {
	GeneratedRows int64            `json:"generated_rows"`
	GenSeconds    float64          `json:"gen_seconds"`
	TableRows     map[string]int64 `json:"table_rows"`
	// Rows and CopyBytes are what COPY prints of the replicated tables.
	Rows      int64 `json:"rows"`
	CopyBytes int64 `json:"copy_bytes"`
	// ProductionBytes is pg_total_relation_size of the replicated tables
	// (heap, TOAST and indexes); ProductionHeapBytes pg_table_size (no
	// indexes).
	ProductionBytes     int64 `json:"production_bytes"`
	ProductionHeapBytes int64 `json:"production_heap_bytes"`
	// TenantRows are the generated rows per tenant (of the replicated tables).
	TenantRows map[int64]int64 `json:"tenant_rows"`
}

// Rate is one timed pass over some rows and bytes.
type Rate struct {
	Seconds float64 `json:"seconds"`
	Rows    int64   `json:"rows"`
	Bytes   int64   `json:"bytes"`
	// CPUSeconds is the CPU of the measured client process (the bench
	// tool's for COPY, the child's otherwise), when known.
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
}

// RowsPerSec is Rows over Seconds (0 if not measured).
func (r Rate) RowsPerSec() float64 { return per(float64(r.Rows), r.Seconds) }

// MBPerSec is Bytes in MB (10^6) over Seconds.
func (r Rate) MBPerSec() float64 { return per(float64(r.Bytes)/1e6, r.Seconds) }

func per(n, s float64) float64 {
	if s <= 0 {
		return 0
	}
	return n / s
}

// SnapshotResult is the initial snapshot phase.
type SnapshotResult struct {
	CopySeq  Rate `json:"copy_seq"`
	CopyPar2 Rate `json:"copy_par2"`
	// Exportd is `exportd run` from start until the snapshot is committed
	// (durable and visible in staging); rows and bytes are COPY's.
	Exportd Rate `json:"exportd"`
	// CompactSeconds is the time after that until the background compactor
	// has folded every load segment into base files.
	CompactSeconds float64 `json:"compact_seconds"`
	PeakRSS        int64   `json:"peak_rss"`
	CompactPeakRSS int64   `json:"compact_peak_rss"`
	// CompactPeakHeap is the fold's peak Go heap (sampled), beside its RSS.
	CompactPeakHeap int64 `json:"compact_peak_heap,omitempty"`
	SnapshotRows    int64 `json:"snapshot_rows"` // exportd_snapshot_rows_total
	// Prerender is the pass of pipeline.Prerenderer after the fold: the
	// daemon's background worker writing the CSV entries of large base files.
	Prerender PrerenderResult `json:"prerender"`
}

// PrerenderResult is one prerender pass over the folded staging.
type PrerenderResult struct {
	Seconds float64 `json:"seconds"`
	PeakRSS int64   `json:"peak_rss"`
	Entries int     `json:"entries"`
	Rows    int64   `json:"rows"`
	Bytes   int64   `json:"bytes"`
}

// ExportResult is one tenant's export beside the production queries.
type ExportResult struct {
	Label  string `json:"label"` // small, medium, largest
	Tenant int64  `json:"tenant"`
	Rows   int64  `json:"rows"` // exported rows (the ten CSVs)

	ExportdSeconds    float64 `json:"exportd_seconds"`
	ExportdZipBytes   int64   `json:"exportd_zip_bytes"`
	ExportdTuplesRead int64   `json:"exportd_tuples_read"`
	ExportdPeakRSS    int64   `json:"exportd_peak_rss"`

	ProdSeconds    float64 `json:"prod_seconds"`
	ProdRows       int64   `json:"prod_rows"`
	ProdZipBytes   int64   `json:"prod_zip_bytes"`
	ProdTuplesRead int64   `json:"prod_tuples_read"`
}

// Speedup is the production queries' time over exportd's.
func (x ExportResult) Speedup() float64 { return per(x.ProdSeconds, x.ExportdSeconds) }

// RenderResult is the CSV render throughput of one tenant's ten files.
type RenderResult struct {
	Tenant  int64        `json:"tenant"`
	Exportd Rate         `json:"exportd"`
	DuckDB  DuckDBResult `json:"duckdb"`
}

// DuckDBResult is the DuckDB baseline of RenderResult.
type DuckDBResult struct {
	Built   bool   `json:"built"`
	Ran     bool   `json:"ran"`
	Version string `json:"version,omitempty"`
	Note    string `json:"note,omitempty"`
	Rate    Rate   `json:"rate"`
	PeakRSS int64  `json:"peak_rss,omitempty"`
}

// ApplyResult is the apply phase.
type ApplyResult struct {
	Changes  int64  `json:"changes"` // row changes pgoutput sends for the backlog
	Inserts  int64  `json:"inserts"`
	Updates  int64  `json:"updates"`
	Deletes  int64  `json:"deletes"`
	Txns     int64  `json:"transactions"`
	WALBytes int64  `json:"wal_bytes"`
	Backlog  string `json:"backlog"`

	RecvLogical Rate  `json:"pg_recvlogical"` // Rows: changes
	RecvPeakRSS int64 `json:"pg_recvlogical_peak_rss"`
	Exportd     Rate  `json:"exportd"` // Rows: changes
	PeakRSS     int64 `json:"peak_rss"`
	// Applied is exportd_replication_changes_total after the drain.
	Applied int64 `json:"applied"`
}

// FreshnessResult is one fixed-rate load.
type FreshnessResult struct {
	Rate           int     `json:"target_rate"` // changes/s asked of pgbench
	Seconds        float64 `json:"seconds"`
	Changes        int64   `json:"changes"` // transactions pgbench committed (one row change each)
	AchievedRate   float64 `json:"achieved_rate"`
	Samples        int     `json:"samples"`
	P50            float64 `json:"lag_p50_s"`
	P99            float64 `json:"lag_p99_s"`
	Max            float64 `json:"lag_max_s"`
	PeakRSS        int64   `json:"peak_rss"`
	PgbenchLatency float64 `json:"pgbench_latency_ms"`
	// CatchUpSeconds is the time from the load's end until staging had
	// applied all of it, or Scale.CatchUp if it had not by then: Unapplied
	// samples were still not applied, and their lag (and so the
	// percentiles that include them) is a lower bound.
	CatchUpSeconds float64 `json:"catch_up_seconds"`
	Unapplied      int     `json:"unapplied_samples"`
	// StagingCommits are the durable staging commits (batches) during the
	// load and its catch-up, beside Changes transactions.
	StagingCommits int64 `json:"staging_commits"`
	// SlotP50, SlotP99 and SlotMax are the same lag measured against the
	// position exportd confirmed to its replication slot
	// (pg_replication_slots.confirmed_flush_lsn, polled in SQL), a
	// cross-check that does not go through exportd's status endpoint.
	SlotP50 float64 `json:"slot_lag_p50_s"`
	SlotP99 float64 `json:"slot_lag_p99_s"`
	SlotMax float64 `json:"slot_lag_max_s"`
	// Series is the lag of each sample, by seconds since the load started.
	Series []LagPoint `json:"series"`
}

// LagPoint is one freshness sample.
type LagPoint struct {
	T   float64 `json:"t"`
	Lag float64 `json:"lag"`
	LSN string  `json:"lsn"`
	// LowerBound: staging had not applied the sample when the bench
	// stopped waiting; Lag is the time waited.
	LowerBound bool `json:"lower_bound,omitempty"`
}

// StagingResult is staging's size after the initial snapshot's compaction.
type StagingResult struct {
	DataBytes int64 `json:"data_bytes"` // data files of the current version
	DirBytes  int64 `json:"dir_bytes"`  // the whole staging directory
	BaseFiles int   `json:"base_files"`
	Segments  int   `json:"segments"`
}

// Figure is one row of the table: a measured value beside its baseline and
// target.
type Figure struct {
	Group    string  `json:"group"`
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Baseline string  `json:"baseline,omitempty"` // what it is compared with
	BaseVal  float64 `json:"baseline_value,omitempty"`
	// Ratio is Value over BaseVal (or BaseVal over Value for times, so that
	// above 1 is better); 0 when there is no baseline.
	Ratio float64 `json:"ratio,omitempty"`
	// LowerBound: the value is a lower bound (the true one is larger).
	LowerBound bool   `json:"lower_bound,omitempty"`
	Target     string `json:"target,omitempty"`
	Verdict    string `json:"verdict,omitempty"` // PASS, MISS or "" (no target)
	Note       string `json:"note,omitempty"`
}
