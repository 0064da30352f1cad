package pipeline

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// EventVersion is the version of the result event format.
const EventVersion = 1

// Event types: the Type of an Event.
const (
	// EventAccepted: the request is valid and authorised; an export will follow.
	EventAccepted = "accepted"
	// EventBlockedUnpaid: the tenant has outstanding invoices
	// (OutstandingInvoices); the request is parked until they are paid.
	EventBlockedUnpaid = "blocked_unpaid"
	// EventCompleted: the export is published (MasterURL, ExpiresAt, Parts,
	// Rows, MissingFiles, LSN). Exactly one per request id.
	EventCompleted = "completed"
	// EventFailed: the export failed (Reason); Retryable says whether
	// sending the request again can help.
	EventFailed = "failed"
	// EventRejected: the request is valid JSON but refused (Reason): unknown
	// tenant, requester not allowed, and the like.
	EventRejected = "rejected"
	// EventExpired: the request's export links have expired, or the request
	// stayed parked too long.
	EventExpired = "expired"
)

// Kafka headers of result events and dead-lettered messages.
const (
	HeaderEventType       = "exportd-event-type"
	HeaderDLQReason       = "exportd-dlq-reason"
	HeaderDLQDetail       = "exportd-dlq-detail"
	HeaderSourceTopic     = "exportd-source-topic"
	HeaderSourcePartition = "exportd-source-partition"
	HeaderSourceOffset    = "exportd-source-offset"
)

// maxDetailHeader bounds the exportd-dlq-detail header.
const maxDetailHeader = 1 << 10

// Event is a result event, the JSON value of a message on the results topic,
// keyed by tenant id. Fields that do not apply to Type are omitted, but a
// completed event always has missing_files, zero included.
type Event struct {
	Version   int       `json:"version"`
	Type      string    `json:"type"`
	RequestID string    `json:"request_id"`
	TenantID  string    `json:"tenant_id"`
	At        time.Time `json:"at"`
	// Reason is a machine code for failed, rejected and expired events.
	Reason string `json:"reason,omitempty"`
	// Retryable is set on failed events.
	Retryable *bool `json:"retryable,omitempty"`
	// MasterURL links to the export's master.csv; ExpiresAt is when the
	// links expire.
	MasterURL    string           `json:"master_url,omitempty"`
	ExpiresAt    *time.Time       `json:"expires_at,omitempty"`
	Parts        []PartSummary    `json:"parts,omitempty"`
	Rows         map[string]int64 `json:"rows,omitempty"` // by CSV file name
	MissingFiles int64            `json:"missing_files,omitempty"`
	// OutstandingInvoices lists the invoice ids that block the export.
	OutstandingInvoices []string `json:"outstanding_invoices,omitempty"`
	// LSN is the snapshot position the export was rendered at.
	LSN string `json:"lsn,omitempty"`
}

// PartSummary describes one published part of an export.
type PartSummary struct {
	Part      string `json:"part"`
	FileName  string `json:"file_name"`
	SizeBytes int64  `json:"size_bytes"`
	SHA256    string `json:"sha256"`
	FileCount int64  `json:"file_count"`
}

// MarshalJSON encodes e, with missing_files always present on a completed
// event.
func (e Event) MarshalJSON() ([]byte, error) {
	type plain Event // without the method
	var missing *int64
	if e.Type == EventCompleted || e.MissingFiles != 0 {
		missing = &e.MissingFiles
	}
	return json.Marshal(struct {
		plain
		MissingFiles *int64 `json:"missing_files,omitempty"`
	}{plain(e), missing})
}

// Message encodes e as a results-topic message: key the tenant id, value the
// JSON event, and an exportd-event-type header. Version 0 is sent as
// EventVersion. Topic is left for the writer to set.
func (e Event) Message() (kafka.Message, error) {
	if e.Version == 0 {
		e.Version = EventVersion
	}
	if err := e.validate(); err != nil {
		return kafka.Message{}, err
	}
	v, err := json.Marshal(e)
	if err != nil {
		return kafka.Message{}, fmt.Errorf("encode %s event: %w", e.Type, err)
	}
	return kafka.Message{
		Key:     []byte(e.TenantID),
		Value:   v,
		Headers: []kafka.Header{{Key: HeaderEventType, Value: []byte(e.Type)}},
	}, nil
}

func (e *Event) validate() error {
	switch e.Type {
	case EventAccepted, EventBlockedUnpaid, EventCompleted, EventFailed, EventRejected, EventExpired:
	default:
		return fmt.Errorf("unknown event type %q", e.Type)
	}
	if e.RequestID == "" {
		return fmt.Errorf("%s event without request id", e.Type)
	}
	if e.TenantID == "" && e.Type != EventRejected {
		// A rejected request may name no usable tenant; every other
		// event is about a known tenant.
		return fmt.Errorf("%s event for request %s without tenant id", e.Type, e.RequestID)
	}
	if e.At.IsZero() {
		return fmt.Errorf("%s event for request %s without time", e.Type, e.RequestID)
	}
	return nil
}

// DeadLetter builds the dead-letter message for msg, a request message
// refused for reason: the same key and value, msg's headers other than
// exportd-dlq-* and exportd-source-*, then headers with reason's code and
// detail and msg's topic, partition and offset. Topic is left for the writer
// to set.
func DeadLetter(msg kafka.Message, reason RequestError) kafka.Message {
	headers := make([]kafka.Header, 0, len(msg.Headers)+5)
	for _, h := range msg.Headers {
		if strings.HasPrefix(h.Key, "exportd-dlq-") || strings.HasPrefix(h.Key, "exportd-source-") {
			continue // ours, from an earlier trip through a dead-letter topic
		}
		headers = append(headers, h)
	}
	headers = append(headers,
		kafka.Header{Key: HeaderDLQReason, Value: []byte(reason.Reason)},
		kafka.Header{Key: HeaderDLQDetail, Value: []byte(shorten(reason.Detail, maxDetailHeader))},
		kafka.Header{Key: HeaderSourceTopic, Value: []byte(msg.Topic)},
		kafka.Header{Key: HeaderSourcePartition, Value: strconv.AppendInt(nil, int64(msg.Partition), 10)},
		kafka.Header{Key: HeaderSourceOffset, Value: strconv.AppendInt(nil, msg.Offset, 10)},
	)
	return kafka.Message{Key: msg.Key, Value: msg.Value, Headers: headers}
}
