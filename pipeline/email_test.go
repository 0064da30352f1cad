package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/quotedprintable"
	"net"
	netmail "net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/exportd/exportd/internal/smtptest"
)

const (
	emailUser     = "exportd"
	emailPassword = "Sm7p-pa55word-4711"
	emailTo       = "requester@example.com"
	emailWait     = 30 * time.Second
	// A presigned-S3-like link: long, with query parameters that quoted-
	// printable encoding breaks across lines and escapes ("=" is "=3D").
	emailMasterURL = "https://bucket.s3.example.com/exports/1/r1/master.csv" +
		"?X-Amz-Algorithm=AWS4-HMAC-SHA256" +
		"&X-Amz-Credential=AKIAEXAMPLE%2F20260102%2Fus-east-1%2Fs3%2Faws4_request" +
		"&X-Amz-Date=20260102T030405Z&X-Amz-Expires=604800&X-Amz-SignedHeaders=host" +
		"&X-Amz-Signature=abc123"
)

// emailLogs collects what a notifier logs, at every level.
type emailLogs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *emailLogs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *emailLogs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *emailLogs) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startSMTP starts a server requiring emailUser/emailPassword and returns it
// with a notifier configured for it.
func startSMTP(t *testing.T, logs *emailLogs, opts ...smtptest.Option) (*smtptest.Server, *SMTPNotifier) {
	t.Helper()
	s := smtptest.Start(t, append([]smtptest.Option{smtptest.WithAuth(emailUser, emailPassword)}, opts...)...)
	n, err := NewSMTPNotifier(SMTPConfig{
		Addr: s.Addr(), From: "Exports <exports@example.com>",
		Username: emailUser, Password: emailPassword, TLS: SMTPTLSNone, Timeout: emailWait,
	}, logs.logger())
	require.NoError(t, err)
	return s, n
}

func completedEvent() Event {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	exp := time.Date(2026, 1, 9, 3, 4, 5, 0, time.FixedZone("CET", 3600)) // shown in UTC
	return Event{
		Version: EventVersion, Type: EventCompleted, RequestID: "r1", TenantID: "1", At: at,
		MasterURL: emailMasterURL, ExpiresAt: &exp,
		Parts: []PartSummary{
			{Part: "data", FileName: "export-1-r1-data.zip", SizeBytes: 12884901, FileCount: 9},
			{Part: "attachments", FileName: "export-1-r1-attachments-001.zip", SizeBytes: 512, FileCount: 1},
		},
		MissingFiles: 2,
	}
}

// emailBody parses a received message and returns its header and its
// decoded plain-text body.
func emailBody(t *testing.T, m smtptest.Message) (netmail.Header, string) {
	t.Helper()
	msg, err := netmail.ReadMessage(bytes.NewReader(m.Data))
	require.NoError(t, err)
	mediaType, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "text/plain", mediaType)
	require.Equal(t, "utf-8", strings.ToLower(params["charset"]))
	var r io.Reader = msg.Body
	switch cte := strings.ToLower(msg.Header.Get("Content-Transfer-Encoding")); cte {
	case "quoted-printable":
		r = quotedprintable.NewReader(r)
	case "", "7bit", "8bit":
	default:
		t.Fatalf("unexpected Content-Transfer-Encoding %q", cte)
	}
	body, err := io.ReadAll(r)
	require.NoError(t, err)
	return msg.Header, strings.ReplaceAll(string(body), "\r\n", "\n")
}

func emailSubject(t *testing.T, h netmail.Header) string {
	t.Helper()
	s, err := new(mime.WordDecoder).DecodeHeader(h.Get("Subject"))
	require.NoError(t, err)
	return s
}

func TestEmailCompleted(t *testing.T) {
	logs := &emailLogs{}
	s, n := startSMTP(t, logs)

	require.NoError(t, n.Notify(t.Context(), emailTo, completedEvent()))

	msgs := s.WaitMessages(t, 1, emailWait)
	require.Len(t, msgs, 1)
	m := msgs[0]
	require.Equal(t, "exports@example.com", m.From)
	require.Equal(t, []string{emailTo}, m.To)
	require.Equal(t, emailUser, m.Username)
	require.NotContains(t, string(m.Data), emailPassword)

	h, body := emailBody(t, m)
	require.Equal(t, "Your data export is ready", emailSubject(t, h))
	from, err := h.AddressList("From")
	require.NoError(t, err)
	require.Equal(t, []*netmail.Address{{Name: "Exports", Address: "exports@example.com"}}, from)
	to, err := h.AddressList("To")
	require.NoError(t, err)
	require.Equal(t, []*netmail.Address{{Address: emailTo}}, to)
	require.Equal(t, "auto-generated", h.Get("Auto-Submitted"))
	require.NotEmpty(t, h.Get("Message-Id"))
	_, err = h.Date()
	require.NoError(t, err)

	// The link on a line of its own, exactly.
	require.Contains(t, body, "\n"+emailMasterURL+"\n")
	require.Contains(t, body, "The link expires at 2026-01-09T02:04:05Z (UTC).")
	require.Contains(t, body, "- export-1-r1-data.zip: 12.3 MiB (12884901 bytes), 9 files\n")
	require.Contains(t, body, "- export-1-r1-attachments-001.zip: 512 bytes, 1 file\n")
	require.Contains(t, body, "Missing files: 2 (listed in missing_files.csv inside the parts)\n")
	require.Contains(t, body, "Request id: r1\n")

	require.Contains(t, logs.String(), "email sent")
	require.NotContains(t, logs.String(), emailPassword)
}

func TestEmailBlockedUnpaid(t *testing.T) {
	logs := &emailLogs{}
	s, n := startSMTP(t, logs)
	ev := Event{
		Version: EventVersion, Type: EventBlockedUnpaid, RequestID: "r2", TenantID: "1",
		At: time.Now().UTC(), Reason: "outstanding_invoices", OutstandingInvoices: []string{"INV-2025-0042", "INV-2026-0007"},
	}

	require.NoError(t, n.Notify(t.Context(), emailTo, ev))

	msgs := s.WaitMessages(t, 1, emailWait)
	require.Len(t, msgs, 1)
	require.Equal(t, []string{emailTo}, msgs[0].To)
	h, body := emailBody(t, msgs[0])
	require.Equal(t, "Your data export is waiting for payment", emailSubject(t, h))
	require.Contains(t, body, "reason: outstanding_invoices")
	require.Contains(t, body, "- INV-2025-0042\n- INV-2026-0007\n")
	require.Contains(t, body, "will start by itself once they are paid")
	require.Contains(t, body, "Request id: r2\n")
	require.NotContains(t, body, "https://")
}

func TestEmailConcurrent(t *testing.T) {
	s, n := startSMTP(t, &emailLogs{})
	const senders = 4
	errs := make(chan error, senders)
	for i := range senders {
		go func() {
			ev := completedEvent()
			ev.RequestID = fmt.Sprintf("r%d", i)
			errs <- n.Notify(t.Context(), fmt.Sprintf("user%d@example.com", i), ev)
		}()
	}
	for range senders {
		require.NoError(t, <-errs)
	}
	msgs := s.WaitMessages(t, senders, emailWait)
	got := map[string]bool{}
	for _, m := range msgs {
		_, body := emailBody(t, m)
		got[m.To[0]] = strings.Contains(body, "Request id: r"+strings.TrimSuffix(strings.TrimPrefix(m.To[0], "user"), "@example.com")+"\n")
	}
	require.Equal(t, map[string]bool{"user0@example.com": true, "user1@example.com": true, "user2@example.com": true, "user3@example.com": true}, got)
}

func TestEmailOtherEventsSendNothing(t *testing.T) {
	s, n := startSMTP(t, &emailLogs{})
	retry := true
	for _, typ := range []string{EventAccepted, EventFailed, EventRejected, EventExpired, "unknown"} {
		ev := Event{Version: EventVersion, Type: typ, RequestID: "r3", TenantID: "1", At: time.Now().UTC(), Reason: "x", Retryable: &retry}
		require.NoError(t, n.Notify(t.Context(), emailTo, ev), typ)
	}
	require.Zero(t, s.Connections(), "no connection for events without a message")
	require.Empty(t, s.Messages())
}

func TestEmailCompletedWithoutLink(t *testing.T) {
	s, n := startSMTP(t, &emailLogs{})
	ev := completedEvent()
	ev.MasterURL = ""
	require.ErrorContains(t, n.Notify(t.Context(), emailTo, ev), "no master link")
	require.Zero(t, s.Connections())
}

func TestEmailWrongPassword(t *testing.T) {
	logs := &emailLogs{}
	s := smtptest.Start(t, smtptest.WithAuth(emailUser, "the-right-one"))
	n, err := NewSMTPNotifier(SMTPConfig{
		Addr: s.Addr(), From: "exports@example.com", Username: emailUser, Password: emailPassword, TLS: SMTPTLSNone,
	}, logs.logger())
	require.NoError(t, err)

	err = n.Notify(t.Context(), emailTo, completedEvent())
	require.Error(t, err)
	t.Log(err)
	require.ErrorContains(t, err, `send email to "requester@example.com"`)
	require.ErrorContains(t, err, "535")
	require.NotContains(t, err.Error(), emailPassword)
	require.NotContains(t, fmt.Sprintf("%+v %#v", err, err), emailPassword)
	require.Equal(t, 1, s.AuthFailures())
	require.Empty(t, s.Messages())
	require.NotContains(t, logs.String(), emailPassword)
}

func TestEmailHeaderInjectionRefused(t *testing.T) {
	s, n := startSMTP(t, &emailLogs{})
	for _, to := range []string{
		"victim@example.com\r\nBcc: evil@example.com",
		"victim@example.com\nSubject: free money",
		"victim@example.com, evil@example.com",
		"",
	} {
		err := n.Notify(t.Context(), to, completedEvent())
		require.Error(t, err, "%q", to)
		require.ErrorContains(t, err, "send email to")
	}
	require.Zero(t, s.Connections())
}

func TestEmailSTARTTLS(t *testing.T) {
	s, n := startSMTP(t, &emailLogs{}, smtptest.WithTLS(smtptest.TLSStartTLS))
	n.cfg.TLS = SMTPTLSStartTLS
	n.tlsConfig = s.ClientTLSConfig()

	require.NoError(t, n.Notify(t.Context(), emailTo, completedEvent()))
	msgs := s.WaitMessages(t, 1, emailWait)
	require.True(t, msgs[0].TLS)
	require.Equal(t, emailUser, msgs[0].Username)
	_, body := emailBody(t, msgs[0])
	require.Contains(t, body, "\n"+emailMasterURL+"\n")
}

func TestEmailSTARTTLSRequired(t *testing.T) {
	// A server without STARTTLS: mode starttls sends nothing, credentials
	// included.
	s, n := startSMTP(t, &emailLogs{})
	n.cfg.TLS = SMTPTLSStartTLS

	err := n.Notify(t.Context(), emailTo, completedEvent())
	require.ErrorContains(t, err, "STARTTLS")
	require.Zero(t, s.AuthFailures())
	require.Empty(t, s.Messages())
}

func TestEmailImplicitTLS(t *testing.T) {
	s, n := startSMTP(t, &emailLogs{}, smtptest.WithTLS(smtptest.TLSImplicit))
	n.cfg.TLS = SMTPTLSImplicit
	n.tlsConfig = s.ClientTLSConfig()

	require.NoError(t, n.Notify(t.Context(), emailTo, completedEvent()))
	msgs := s.WaitMessages(t, 1, emailWait)
	require.True(t, msgs[0].TLS)
	require.Equal(t, emailUser, msgs[0].Username)

	// Without trusting the server's certificate, nothing is sent.
	n.tlsConfig = nil
	err := n.Notify(t.Context(), emailTo, completedEvent())
	require.ErrorContains(t, err, "certificate")
	require.Len(t, s.Messages(), 1)
}

func TestEmailContextCancel(t *testing.T) {
	// A server that accepts and never greets: Notify must give up when ctx
	// ends, long before its Timeout.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	t.Cleanup(func() {
		require.NoError(t, ln.Close())
		for c := range accepted {
			c.Close()
		}
	})

	n, err := NewSMTPNotifier(SMTPConfig{Addr: ln.Addr().String(), From: "exports@example.com", TLS: SMTPTLSNone, Timeout: time.Hour}, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-time.After(200 * time.Millisecond)
		cancel()
	}()
	start := time.Now()
	err = n.Notify(ctx, emailTo, completedEvent())
	require.ErrorIs(t, err, context.Canceled)
	require.Less(t, time.Since(start), emailWait)
}

func TestNewSMTPNotifierInvalid(t *testing.T) {
	valid := SMTPConfig{Addr: "smtp.example.com:587", From: "exports@example.com", Username: "u", Password: emailPassword, TLS: SMTPTLSStartTLS}
	for _, tc := range []struct {
		name   string
		edit   func(*SMTPConfig)
		fields []string
	}{
		{"no From", func(c *SMTPConfig) { c.From = "" }, []string{"From"}},
		{"bad From", func(c *SMTPConfig) { c.From = "exports@example.com\r\nBcc: x@example.com" }, []string{"From"}},
		{"bad TLS mode", func(c *SMTPConfig) { c.TLS = "ssl" }, []string{"TLS"}},
		{"empty TLS mode", func(c *SMTPConfig) { c.TLS = "" }, []string{"TLS"}},
		{"empty Addr", func(c *SMTPConfig) { c.Addr = "" }, []string{"Addr"}},
		{"Addr without port", func(c *SMTPConfig) { c.Addr = "smtp.example.com" }, []string{"Addr"}},
		{"Addr without host", func(c *SMTPConfig) { c.Addr = ":587" }, []string{"Addr"}},
		{"Addr named port", func(c *SMTPConfig) { c.Addr = "smtp.example.com:submission" }, []string{"Addr"}},
		{"Addr port 0", func(c *SMTPConfig) { c.Addr = "smtp.example.com:0" }, []string{"Addr"}},
		{"password in clear", func(c *SMTPConfig) { c.TLS = SMTPTLSNone }, []string{"TLS"}},
		{"Password without Username", func(c *SMTPConfig) { c.Username = "" }, []string{"Password"}},
		{"Username without Password", func(c *SMTPConfig) { c.Password = "" }, []string{"Password"}},
		{"negative Timeout", func(c *SMTPConfig) { c.Timeout = -time.Second }, []string{"Timeout"}},
		{"several", func(c *SMTPConfig) { c.Addr, c.From, c.TLS = "", "", "x" }, []string{"Addr", "From", "TLS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.edit(&cfg)
			n, err := NewSMTPNotifier(cfg, nil)
			require.Error(t, err)
			require.Nil(t, n)
			for _, f := range tc.fields {
				require.ErrorContains(t, err, "smtp config: "+f+":")
			}
			require.NotContains(t, err.Error(), emailPassword)
		})
	}

	for _, ok := range []SMTPConfig{
		valid,
		{Addr: "127.0.0.1:2525", From: "a@example.com", TLS: SMTPTLSNone},
		{Addr: "localhost:25", From: "a@example.com", Username: "u", Password: "p", TLS: SMTPTLSNone},
		{Addr: "[::1]:25", From: "a@example.com", Username: "u", Password: "p", TLS: SMTPTLSNone},
		{Addr: "smtp.example.com:465", From: "A <a@example.com>", TLS: SMTPTLSImplicit, Timeout: time.Minute},
	} {
		n, err := NewSMTPNotifier(ok, nil)
		require.NoError(t, err, "%v", ok)
		require.NotNil(t, n)
	}
}

func TestSMTPConfigRedacted(t *testing.T) {
	cfg := SMTPConfig{Addr: "smtp.example.com:587", From: "exports@example.com", Username: "u", Password: emailPassword, TLS: SMTPTLSStartTLS}
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%v %+v %s %#v", cfg, cfg, cfg, cfg), cfg.String()} {
		require.NotContains(t, s, emailPassword)
		require.Contains(t, s, "[redacted]")
	}
	logs := &emailLogs{}
	logs.logger().Info("config", "smtp", cfg)
	require.NotContains(t, logs.String(), emailPassword)
	require.Contains(t, logs.String(), "smtp.password_set=true")
	require.Contains(t, logs.String(), "smtp.addr=smtp.example.com:587")
}

func TestEmailFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 bytes", 1: "1 byte", 1023: "1023 bytes", 1024: "1.0 KiB (1024 bytes)",
		5 << 30: "5.0 GiB (5368709120 bytes)",
	} {
		require.Equal(t, want, formatSize(n), n)
	}
}
