package pipeline

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// ExportMetrics are the export pipeline's metrics.
type ExportMetrics struct {
	phase     *prometheus.HistogramVec
	published *prometheus.CounterVec
	rows      prometheus.Counter
	prerows   prometheus.Counter
	missing   *prometheus.CounterVec
}

// NewExportMetrics registers the export metrics on reg (nil: unregistered).
func NewExportMetrics(reg prometheus.Registerer) *ExportMetrics {
	f := promauto.With(reg)
	return &ExportMetrics{
		phase: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "exportd_export_phase_duration_seconds",
			Help:    "Duration of export phases (data_files, attachments, internal_cvs, publish).",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 16),
		}, []string{"phase"}),
		published: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_export_published_bytes_total",
			Help: "Bytes of export bundles published, by part.",
		}, []string{"part"}),
		rows: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_export_rows_rendered_total",
			Help: "CSV rows rendered into exports.",
		}),
		prerows: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_export_rows_prerendered_total",
			Help: "CSV rows copied into exports from prerendered entries instead of rendered.",
		}),
		missing: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_export_missing_files_total",
			Help: "Files that could not be read and were listed in missing_files.csv, by part.",
		}, []string{"part"}),
	}
}

type exportMetrics struct{ m *ExportMetrics }

func (m *ExportMetrics) get() *exportMetrics { return &exportMetrics{m: m} }

func (e *exportMetrics) observePhase(phase string, d time.Duration) {
	if e.m != nil {
		e.m.phase.WithLabelValues(phase).Observe(d.Seconds())
	}
}

func (e *exportMetrics) published(part string, n int64) {
	if e.m != nil {
		e.m.published.WithLabelValues(part).Add(float64(n))
	}
}

func (e *exportMetrics) rendered(n int64) {
	if e.m != nil {
		e.m.rows.Add(float64(n))
	}
}

func (e *exportMetrics) prerendered(n int64) {
	if e.m != nil {
		e.m.prerows.Add(float64(n))
	}
}

func (e *exportMetrics) missing(part string, n int64) {
	if e.m != nil && n > 0 {
		e.m.missing.WithLabelValues(part).Add(float64(n))
	}
}

// ServiceMetrics are the request service's metrics.
type ServiceMetrics struct {
	messages    *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	outcomes    *prometheus.CounterVec
	events      *prometheus.CounterVec
	exports     *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	parked      prometheus.Gauge
	oldest      prometheus.Gauge
	fence       prometheus.Histogram
	emails      *prometheus.CounterVec
	takeovers   prometheus.Counter
}

// NewServiceMetrics registers the request service's metrics on reg (nil:
// unregistered).
func NewServiceMetrics(reg prometheus.Registerer) *ServiceMetrics {
	f := promauto.With(reg)
	return &ServiceMetrics{
		messages: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_kafka_messages_total",
			Help: "Request messages consumed, by outcome (accepted: recorded; duplicate: a known request id; dead_lettered).",
		}, []string{"outcome"}),
		deadLetters: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_dead_letters_total",
			Help: "Request messages sent to the dead-letter topic, by reason.",
		}, []string{"reason"}),
		outcomes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_requests_total",
			Help: "Requests that reached a final state, by state (completed, failed, rejected, expired).",
		}, []string{"state"}),
		events: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_events_published_total",
			Help: "Result events published, by type.",
		}, []string{"type"}),
		exports: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_exports_total",
			Help: "Export attempts, by outcome (completed, error).",
		}, []string{"outcome"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "exportd_export_duration_seconds",
			Help:    "Duration of export attempts, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 16),
		}, []string{"outcome"}),
		parked: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_requests_parked",
			Help: "Requests waiting for a tenant's unpaid invoices.",
		}),
		oldest: f.NewGauge(prometheus.GaugeOpts{
			Name: "exportd_requests_parked_oldest_seconds",
			Help: "Age of the oldest request waiting for unpaid invoices (0: none).",
		}),
		fence: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "exportd_fence_wait_seconds",
			Help:    "Time waited for staging to reach a request's fence.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
		}),
		emails: f.NewCounterVec(prometheus.CounterOpts{
			Name: "exportd_emails_total",
			Help: "Notification emails, by outcome (sent, error).",
		}, []string{"outcome"}),
		takeovers: f.NewCounter(prometheus.CounterOpts{
			Name: "exportd_requests_taken_over_total",
			Help: "Unfinished requests this replica took over from a replica that was gone.",
		}),
	}
}

type serviceMetrics struct{ m *ServiceMetrics }

func (m *ServiceMetrics) get() *serviceMetrics { return &serviceMetrics{m: m} }

func (s *serviceMetrics) message(outcome string) {
	if s.m != nil {
		s.m.messages.WithLabelValues(outcome).Inc()
	}
}

func (s *serviceMetrics) takeover() {
	if s.m != nil {
		s.m.takeovers.Inc()
	}
}

func (s *serviceMetrics) deadLetter(reason string) {
	if s.m != nil {
		s.m.deadLetters.WithLabelValues(reason).Inc()
	}
}

func (s *serviceMetrics) outcome(state string) {
	if s.m != nil {
		s.m.outcomes.WithLabelValues(state).Inc()
	}
}

func (s *serviceMetrics) event(typ string) {
	if s.m != nil {
		s.m.events.WithLabelValues(typ).Inc()
	}
}

func (s *serviceMetrics) export(outcome string, d time.Duration) {
	if s.m != nil {
		s.m.exports.WithLabelValues(outcome).Inc()
		s.m.duration.WithLabelValues(outcome).Observe(d.Seconds())
	}
}

func (s *serviceMetrics) parked(n int, oldest time.Duration) {
	if s.m != nil {
		s.m.parked.Set(float64(n))
		s.m.oldest.Set(oldest.Seconds())
	}
}

func (s *serviceMetrics) fenceWait(d time.Duration) {
	if s.m != nil {
		s.m.fence.Observe(d.Seconds())
	}
}

func (s *serviceMetrics) email(outcome string) {
	if s.m != nil {
		s.m.emails.WithLabelValues(outcome).Inc()
	}
}
