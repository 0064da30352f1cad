package cdc

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	changes            *prometheus.CounterVec
	transactions       prometheus.Counter
	commitSeconds      prometheus.Histogram
	appliedLSN         prometheus.Gauge
	confirmedLSN       prometheus.Gauge
	lagBytes           prometheus.Gauge
	lagSeconds         prometheus.Gauge
	slotRetainedBytes  prometheus.Gauge
	slotLost           prometheus.Counter
	snapshots          prometheus.Counter
	snapshotRows       *prometheus.CounterVec
	reconnects         prometheus.Counter
	takeovers          prometheus.Counter
	connected          prometheus.Gauge
	heartbeatsSent     prometheus.Counter
	heartbeatsReceived prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		changes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_replication_changes_total", Help: "Row changes applied to staging, by table and operation.",
		}, []string{"table", "op"}),
		transactions: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_replication_transactions_total", Help: "Transactions made durable in staging.",
		}),
		commitSeconds: f.NewHistogram(prometheus.HistogramOpts{
			Name: "exportd_replication_commit_seconds", Help: "Time to make a batch of transactions durable in staging.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		appliedLSN: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_replication_applied_lsn", Help: "WAL position up to which changes are applied and durable in staging.",
		}),
		confirmedLSN: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_replication_confirmed_lsn", Help: "WAL position last confirmed to the replication slot.",
		}),
		lagBytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_replication_lag_bytes", Help: "Bytes of WAL the server has sent past the applied position.",
		}),
		lagSeconds: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_replication_lag_seconds", Help: "Age of the oldest transaction in the last batch made durable, when it was made durable; 0 when caught up.",
		}),
		slotRetainedBytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_replication_slot_retained_wal_bytes", Help: "WAL the server keeps for the replication slot (current LSN minus restart_lsn).",
		}),
		slotLost: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_replication_slot_lost_total", Help: "Times the replication slot was found dropped, invalidated or behind staging, forcing a fresh snapshot.",
		}),
		snapshots: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_snapshot_completed_total", Help: "Initial snapshots committed to staging.",
		}),
		snapshotRows: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_snapshot_rows_total", Help: "Rows copied by initial snapshots, by table.",
		}, []string{"table"}),
		takeovers: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_replication_takeovers_total", Help: "Times this replica, a standby of shared staging, took over as the staging writer.",
		}),
		reconnects: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_replication_reconnects_total", Help: "Replication sessions that ended in an error and were retried.",
		}),
		connected: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_replication_connected", Help: "1 while the replication stream is open.",
		}),
		heartbeatsSent: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_replication_heartbeats_sent_total", Help: "Heartbeat messages written with pg_logical_emit_message.",
		}),
		heartbeatsReceived: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_replication_heartbeats_received_total", Help: "Heartbeat messages received on the stream.",
		}),
	}
}
