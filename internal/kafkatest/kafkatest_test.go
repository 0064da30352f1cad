package kafkatest

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 30 * time.Second

func TestProduceWaitMessages(t *testing.T) {
	b := Start(t, "in")
	require.Len(t, b.Addrs(), 1)
	require.True(t, strings.HasPrefix(b.Addrs()[0], "127.0.0.1:"), b.Addrs())

	b.Produce(t, "in", []byte("k1"), []byte("v1"), kafka.Header{Key: "h", Value: []byte("x")})
	b.Produce(t, "in", []byte("k2"), []byte("v2"))
	msgs := b.WaitMessages(t, t.Context(), "in", 2, waitTimeout)
	require.Len(t, msgs, 2)
	require.Equal(t, "k1", string(msgs[0].Key))
	require.Equal(t, "v1", string(msgs[0].Value))
	require.Equal(t, int64(0), msgs[0].Offset)
	h, ok := HeaderValue(msgs[0], "h")
	require.True(t, ok)
	require.Equal(t, "x", h)
	require.Equal(t, "v2", string(msgs[1].Value))
	require.Equal(t, int64(1), msgs[1].Offset)

	// Reading again starts from offset 0 again.
	require.Len(t, b.WaitMessages(t, t.Context(), "in", 2, waitTimeout), 2)
}

func TestWaitMessagesTimeout(t *testing.T) {
	b := Start(t, "empty")
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	msgs, err := b.readAtLeast(ctx, "empty", 1)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Empty(t, msgs)
}

func TestPartitionsAndCreateTopic(t *testing.T) {
	b := StartWith(t, Options{Topics: []string{"a", "b"}, Partitions: 4})
	b.CreateTopic(t, "c", 3)
	for _, topic := range []string{"a", "c"} {
		var msgs []kafka.Message
		for i := range 20 {
			msgs = append(msgs, kafka.Message{Topic: topic, Key: fmt.Appendf(nil, "tenant-%d", i), Value: fmt.Appendf(nil, "%d", i)})
		}
		b.ProduceMessages(t, msgs...)
		got := b.WaitMessages(t, t.Context(), topic, 20, waitTimeout)
		require.Len(t, got, 20)
		parts := map[int]bool{}
		for i, m := range got {
			parts[m.Partition] = true
			if i > 0 && got[i-1].Partition == m.Partition {
				require.Less(t, got[i-1].Offset, m.Offset)
			}
		}
		require.Greater(t, len(parts), 1, "keys spread over partitions of %s", topic)
	}
}

func groupReader(b *Broker, group, topic string) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:     b.Addrs(),
		GroupID:     group,
		Topic:       topic,
		StartOffset: kafka.FirstOffset,
		MaxWait:     readerMaxWait,
		// CommitInterval 0: CommitMessages commits synchronously.
	})
}

func fetch(t *testing.T, r *kafka.Reader) kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	m, err := r.FetchMessage(ctx)
	require.NoError(t, err)
	return m
}

func TestKcatProducesKafkaGoConsumes(t *testing.T) {
	kcat := Kcat(t)
	b := Start(t, "requests")

	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, kcat, "-b", b.Addrs()[0], "-t", "requests", "-P", "-k", "tenant-42")
	cmd.Stdin = strings.NewReader("{\"a\":1}\n{\"a\":2}\n")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "kcat: %s", out)

	r := groupReader(b, "exportd", "requests")
	defer func() { require.NoError(t, r.Close()) }()
	for i, want := range []string{`{"a":1}`, `{"a":2}`} {
		m := fetch(t, r)
		require.Equal(t, "tenant-42", string(m.Key))
		require.Equal(t, want, string(m.Value))
		require.Equal(t, int64(i), m.Offset)
	}
}

func TestKafkaGoProducesKcatConsumes(t *testing.T) {
	kcat := Kcat(t)
	b := StartWith(t, Options{Topics: []string{"results"}, Partitions: 2})
	b.Produce(t, "results", []byte("t1"), []byte(`{"type":"accepted"}`), kafka.Header{Key: "exportd-dlq-reason", Value: []byte("not_json")})
	b.Produce(t, "results", []byte("t2"), []byte(`{"type":"completed"}`))

	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, kcat, "-b", b.Addrs()[0], "-t", "results", "-C", "-e", "-o", "beginning", "-q", "-f", "%k|%s|%h\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "kcat: %s", stderr.String())
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.ElementsMatch(t, []string{
		`t1|{"type":"accepted"}|exportd-dlq-reason=not_json`,
		`t2|{"type":"completed"}|`,
	}, lines)
}

// TestConsumerGroupResumes checks that kafka-go's consumer group protocol
// works against kfake: a reader reopened in the same group resumes after the
// last committed offset.
func TestConsumerGroupResumes(t *testing.T) {
	b := Start(t, "requests")
	for i := range 5 {
		b.Produce(t, "requests", []byte("k"), fmt.Appendf(nil, "m%d", i))
	}

	r := groupReader(b, "g", "requests")
	m0 := fetch(t, r)
	m1 := fetch(t, r)
	require.Equal(t, "m0", string(m0.Value))
	require.Equal(t, "m1", string(m1.Value))
	require.NoError(t, r.CommitMessages(t.Context(), m0, m1))
	// m2 is fetched but not committed: it must be delivered again.
	require.Equal(t, "m2", string(fetch(t, r).Value))
	require.NoError(t, r.Close())

	r = groupReader(b, "g", "requests")
	defer func() { require.NoError(t, r.Close()) }()
	m2 := fetch(t, r)
	require.Equal(t, "m2", string(m2.Value))
	require.Equal(t, int64(2), m2.Offset)

	// Another group starts from the beginning.
	other := groupReader(b, "other", "requests")
	defer func() { require.NoError(t, other.Close()) }()
	require.Equal(t, "m0", string(fetch(t, other).Value))
}
