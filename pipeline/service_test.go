package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/cdc"
	"github.com/exportd/exportd/internal/gen"
	"github.com/exportd/exportd/internal/kafkatest"
	"github.com/exportd/exportd/internal/s3test"
	"github.com/exportd/exportd/internal/smtptest"
	"github.com/exportd/exportd/internal/stagetest"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/storage"
)

const (
	requestTopic = "exportd.requests"
	resultTopic  = "exportd.results"
	dlqTopic     = "exportd.requests.dlq"
)

// serviceEnv is production, staging, a Kafka broker, an S3 server and a
// running request service.
type serviceEnv struct {
	env      *stagetest.Env
	rep      *stagetest.Replica
	files    *storage.FS
	out      *storage.S3
	broker   *kafkatest.Broker
	sum      *gen.Summary
	stateDir string
	reg      *prometheus.Registry
	cfg      pipeline.ServiceConfig
	notifier pipeline.Notifier

	mu     sync.Mutex
	events []pipeline.Event
	cancel context.CancelFunc
	done   chan error
}

func newServiceEnv(t *testing.T, openInvoice ...int64) *serviceEnv {
	t.Helper()
	ctx := t.Context()
	srv := s3test.Start(t)
	env := stagetest.StartPG(t)
	files := newFS(t)
	sum, err := gen.Load(ctx, env.Admin, files, gen.Config{Seed: 23, Tenants: 5, Rows: 5000, Files: true, CreateSchema: true, OpenInvoiceTenants: openInvoice})
	require.NoError(t, err)
	rep := env.Replicate(t, env.Config())
	rep.CatchUp(t, ctx, env)
	out, err := storage.NewS3(ctx, srv.S3Config("exports"), testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { out.Close() })
	broker := kafkatest.StartWith(t, kafkatest.Options{Topics: []string{requestTopic}, Partitions: 3})
	broker.CreateTopic(t, resultTopic, 1)
	broker.CreateTopic(t, dlqTopic, 1)
	stateDir, err := os.MkdirTemp("", "exportd-requests-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(stateDir) })
	se := &serviceEnv{env: env, rep: rep, files: files, out: out, broker: broker, sum: sum, stateDir: stateDir,
		cfg: pipeline.ServiceConfig{Brokers: broker.Addrs(), Concurrency: 2, FenceTimeout: 30 * time.Second, RecheckInterval: 100 * time.Millisecond}}
	se.watchResults(t)
	return se
}

// start runs the service until stop or the end of the test.
func (se *serviceEnv) start(t *testing.T) {
	t.Helper()
	store, err := pipeline.OpenRequestStore(filepath.Join(se.stateDir, pipeline.RequestStoreDir))
	require.NoError(t, err)
	fencer := cdc.NewFencer(se.env.URL)
	se.reg = prometheus.NewRegistry()
	spec := pipeline.DefaultSpec()
	ex := pipeline.NewExporter(spec, se.files, se.out, pipeline.ExportConfig{}, testLogger(t), pipeline.NewExportMetrics(se.reg))
	svc, err := pipeline.NewService(se.cfg, store, se.rep.Store, fencer, ex, spec, se.notifier, testLogger(t), pipeline.NewServiceMetrics(se.reg))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	se.cancel, se.done = cancel, make(chan error, 1)
	go func() {
		err := svc.Run(ctx)
		fencer.Close()
		store.Close()
		se.done <- err
	}()
	t.Cleanup(func() { se.stop(t) })
}

func (se *serviceEnv) stop(t *testing.T) {
	t.Helper()
	if se.cancel == nil {
		return
	}
	se.cancel()
	se.cancel = nil
	select {
	case err := <-se.done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("service did not stop within 30s")
	}
}

// watchResults collects the events of the results topic.
func (se *serviceEnv) watchResults(t *testing.T) {
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: se.broker.Addrs(), Topic: resultTopic, Partition: 0, MaxWait: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := r.ReadMessage(ctx)
			if err != nil {
				return
			}
			var e pipeline.Event
			if err := json.Unmarshal(msg.Value, &e); err != nil {
				t.Errorf("result event is not JSON: %v: %q", err, msg.Value)
				continue
			}
			if string(msg.Key) != e.TenantID {
				t.Errorf("event keyed %q, tenant %q", msg.Key, e.TenantID)
			}
			se.mu.Lock()
			se.events = append(se.events, e)
			se.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done; r.Close() })
}

// eventsOf returns the events of a request so far.
func (se *serviceEnv) eventsOf(id string) []pipeline.Event {
	se.mu.Lock()
	defer se.mu.Unlock()
	var out []pipeline.Event
	for _, e := range se.events {
		if e.RequestID == id {
			out = append(out, e)
		}
	}
	return out
}

func types(evs []pipeline.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Type
	}
	return out
}

// waitEvent waits for an event of typ for request id.
func (se *serviceEnv) waitEvent(t *testing.T, id, typ string, timeout time.Duration) pipeline.Event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range se.eventsOf(id) {
			if e.Type == typ {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event for %s within %s; events: %v", typ, id, timeout, types(se.eventsOf(id)))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// admin returns an active admin user of tenant in production.
func (se *serviceEnv) admin(t *testing.T, tenant int64) string {
	t.Helper()
	var id string
	err := se.env.Admin.QueryRow(t.Context(), "SELECT id::text FROM users WHERE tenant_id = $1 AND role = 'admin' AND is_active ORDER BY id LIMIT 1", tenant).Scan(&id)
	require.NoError(t, err, "tenant %d has no active admin", tenant)
	return id
}

func requestJSON(id string, tenant int64, by string, extra string) []byte {
	return []byte(fmt.Sprintf(`{"version":1,"request_id":%q,"tenant_id":%d,"requested_by":%s,"requested_at":%q%s}`,
		id, tenant, by, time.Now().UTC().Format(time.RFC3339), extra))
}

// TestServiceEndToEnd: a request produced with kcat leads to a completed
// event whose link downloads master.csv and the bundles; rows committed just
// before the request are in the export; the same request produced again
// gets no second completion.
func TestServiceEndToEnd(t *testing.T) {
	se := newServiceEnv(t)
	se.start(t)
	ctx := t.Context()

	// Committed in production just before the request.
	_, err := se.env.Admin.Exec(ctx, "INSERT INTO candidates (tenant_id, first_name, last_name) VALUES (1, 'Fence', 'Sentinel-7f3a')")
	require.NoError(t, err)
	req := requestJSON("e2e-1", 1, se.admin(t, 1), "")
	kcat := kafkatest.Kcat(t)
	cmd := exec.CommandContext(ctx, kcat, "-b", strings.Join(se.broker.Addrs(), ","), "-t", requestTopic, "-P", "-k", "1")
	cmd.Stdin = bytes.NewReader(append(req, '\n'))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "kcat: %s", out)

	done := se.waitEvent(t, "e2e-1", pipeline.EventCompleted, 2*time.Minute)
	require.Equal(t, []string{pipeline.EventAccepted, pipeline.EventCompleted}, types(se.eventsOf("e2e-1")))
	require.NotEmpty(t, done.MasterURL)
	require.NotNil(t, done.ExpiresAt)
	require.WithinDuration(t, time.Now().Add(7*24*time.Hour), *done.ExpiresAt, time.Minute)
	require.Len(t, done.Parts, 3)
	m := &pipeline.Manifest{Master: pipeline.PartResult{URL: done.MasterURL}}
	zips := download(t, func(u string) []byte { return httpGet(t, u) }, m)
	require.Contains(t, string(entry(t, zips[pipeline.PartData], "Candidates.csv")), "Fence,Sentinel-7f3a", "a row committed before the request is in the export")
	var total int64
	for _, n := range done.Rows {
		total += n
	}
	require.Positive(t, total)

	// The same request again: recognised, no second completion.
	se.broker.Produce(t, requestTopic, []byte("1"), req)
	waitFor(t, 30*time.Second, "the duplicate to be consumed", func() bool {
		return metricValue(t, se.reg, "exportd_kafka_messages_total", "duplicate") == 1
	})
	require.Equal(t, []string{pipeline.EventAccepted, pipeline.EventCompleted}, types(se.eventsOf("e2e-1")))
	objects := 0
	require.NoError(t, se.out.List(ctx, "exports/1/e2e-1/", func(storage.ObjectInfo) error { objects++; return nil }))
	require.Equal(t, 5, objects, "one set of bundles: three zips, master.csv, manifest.json")
}

// TestServiceInvoiceGate: a tenant with an open invoice is blocked; paying
// the invoice in production lets the export complete with no new request.
func TestServiceInvoiceGate(t *testing.T) {
	se := newServiceEnv(t, 2)
	se.start(t)
	ctx := t.Context()
	se.broker.Produce(t, requestTopic, []byte("2"), requestJSON("gate-1", 2, se.admin(t, 2), ""))
	blocked := se.waitEvent(t, "gate-1", pipeline.EventBlockedUnpaid, time.Minute)
	require.NotEmpty(t, blocked.OutstandingInvoices)
	// The gauge is set after the event is published: wait for it.
	require.Eventually(t, func() bool { return metricValue(t, se.reg, "exportd_requests_parked", "") == 1 },
		10*time.Second, 10*time.Millisecond, "exportd_requests_parked reaches 1")
	// Still blocked while staging moves on.
	_, err := se.env.Admin.Exec(ctx, "INSERT INTO tasks (tenant_id, title) VALUES (2, 'unrelated')")
	require.NoError(t, err)
	se.rep.CatchUp(t, ctx, se.env)

	tag, err := se.env.Admin.Exec(ctx, "UPDATE invoices SET status = 'paid', paid_at = now() WHERE tenant_id = 2 AND status = 'open'")
	require.NoError(t, err)
	require.Positive(t, tag.RowsAffected())
	se.waitEvent(t, "gate-1", pipeline.EventCompleted, time.Minute)
	require.Equal(t, []string{pipeline.EventAccepted, pipeline.EventBlockedUnpaid, pipeline.EventCompleted}, types(se.eventsOf("gate-1")))
}

// TestServiceBadInput: malformed and unauthorised messages end in the
// dead-letter topic or a rejected event with their reason, and the service
// goes on consuming.
func TestServiceBadInput(t *testing.T) {
	se := newServiceEnv(t)
	se.start(t)
	ctx := t.Context()
	admin1 := se.admin(t, 1)
	var nonAdmin string
	require.NoError(t, se.env.Admin.QueryRow(ctx, "SELECT id::text FROM users WHERE tenant_id = 1 AND role <> 'admin' ORDER BY id LIMIT 1").Scan(&nonAdmin))
	_, err := se.env.Admin.Exec(ctx, "UPDATE users SET is_active = false WHERE tenant_id = 3 AND id = $1", se.admin(t, 3))
	require.NoError(t, err)
	now := time.Now().UTC().Format(time.RFC3339)
	dead := map[string][]byte{
		pipeline.ReasonNotJSON:        []byte("export please"),
		pipeline.ReasonWrongType:      []byte(`{"version":1,"request_id":"x1","tenant_id":true,"requested_by":1,"requested_at":"` + now + `"}`),
		pipeline.ReasonMissingField:   []byte(`{"version":1,"request_id":"x2","requested_by":1,"requested_at":"` + now + `"}`),
		pipeline.ReasonUnknownVersion: []byte(`{"version":2,"request_id":"x3","tenant_id":1,"requested_by":1,"requested_at":"` + now + `"}`),
		pipeline.ReasonTooLarge:       append([]byte(`{"version":1,"pad":"`), append(bytes.Repeat([]byte("a"), 70<<10), `"}`...)...),
		pipeline.ReasonDuplicateKey:   []byte(`{"version":1,"request_id":"x4","tenant_id":1,"tenant_id":2,"requested_by":1,"requested_at":"` + now + `"}`),
		pipeline.ReasonEmpty:          {},
		"garbage":                     {0xff, 0x00, 0xfe, 0x13, 0x37, 0x80},
		pipeline.ReasonInvalidValue:   []byte(`{"version":1,"request_id":"bad id/..","tenant_id":1,"requested_by":1,"requested_at":"` + now + `"}`),
	}
	rejected := map[string][]byte{
		"unknown_tenant":          requestJSON("rej-tenant", 999, admin1, ""),
		"requester_not_admin":     requestJSON("rej-nonadmin", 1, nonAdmin, ""),
		"requester_not_in_tenant": requestJSON("rej-other", 2, admin1, ""),
		"inactive admin":          requestJSON("rej-inactive", 3, se.admin0(t, 3), ""),
	}
	for _, v := range dead {
		se.broker.Produce(t, requestTopic, []byte("k"), v)
	}
	for _, v := range rejected {
		se.broker.Produce(t, requestTopic, []byte("k"), v)
	}
	se.broker.Produce(t, requestTopic, []byte("1"), requestJSON("good-after-bad", 1, admin1, ""))
	se.waitEvent(t, "good-after-bad", pipeline.EventCompleted, 2*time.Minute)

	dl := se.broker.WaitMessages(t, ctx, dlqTopic, len(dead), 30*time.Second)
	require.Len(t, dl, len(dead))
	reasons := map[string]int{}
	for _, m := range dl {
		r, ok := kafkatest.HeaderValue(m, pipeline.HeaderDLQReason)
		require.True(t, ok, "dead letter without a reason header")
		d, _ := kafkatest.HeaderValue(m, pipeline.HeaderDLQDetail)
		require.NotEmpty(t, d)
		reasons[r]++
	}
	for reason := range dead {
		if reason == "garbage" {
			continue
		}
		require.Positive(t, reasons[reason], "no dead letter with reason %s (got %v)", reason, reasons)
	}
	for _, c := range []struct{ id, reason string }{
		{"rej-tenant", "unknown_tenant"}, {"rej-nonadmin", "requester_not_admin"},
		{"rej-other", "requester_not_in_tenant"}, {"rej-inactive", "requester_not_admin"},
	} {
		e := se.waitEvent(t, c.id, pipeline.EventRejected, 30*time.Second)
		require.Equal(t, c.reason, e.Reason, c.id)
	}
	t.Logf("dead letters by reason: %v", reasons)
}

// admin0 is like admin but also returns inactive admins.
func (se *serviceEnv) admin0(t *testing.T, tenant int64) string {
	t.Helper()
	var id string
	require.NoError(t, se.env.Admin.QueryRow(t.Context(), "SELECT id::text FROM users WHERE tenant_id = $1 AND role = 'admin' ORDER BY id LIMIT 1", tenant).Scan(&id))
	return id
}

// TestServiceRestart: the service stopped in the middle of an export resumes
// it on restart and completes it exactly once.
func TestServiceRestart(t *testing.T) {
	se := newServiceEnv(t)
	se.start(t)
	se.broker.Produce(t, requestTopic, []byte("1"), requestJSON("restart-1", 1, se.admin(t, 1), ""))
	se.waitEvent(t, "restart-1", pipeline.EventAccepted, time.Minute)
	se.stop(t)
	se.start(t)
	se.waitEvent(t, "restart-1", pipeline.EventCompleted, 2*time.Minute)
	// A restart after completion publishes nothing more.
	se.stop(t)
	se.start(t)
	se.broker.Produce(t, requestTopic, []byte("1"), requestJSON("restart-2", 1, se.admin(t, 1), ""))
	se.waitEvent(t, "restart-2", pipeline.EventCompleted, 2*time.Minute)
	require.Equal(t, []string{pipeline.EventAccepted, pipeline.EventCompleted}, types(se.eventsOf("restart-1")))
}

// metricValue returns the value of the series of name whose only label has
// the value label ("" for a series without labels), 0 if there is none.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return 0
}

// waitFor waits until cond holds, checking every 20ms, or fails after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServiceEmail: with notify_email, the requester gets an email through a
// local SMTP server when the export is blocked by an unpaid invoice, and one
// with the master link when it completes.
func TestServiceEmail(t *testing.T) {
	smtp := smtptest.Start(t, smtptest.WithAuth("exportd", "mail-secret"))
	se := newServiceEnv(t, 2)
	n, err := pipeline.NewSMTPNotifier(pipeline.SMTPConfig{Addr: smtp.Addr(), From: "exportd <exports@example.com>",
		Username: "exportd", Password: "mail-secret", TLS: pipeline.SMTPTLSNone}, testLogger(t))
	require.NoError(t, err)
	se.notifier = n
	se.start(t)
	se.broker.Produce(t, requestTopic, []byte("2"), requestJSON("mail-1", 2, se.admin(t, 2), `,"notify_email":"owner@tenant2.example"`))
	blocked := se.waitEvent(t, "mail-1", pipeline.EventBlockedUnpaid, time.Minute)
	msgs := smtp.WaitMessages(t, 1, 30*time.Second)
	require.Equal(t, []string{"owner@tenant2.example"}, msgs[0].To)
	body := decodedBody(t, msgs[0].Data)
	for _, inv := range blocked.OutstandingInvoices {
		require.Contains(t, body, inv)
	}
	_, err = se.env.Admin.Exec(t.Context(), "UPDATE invoices SET status = 'paid', paid_at = now() WHERE tenant_id = 2 AND status = 'open'")
	require.NoError(t, err)
	done := se.waitEvent(t, "mail-1", pipeline.EventCompleted, time.Minute)
	msgs = smtp.WaitMessages(t, 2, 30*time.Second)
	require.Contains(t, decodedBody(t, msgs[1].Data), done.MasterURL, "the email carries the master link")
}

// decodedBody returns the text of a plain-text email, quoted-printable decoded.
func decodedBody(t *testing.T, raw []byte) string {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	require.NoError(t, err)
	var r io.Reader = m.Body
	if strings.EqualFold(m.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
		r = quotedprintable.NewReader(m.Body)
	}
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return string(b)
}

// TestServiceParkExpiry: a request parked by unpaid invoices longer than
// ParkExpiry ends with an expired event.
func TestServiceParkExpiry(t *testing.T) {
	se := newServiceEnv(t, 2)
	se.cfg.ParkExpiry = 2 * time.Second
	se.start(t)
	se.broker.Produce(t, requestTopic, []byte("2"), requestJSON("expire-1", 2, se.admin(t, 2), ""))
	se.waitEvent(t, "expire-1", pipeline.EventBlockedUnpaid, time.Minute)
	waitFor(t, 30*time.Second, "the age of the oldest parked request", func() bool {
		return metricValue(t, se.reg, "exportd_requests_parked_oldest_seconds", "") > 0
	})
	e := se.waitEvent(t, "expire-1", pipeline.EventExpired, time.Minute)
	require.Equal(t, "parked_too_long", e.Reason)
	require.Equal(t, []string{pipeline.EventAccepted, pipeline.EventBlockedUnpaid, pipeline.EventExpired}, types(se.eventsOf("expire-1")))
	// The gauge is set after the event is published: wait for it.
	waitFor(t, 10*time.Second, "exportd_requests_parked to reach 0", func() bool {
		return metricValue(t, se.reg, "exportd_requests_parked", "") == 0
	})
}

// TestServiceOutbox: while the results topic cannot be written, events wait
// in the request's outbox and the request is retried; once the topic
// exists, every event is published, in order.
func TestServiceOutbox(t *testing.T) {
	se := newServiceEnv(t)
	se.cfg.ResultTopic = "late.results" // does not exist yet
	se.start(t)
	se.broker.Produce(t, requestTopic, []byte("1"), requestJSON("outbox-1", 1, se.admin(t, 1), ""))
	waitFor(t, time.Minute, "the request to be recorded", func() bool {
		return metricValue(t, se.reg, "exportd_kafka_messages_total", "accepted") == 1
	})
	require.Zero(t, metricValue(t, se.reg, "exportd_events_published_total", pipeline.EventAccepted))
	se.broker.CreateTopic(t, "late.results", 1)
	msgs := se.broker.WaitMessages(t, t.Context(), "late.results", 2, 2*time.Minute)
	var got []string
	for _, m := range msgs {
		var e pipeline.Event
		require.NoError(t, json.Unmarshal(m.Value, &e))
		got = append(got, e.Type)
	}
	require.Equal(t, []string{pipeline.EventAccepted, pipeline.EventCompleted}, got)
}
