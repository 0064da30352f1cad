package pipeline

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
)

func header(m kafka.Message, key string) (string, int) {
	var v string
	n := 0
	for _, h := range m.Headers {
		if h.Key == key {
			v = string(h.Value)
			n++
		}
	}
	return v, n
}

func TestEventJSON(t *testing.T) {
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	exp := at.Add(7 * 24 * time.Hour)
	tests := []struct {
		name string
		ev   Event
		want string
	}{
		{
			name: "accepted",
			ev:   Event{Type: EventAccepted, RequestID: "r1", TenantID: "42", At: at},
			want: `{"version":1,"type":"accepted","request_id":"r1","tenant_id":"42","at":"2026-06-01T12:00:00Z"}`,
		},
		{
			name: "blocked_unpaid",
			ev:   Event{Type: EventBlockedUnpaid, RequestID: "r1", TenantID: "42", At: at, OutstandingInvoices: []string{"INV-1", "INV-2"}},
			want: `{"version":1,"type":"blocked_unpaid","request_id":"r1","tenant_id":"42","at":"2026-06-01T12:00:00Z","outstanding_invoices":["INV-1","INV-2"]}`,
		},
		{
			name: "completed without missing files still says so",
			ev: Event{Type: EventCompleted, RequestID: "r1", TenantID: "42", At: at, MasterURL: "https://x/master.csv", ExpiresAt: &exp,
				Parts: []PartSummary{{Part: "data_files", FileName: "data.zip", SizeBytes: 10, SHA256: "ab", FileCount: 3}},
				Rows:  map[string]int64{"users.csv": 5}, LSN: "0/16B3748"},
			want: `{"version":1,"type":"completed","request_id":"r1","tenant_id":"42","at":"2026-06-01T12:00:00Z",` +
				`"master_url":"https://x/master.csv","expires_at":"2026-06-08T12:00:00Z",` +
				`"parts":[{"part":"data_files","file_name":"data.zip","size_bytes":10,"sha256":"ab","file_count":3}],` +
				`"rows":{"users.csv":5},"lsn":"0/16B3748","missing_files":0}`,
		},
		{
			name: "failed",
			ev:   Event{Type: EventFailed, RequestID: "r1", TenantID: "42", At: at, Reason: "storage_unavailable", Retryable: new(true)},
			want: `{"version":1,"type":"failed","request_id":"r1","tenant_id":"42","at":"2026-06-01T12:00:00Z","reason":"storage_unavailable","retryable":true}`,
		},
		{
			name: "failed, not retryable",
			ev:   Event{Type: EventFailed, RequestID: "r1", TenantID: "42", At: at, Reason: "tenant_deleted", Retryable: new(false)},
			want: `{"version":1,"type":"failed","request_id":"r1","tenant_id":"42","at":"2026-06-01T12:00:00Z","reason":"tenant_deleted","retryable":false}`,
		},
		{
			name: "rejected without tenant",
			ev:   Event{Type: EventRejected, RequestID: "r1", At: at, Reason: "unknown_tenant"},
			want: `{"version":1,"type":"rejected","request_id":"r1","tenant_id":"","at":"2026-06-01T12:00:00Z","reason":"unknown_tenant"}`,
		},
		{
			name: "expired",
			ev:   Event{Type: EventExpired, RequestID: "r1", TenantID: "42", At: at, Reason: "links_expired"},
			want: `{"version":1,"type":"expired","request_id":"r1","tenant_id":"42","at":"2026-06-01T12:00:00Z","reason":"links_expired"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := tt.ev.Message()
			require.NoError(t, err)
			require.JSONEq(t, tt.want, string(m.Value))
			require.Equal(t, tt.ev.TenantID, string(m.Key), "keyed by tenant")
			typ, n := header(m, HeaderEventType)
			require.Equal(t, 1, n)
			require.Equal(t, tt.ev.Type, typ)
			require.Empty(t, m.Topic)

			var back Event
			require.NoError(t, json.Unmarshal(m.Value, &back))
			want := tt.ev
			want.Version = EventVersion
			require.Equal(t, want, back)
		})
	}
}

func TestEventMessageInvalid(t *testing.T) {
	at := time.Now()
	for name, ev := range map[string]Event{
		"unknown type":          {Type: "done", RequestID: "r", TenantID: "1", At: at},
		"no request id":         {Type: EventAccepted, TenantID: "1", At: at},
		"no tenant":             {Type: EventCompleted, RequestID: "r", At: at},
		"no time":               {Type: EventAccepted, RequestID: "r", TenantID: "1"},
		"empty":                 {},
		"failed without tenant": {Type: EventFailed, RequestID: "r", At: at},
	} {
		_, err := ev.Message()
		require.Error(t, err, name)
	}
}

func TestDeadLetter(t *testing.T) {
	src := kafka.Message{
		Topic: "exportd.requests", Partition: 3, Offset: 1234,
		Key: []byte("42"), Value: []byte("\x00garbage"),
		Headers: []kafka.Header{
			{Key: "traceparent", Value: []byte("00-abc-01")},
			{Key: HeaderDLQReason, Value: []byte("stale")},
			{Key: HeaderSourceOffset, Value: []byte("1")},
		},
	}
	_, err := ParseRequestAt(src.Value, reqNow)
	re, ok := AsRequestError(err)
	require.True(t, ok)

	dl := DeadLetter(src, *re)
	require.Empty(t, dl.Topic, "the dead-letter writer sets the topic")
	require.Zero(t, dl.Partition)
	require.Zero(t, dl.Offset)
	require.Equal(t, src.Key, dl.Key)
	require.Equal(t, src.Value, dl.Value)
	for key, want := range map[string]string{
		"traceparent":         "00-abc-01",
		HeaderDLQReason:       ReasonNotJSON,
		HeaderDLQDetail:       re.Detail,
		HeaderSourceTopic:     "exportd.requests",
		HeaderSourcePartition: "3",
		HeaderSourceOffset:    "1234",
	} {
		got, n := header(dl, key)
		require.Equal(t, 1, n, key)
		require.Equal(t, want, got, key)
	}
	require.Len(t, dl.Headers, 6)
	require.Len(t, src.Headers, 3, "the source message is not changed")

	long := DeadLetter(src, RequestError{Reason: ReasonTooLarge, Detail: strings.Repeat("é", 5000)})
	d, _ := header(long, HeaderDLQDetail)
	require.LessOrEqual(t, len(d), maxDetailHeader+len("…"))
	require.True(t, strings.HasSuffix(d, "…"))
}
