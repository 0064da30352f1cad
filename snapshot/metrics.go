package snapshot

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	files             prometheus.Gauge
	bytes             prometheus.Gauge
	segments          prometheus.Gauge
	baseFiles         prometheus.Gauge
	commits           prometheus.Counter
	commitSeconds     prometheus.Histogram
	compactions       *prometheus.CounterVec
	compactionSeconds *prometheus.HistogramVec
	spilledBytes      prometheus.Counter
	pinnedVersions    prometheus.Gauge
}

// newMetrics registers the store's metrics on reg (nil: not registered).
func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		files: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_staging_files", Help: "Data files of the current staging version.",
		}),
		bytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_staging_bytes", Help: "Bytes of the data files of the current staging version.",
		}),
		segments: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_staging_segments", Help: "Delta segments of the current staging version.",
		}),
		baseFiles: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_staging_base_files", Help: "Base files of the current staging version.",
		}),
		commits: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_staging_commits_total", Help: "Committed batches and loads.",
		}),
		commitSeconds: f.NewHistogram(prometheus.HistogramOpts{
			Name: "exportd_staging_commit_seconds", Help: "Duration of batch and load commits.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		compactions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_staging_compactions_total", Help: "Finished compactions by kind (merge, fold).",
		}, []string{"kind"}),
		compactionSeconds: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "exportd_staging_compaction_seconds", Help: "Duration of compactions by kind.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}, []string{"kind"}),
		spilledBytes: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_staging_spilled_bytes_total", Help: "Row bytes spilled to disk by batches and loads before commit.",
		}),
		pinnedVersions: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_staging_pinned_versions", Help: "Versions pinned by readers.",
		}),
	}
}
