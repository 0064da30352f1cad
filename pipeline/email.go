package pipeline

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	netmail "net/mail"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wneessen/go-mail"
)

// SMTP TLS modes, the values of SMTPConfig.TLS.
const (
	// SMTPTLSNone sends in plain text. Credentials are then only sent to
	// localhost, 127.0.0.1 or ::1.
	SMTPTLSNone = "none"
	// SMTPTLSStartTLS requires STARTTLS before anything else is sent.
	SMTPTLSStartTLS = "starttls"
	// SMTPTLSImplicit speaks TLS from the first byte (usually port 465).
	SMTPTLSImplicit = "tls"
)

// DefaultSMTPTimeout bounds one delivery when SMTPConfig.Timeout is zero.
const DefaultSMTPTimeout = 30 * time.Second

// Subjects of notification emails.
const (
	subjectCompleted     = "Your data export is ready"
	subjectBlockedUnpaid = "Your data export is waiting for payment"
)

// SMTPConfig configures an SMTPNotifier.
type SMTPConfig struct {
	// Addr is the server's host:port.
	Addr string
	// From is the sender address, bare or with a display name
	// ("Exports <exports@example.com>").
	From string
	// Username and Password are AUTH PLAIN credentials; without Username
	// there is no AUTH.
	Username string
	Password string
	// TLS is SMTPTLSNone, SMTPTLSStartTLS or SMTPTLSImplicit.
	TLS string
	// Timeout bounds one delivery, from dialling to QUIT; zero means
	// DefaultSMTPTimeout.
	Timeout time.Duration
}

// LogValue logs c without its password.
func (c SMTPConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("addr", c.Addr), slog.String("from", c.From),
		slog.String("username", c.Username), slog.Bool("password_set", c.Password != ""),
		slog.String("tls", c.TLS), slog.Duration("timeout", c.Timeout))
}

// String formats c without its password, for %v and %s.
func (c SMTPConfig) String() string {
	return fmt.Sprintf("{Addr:%s From:%s Username:%s Password:%s TLS:%s Timeout:%v}",
		c.Addr, c.From, c.Username, c.redacted(), c.TLS, c.Timeout)
}

// GoString formats c without its password, for %#v.
func (c SMTPConfig) GoString() string {
	return fmt.Sprintf("pipeline.SMTPConfig{Addr:%q, From:%q, Username:%q, Password:%q, TLS:%q, Timeout:%d}",
		c.Addr, c.From, c.Username, c.redacted(), c.TLS, c.Timeout)
}

func (c SMTPConfig) redacted() string {
	if c.Password == "" {
		return ""
	}
	return "[redacted]"
}

// Notifier tells a requester about their export.
type Notifier interface {
	// Notify sends to the address to a message about ev, for the event
	// types it has a message for, and returns nil without sending for the
	// others. It may be called concurrently.
	Notify(ctx context.Context, to string, ev Event) error
}

// SMTPNotifier sends notifications by SMTP: one message, in its own
// connection, when an export completes or is blocked by unpaid invoices.
type SMTPNotifier struct {
	cfg    SMTPConfig
	host   string
	port   int
	logger *slog.Logger

	// tlsConfig, if set, replaces the default client TLS configuration
	// (tests trust their own certificate with it).
	tlsConfig *tls.Config
}

var _ Notifier = (*SMTPNotifier)(nil)

// NewSMTPNotifier validates cfg and returns a notifier using it. logger may
// be nil.
func NewSMTPNotifier(cfg SMTPConfig, logger *slog.Logger) (*SMTPNotifier, error) {
	host, port, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultSMTPTimeout
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &SMTPNotifier{cfg: cfg, host: host, port: port, logger: logger.With("component", "email")}, nil
}

func (c *SMTPConfig) validate() (host string, port int, err error) {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("smtp config: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Addr == "" {
		fail("Addr", "required (host:port)")
	} else if h, p, err := net.SplitHostPort(c.Addr); err != nil {
		fail("Addr", "%q: want host:port: %v", c.Addr, err)
	} else if h == "" {
		fail("Addr", "%q: no host", c.Addr)
	} else if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		fail("Addr", "%q: port %q is not a number from 1 to 65535", c.Addr, p)
	} else {
		host, port = h, n
	}
	if c.From == "" {
		fail("From", "required")
	} else if _, err := netmail.ParseAddress(c.From); err != nil {
		fail("From", "%q: %v", c.From, err)
	}
	switch c.TLS {
	case SMTPTLSNone:
		if c.Username != "" && host != "" && !isLoopbackName(host) {
			fail("TLS", "%q with Username would send the password in clear to %s; use %q or %q",
				c.TLS, host, SMTPTLSStartTLS, SMTPTLSImplicit)
		}
	case SMTPTLSStartTLS, SMTPTLSImplicit:
	default:
		fail("TLS", "%q: want %q, %q or %q", c.TLS, SMTPTLSNone, SMTPTLSStartTLS, SMTPTLSImplicit)
	}
	if c.Password != "" && c.Username == "" {
		fail("Password", "set without Username")
	}
	if c.Username != "" && c.Password == "" {
		fail("Password", "required with Username")
	}
	if c.Timeout < 0 {
		fail("Timeout", "%v is negative", c.Timeout)
	}
	if err := errors.Join(errs...); err != nil {
		return "", 0, err
	}
	return host, port, nil
}

// isLoopbackName reports whether go-mail sends PLAIN credentials to host
// without TLS.
func isLoopbackName(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

// Notify sends the message for ev to the address to: for a completed event
// the master link, for a blocked_unpaid event the outstanding invoices.
// Other events send nothing. ctx bounds the whole exchange, as does the
// configured Timeout.
func (n *SMTPNotifier) Notify(ctx context.Context, to string, ev Event) error {
	var subject, body string
	switch ev.Type {
	case EventCompleted:
		if ev.MasterURL == "" {
			return fmt.Errorf("email for completed request %s: no master link", ev.RequestID)
		}
		subject, body = subjectCompleted, completedBody(ev)
	case EventBlockedUnpaid:
		subject, body = subjectBlockedUnpaid, blockedBody(ev)
	default:
		return nil
	}

	msg := mail.NewMsg()
	if err := msg.From(n.cfg.From); err != nil {
		return fmt.Errorf("email from %q: %w", n.cfg.From, err)
	}
	// go-mail parses the address with net/mail: CR, LF and anything but a
	// single address are refused, so no header can be injected.
	if err := msg.To(to); err != nil {
		return fmt.Errorf("send email to %q: %w", to, err)
	}
	msg.Subject(subject)
	msg.SetUserAgent("exportd")
	msg.SetGenHeader("Auto-Submitted", "auto-generated") // RFC 3834: no auto-replies
	msg.SetBodyString(mail.TypeTextPlain, body)

	client, done, err := n.client(ctx)
	if err != nil {
		return fmt.Errorf("send email to %q: %w", to, err)
	}
	err = client.DialAndSendWithContext(ctx, msg)
	done()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("send email to %q: %w: %w", to, context.Cause(ctx), err)
		}
		return fmt.Errorf("send email to %q: %w", to, err)
	}
	n.logger.Debug("email sent", "request_id", ev.RequestID, "tenant", ev.TenantID, "event", ev.Type)
	return nil
}

// client returns a go-mail client for one delivery, whose connection is
// closed if ctx ends before done is called.
func (n *SMTPNotifier) client(ctx context.Context) (c *mail.Client, done func(), err error) {
	tlsConfig := &tls.Config{ServerName: n.host, MinVersion: tls.VersionTLS12}
	if n.tlsConfig != nil {
		tlsConfig = n.tlsConfig.Clone()
		if tlsConfig.ServerName == "" {
			tlsConfig.ServerName = n.host
		}
	}

	var (
		mu   sync.Mutex
		stop []func() bool
	)
	done = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range stop {
			s()
		}
	}
	dialer := &net.Dialer{}
	dial := func(dialCtx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		var err error
		if n.cfg.TLS == SMTPTLSImplicit {
			// A *tls.Conn, which go-mail takes as encrypted.
			conn, err = (&tls.Dialer{NetDialer: dialer, Config: tlsConfig}).DialContext(dialCtx, network, addr)
		} else {
			conn, err = dialer.DialContext(dialCtx, network, addr)
		}
		if err != nil {
			return nil, err
		}
		mu.Lock()
		stop = append(stop, context.AfterFunc(ctx, func() { conn.Close() }))
		mu.Unlock()
		return conn, nil
	}

	opts := []mail.Option{
		mail.WithPort(n.port),
		mail.WithTimeout(n.cfg.Timeout),
		mail.WithTLSConfig(tlsConfig),
		mail.WithDialContextFunc(dial),
	}
	switch n.cfg.TLS {
	case SMTPTLSNone:
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	case SMTPTLSStartTLS:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	case SMTPTLSImplicit:
		opts = append(opts, mail.WithSSL()) // dial does the TLS
	}
	if n.cfg.Username != "" {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthPlain),
			mail.WithUsername(n.cfg.Username), mail.WithPassword(n.cfg.Password))
	}
	c, err = mail.NewClient(n.host, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("smtp client: %w", err)
	}
	return c, done, nil
}

func completedBody(ev Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Hello,\n\nyour data export is ready. Download it from this link:\n\n%s\n\n", ev.MasterURL)
	if ev.ExpiresAt != nil {
		fmt.Fprintf(&b, "The link expires at %s (UTC).\n\n", ev.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if len(ev.Parts) > 0 {
		b.WriteString("Parts:\n")
		for _, p := range ev.Parts {
			fmt.Fprintf(&b, "- %s: %s, %s\n", p.FileName, formatSize(p.SizeBytes), plural(p.FileCount, "file"))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "Missing files: %d", ev.MissingFiles)
	if ev.MissingFiles > 0 {
		b.WriteString(" (listed in missing_files.csv inside the parts)")
	}
	fmt.Fprintf(&b, "\nRequest id: %s\n", ev.RequestID)
	return b.String()
}

func blockedBody(ev Event) string {
	var b strings.Builder
	b.WriteString("Hello,\n\nyour data export is waiting for payment")
	if ev.Reason != "" {
		fmt.Fprintf(&b, " (reason: %s)", ev.Reason)
	}
	b.WriteString(".\n\n")
	if len(ev.OutstandingInvoices) > 0 {
		b.WriteString("Outstanding invoices:\n")
		for _, id := range ev.OutstandingInvoices {
			fmt.Fprintf(&b, "- %s\n", id)
		}
		b.WriteString("\n")
	}
	b.WriteString("The export will start by itself once they are paid; there is no need to request it again.\n\n")
	fmt.Fprintf(&b, "Request id: %s\n", ev.RequestID)
	return b.String()
}

// formatSize formats n bytes for people: "12.3 MiB (12884901 bytes)".
func formatSize(n int64) string {
	if n < 1024 {
		return plural(n, "byte")
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s (%d bytes)", v, units[i], n)
}

func plural(n int64, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}
