// Package kafkatest starts an in-process Kafka-protocol broker (franz-go's
// kfake) for tests and ties its lifetime to the test. The broker speaks the
// real wire protocol, so segmentio/kafka-go clients, consumer groups included,
// and the kcat CLI work against it.
package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

const (
	opTimeout = 30 * time.Second
	// readerMaxWait bounds a fetch long-poll, and so how long closing a
	// reader can take.
	readerMaxWait = 250 * time.Millisecond
)

// Options configures StartWith.
type Options struct {
	// Topics are created when the broker starts.
	Topics []string
	// Partitions is the partition count of each topic in Topics; 0 means 1.
	Partitions int32
	// LogLevel is the level at which the broker logs to the test log; the
	// zero value, kfake.LogLevelNone, logs nothing.
	LogLevel kfake.LogLevel
}

// Broker is a single-node kfake cluster listening on 127.0.0.1.
type Broker struct {
	c     *kfake.Cluster
	addrs []string

	transport *kafka.Transport
	writer    *kafka.Writer
}

// Start starts a broker with the given single-partition topics and closes
// it when t and its subtests end.
func Start(t testing.TB, topics ...string) *Broker {
	t.Helper()
	return StartWith(t, Options{Topics: topics})
}

// StartWith starts a broker configured by opts and closes it when t and its
// subtests end.
func StartWith(t testing.TB, opts Options) *Broker {
	t.Helper()
	parts := opts.Partitions
	if parts <= 0 {
		parts = 1
	}
	kopts := []kfake.Opt{
		kfake.NumBrokers(1), // on a free port of 127.0.0.1
		kfake.DefaultNumPartitions(int(parts)),
		kfake.WithLogger(testLogger{t: t, level: opts.LogLevel}),
	}
	if len(opts.Topics) > 0 {
		kopts = append(kopts, kfake.SeedTopics(parts, opts.Topics...))
	}
	c, err := kfake.NewCluster(kopts...)
	if err != nil {
		t.Fatalf("start kfake broker: %v", err)
	}
	b := &Broker{c: c, addrs: c.ListenAddrs()}
	b.transport = &kafka.Transport{}
	b.writer = &kafka.Writer{
		Addr:         kafka.TCP(b.addrs...),
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    1,
		BatchTimeout: time.Millisecond,
		Transport:    b.transport,
	}
	t.Cleanup(func() {
		if err := b.writer.Close(); err != nil {
			t.Errorf("close kafka writer: %v", err)
		}
		b.transport.CloseIdleConnections()
		c.Close()
	})
	return b
}

// Addrs returns the broker's host:port addresses.
func (b *Broker) Addrs() []string { return slices.Clone(b.addrs) }

// Cluster returns the underlying kfake cluster, for fault injection.
func (b *Broker) Cluster() *kfake.Cluster { return b.c }

// CreateTopic creates topic with the given partition count.
func (b *Broker) CreateTopic(t testing.TB, topic string, partitions int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(b.addrs...), Transport: b.transport}
	resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{
		Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1}},
	})
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	if err := resp.Errors[topic]; err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

// Produce writes one message to topic, its partition chosen by hashing key
// (kafka.Hash), and waits until the broker has it.
func (b *Broker) Produce(t testing.TB, topic string, key, value []byte, headers ...kafka.Header) {
	t.Helper()
	b.ProduceMessages(t, kafka.Message{Topic: topic, Key: key, Value: value, Headers: headers})
}

// ProduceMessages writes msgs, each to its Topic, and waits until the broker
// has them all.
func (b *Broker) ProduceMessages(t testing.TB, msgs ...kafka.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	defer cancel()
	if err := b.writer.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// WaitMessages reads topic from offset 0 of every partition until it has
// read at least n messages, and returns every message read by then, sorted
// by partition and offset. More than n may arrive meanwhile, so a test that
// expects exactly n checks the length. It fails t if n messages do not
// arrive within timeout or before ctx ends.
func (b *Broker) WaitMessages(t testing.TB, ctx context.Context, topic string, n int, timeout time.Duration) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msgs, err := b.readAtLeast(ctx, topic, n)
	if err != nil {
		t.Fatalf("wait for %d messages on %s: got %d: %v", n, topic, len(msgs), err)
	}
	return msgs
}

func (b *Broker) readAtLeast(ctx context.Context, topic string, n int) ([]kafka.Message, error) {
	parts, err := b.partitions(ctx, topic)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu   sync.Mutex
		got  []kafka.Message
		done = make(chan struct{})
		wg   sync.WaitGroup
		errs = make([]error, len(parts))
	)
	if n <= 0 {
		close(done)
	}
	for i, p := range parts {
		wg.Go(func() {
			r := kafka.NewReader(kafka.ReaderConfig{
				Brokers:   b.addrs,
				Topic:     topic,
				Partition: p,
				MaxWait:   readerMaxWait,
			})
			defer func() {
				if err := r.Close(); err != nil {
					errs[i] = errors.Join(errs[i], fmt.Errorf("close reader: %w", err))
				}
			}()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					if ctx.Err() == nil || !errors.Is(err, ctx.Err()) {
						errs[i] = fmt.Errorf("partition %d: %w", p, err)
					}
					return
				}
				mu.Lock()
				got = append(got, m)
				if len(got) == n {
					close(done)
				}
				mu.Unlock()
			}
		})
	}
	var werr error
	select {
	case <-done:
	case <-ctx.Done():
		werr = ctx.Err()
	}
	cancel()
	wg.Wait()
	slices.SortFunc(got, func(x, y kafka.Message) int {
		if x.Partition != y.Partition {
			return x.Partition - y.Partition
		}
		return int(x.Offset - y.Offset)
	})
	if werr != nil {
		return got, errors.Join(append([]error{werr}, errs...)...)
	}
	return got, nil
}

// partitions returns the partition ids of topic.
func (b *Broker) partitions(ctx context.Context, topic string) ([]int, error) {
	ps, err := (&kafka.Dialer{}).LookupPartitions(ctx, "tcp", b.addrs[0], topic)
	if err != nil {
		return nil, fmt.Errorf("look up partitions of %s: %w", topic, err)
	}
	if len(ps) == 0 {
		return nil, fmt.Errorf("topic %s has no partitions", topic)
	}
	ids := make([]int, len(ps))
	for i, p := range ps {
		ids[i] = p.ID
	}
	slices.Sort(ids)
	return ids, nil
}

// Kcat returns the path of the kcat binary, failing t with an install hint
// if it is not on PATH.
func Kcat(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat not found (install it: apt-get install -y kcat): %v", err)
	}
	return p
}

// HeaderValue returns the value of the first header named key, and whether
// there is one.
func HeaderValue(m kafka.Message, key string) (string, bool) {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// testLogger sends kfake's log lines at or above level to the test log.
type testLogger struct {
	t     testing.TB
	level kfake.LogLevel
}

func (l testLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	if level > l.level {
		return
	}
	l.t.Logf("kfake [%s] "+format, append([]any{level}, args...)...)
}
