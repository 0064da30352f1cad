package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/exportd/exportd/internal/config"
	"github.com/exportd/exportd/pipeline"
)

// cmdRequest produces an export request to the request topic and, with
// -wait, waits for its outcome on the results topic.
func cmdRequest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("request", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (for kafka.brokers and the topics)")
	brokers := fs.String("brokers", "", "comma-separated Kafka brokers (default: kafka.brokers of the config)")
	tenant := fs.String("tenant", "", "tenant id (required)")
	by := fs.String("requested-by", "", "user id of the requesting admin (required)")
	id := fs.String("request-id", "", "request id, the idempotency key (default: a random one)")
	email := fs.String("notify-email", "", "address to email the result to")
	wait := fs.Duration("wait", 0, "wait this long for the request's final event and print it (0: don't wait)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tenant == "" || *by == "" {
		return errors.New("request: -tenant and -requested-by are required")
	}
	cfg, err := config.Load(*cfgPath, os.Getenv)
	if err != nil {
		return err
	}
	k := cfg.Kafka
	if *brokers != "" {
		k.Brokers = strings.Split(*brokers, ",")
	}
	if len(k.Brokers) == 0 {
		return errors.New("request: no Kafka brokers: set -brokers, kafka.brokers or EXPORTD_KAFKA_BROKERS")
	}
	if *id == "" {
		b := make([]byte, 8)
		rand.Read(b)
		*id = "req-" + hex.EncodeToString(b)
	}
	msg := map[string]any{"version": pipeline.RequestVersion, "request_id": *id, "tenant_id": *tenant,
		"requested_by": *by, "requested_at": time.Now().UTC().Format(time.RFC3339)}
	if *email != "" {
		msg["notify_email"] = *email
	}
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if _, err := pipeline.ParseRequest(body); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	var start int64
	if *wait > 0 {
		if start, err = lastOffset(ctx, k.Brokers, k.ResultTopic); err != nil {
			return err
		}
	}
	w := &kafka.Writer{Addr: kafka.TCP(k.Brokers...), Topic: k.RequestTopic, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(*tenant), Value: body}); err != nil {
		return fmt.Errorf("request: produce to %s: %w", k.RequestTopic, err)
	}
	fmt.Fprintf(stdout, "request_id=%s\n", *id)
	if *wait == 0 {
		return nil
	}
	ev, err := waitResult(ctx, k.Brokers, k.ResultTopic, start, *id, *wait)
	if err != nil {
		return err
	}
	out, _ := json.MarshalIndent(ev, "", "  ")
	fmt.Fprintf(stdout, "%s\n", out)
	if ev.Type != pipeline.EventCompleted {
		return fmt.Errorf("request %s: %s (%s)", *id, ev.Type, ev.Reason)
	}
	fmt.Fprintf(stdout, "master_url=%s\n", ev.MasterURL)
	return nil
}

// lastOffset is the end of partition 0 of topic.
func lastOffset(ctx context.Context, brokers []string, topic string) (int64, error) {
	conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, 0)
	if err != nil {
		return 0, fmt.Errorf("request: dial %s: %w", topic, err)
	}
	defer conn.Close()
	return conn.ReadLastOffset()
}

// waitResult reads the results topic from start until a final event of the
// request (completed, failed, rejected, expired) or the timeout.
func waitResult(ctx context.Context, brokers []string, topic string, start int64, id string, timeout time.Duration) (pipeline.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: 0, MaxWait: 200 * time.Millisecond})
	defer r.Close()
	if err := r.SetOffset(start); err != nil {
		return pipeline.Event{}, err
	}
	for {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			return pipeline.Event{}, fmt.Errorf("request %s: waiting for its outcome: %w", id, err)
		}
		var ev pipeline.Event
		if json.Unmarshal(m.Value, &ev) != nil || ev.RequestID != id {
			continue
		}
		switch ev.Type {
		case pipeline.EventCompleted, pipeline.EventFailed, pipeline.EventRejected, pipeline.EventExpired:
			return ev, nil
		}
	}
}
