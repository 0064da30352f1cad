// Package smtptest starts a real SMTP server (emersion/go-smtp) on a free
// port of 127.0.0.1 for tests, keeps the messages it receives in memory, and
// ties its lifetime to the test. It can require AUTH PLAIN and speak TLS,
// implicit or through STARTTLS, with a self-signed certificate.
package smtptest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// stopTimeout bounds how long stopping the server waits for its connection
// handlers to end.
const stopTimeout = 10 * time.Second

// TLS modes of a Server.
const (
	TLSNone     = "none"     // plain text, AUTH allowed without TLS
	TLSStartTLS = "starttls" // STARTTLS offered (not required)
	TLSImplicit = "tls"      // TLS from the first byte
)

// Message is a message the server accepted.
type Message struct {
	From string   // MAIL FROM
	To   []string // RCPT TO, in order
	Data []byte   // the raw message after DATA, dot-unstuffed
	// Username is the AUTH PLAIN user of the session, "" without AUTH.
	Username string
	// TLS is whether the message arrived over TLS.
	TLS bool
}

// Option configures Start.
type Option func(*options)

type options struct {
	username, password string
	tlsMode            string
}

// WithAuth makes the server offer AUTH PLAIN and require it, with these
// credentials, before MAIL.
func WithAuth(username, password string) Option {
	return func(o *options) { o.username, o.password = username, password }
}

// WithTLS sets the TLS mode: TLSNone (the default), TLSStartTLS or
// TLSImplicit. Clients trust the server with ClientTLSConfig.
func WithTLS(mode string) Option {
	return func(o *options) { o.tlsMode = mode }
}

// Server is a running SMTP server.
type Server struct {
	srv       *smtp.Server
	addr      string
	opts      options
	clientTLS *tls.Config

	mu       sync.Mutex
	msgs     []Message
	changed  chan struct{} // closed and replaced when msgs grows
	conns    int           // connections accepted
	authFail int           // failed AUTH attempts
}

// Start starts a server configured by opts and stops it when t and its
// subtests end.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{opts: options{tlsMode: TLSNone}, changed: make(chan struct{})}
	for _, o := range opts {
		o(&s.opts)
	}

	var serverTLS *tls.Config
	switch s.opts.tlsMode {
	case TLSNone:
	case TLSStartTLS, TLSImplicit:
		var err error
		serverTLS, s.clientTLS, err = selfSigned()
		if err != nil {
			t.Fatalf("smtptest: make certificate: %v", err)
		}
	default:
		t.Fatalf("smtptest: unknown TLS mode %q", s.opts.tlsMode)
	}

	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: listen: %v", err)
	}
	s.addr = raw.Addr().String()
	tl := &trackingListener{Listener: raw, onAccept: s.accepted}
	var ln net.Listener = tl
	if s.opts.tlsMode == TLSImplicit {
		ln = tls.NewListener(tl, serverTLS)
	}

	logs := &testLog{t: t}
	s.srv = smtp.NewServer(smtp.BackendFunc(s.newSession))
	s.srv.Domain = "localhost"
	s.srv.ReadTimeout = time.Minute
	s.srv.WriteTimeout = time.Minute
	s.srv.MaxMessageBytes = 10 << 20
	s.srv.MaxRecipients = 50
	s.srv.AllowInsecureAuth = s.opts.tlsMode == TLSNone
	s.srv.ErrorLog = logs
	if s.opts.tlsMode == TLSStartTLS {
		s.srv.TLSConfig = serverTLS
	}

	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(ln) }()

	t.Cleanup(func() {
		defer logs.stop()
		if err := s.srv.Close(); err != nil {
			t.Errorf("smtptest: close server: %v", err)
		}
		// Serve may not have registered the listener with the server yet,
		// and then Close did not close it.
		if err := raw.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("smtptest: close listener: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("smtptest: serve: %v", err)
		}
		// Close closes the connections it knows of; tl also closes any it
		// accepted that had not been registered yet, then waits for every
		// handler to close its connection.
		if err := tl.closeAndWait(stopTimeout); err != nil {
			t.Errorf("smtptest: %v", err)
		}
	})
	return s
}

// Addr returns the server's host:port, on 127.0.0.1.
func (s *Server) Addr() string { return s.addr }

// ClientTLSConfig returns a client configuration that trusts the server's
// certificate, for 127.0.0.1 and localhost; nil in mode TLSNone.
func (s *Server) ClientTLSConfig() *tls.Config {
	if s.clientTLS == nil {
		return nil
	}
	return s.clientTLS.Clone()
}

// Messages returns the messages received so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneMessages(s.msgs)
}

// Connections returns how many connections the server has accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// AuthFailures returns how many AUTH attempts failed.
func (s *Server) AuthFailures() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.authFail
}

// WaitMessages waits until the server has received at least n messages and
// returns all it has, in order of arrival. It fails t if that takes longer
// than timeout or t's context ends first.
func (s *Server) WaitMessages(t testing.TB, n int, timeout time.Duration) []Message {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		if len(s.msgs) >= n {
			msgs := cloneMessages(s.msgs)
			s.mu.Unlock()
			return msgs
		}
		changed, have := s.changed, len(s.msgs)
		s.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("smtptest: %d of %d messages after %v", have, n, timeout)
			return nil
		case <-t.Context().Done():
			t.Fatalf("smtptest: %d of %d messages when the test ended: %v", have, n, context.Cause(t.Context()))
			return nil
		}
	}
}

func (s *Server) accepted() {
	s.mu.Lock()
	s.conns++
	s.mu.Unlock()
}

func (s *Server) add(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

func cloneMessages(msgs []Message) []Message {
	out := make([]Message, len(msgs))
	for i, m := range msgs {
		m.To = slices.Clone(m.To)
		m.Data = slices.Clone(m.Data)
		out[i] = m
	}
	return out
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	return &session{s: s, tls: isTLS}, nil
}

// session is one SMTP session. go-smtp calls its methods from the
// connection's goroutine only.
type session struct {
	s    *Server
	tls  bool
	user string // authenticated user
	from string
	to   []string
}

var _ smtp.AuthSession = (*session)(nil)

func (ss *session) AuthMechanisms() []string {
	if ss.s.opts.username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.s.opts.username == "" || mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if (identity != "" && identity != username) ||
			username != ss.s.opts.username || password != ss.s.opts.password {
			ss.s.mu.Lock()
			ss.s.authFail++
			ss.s.mu.Unlock()
			return smtp.ErrAuthFailed
		}
		ss.user = username
		return nil
	}), nil
}

func (ss *session) checkAuth() error {
	if ss.s.opts.username != "" && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	return nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if err := ss.checkAuth(); err != nil {
		return err
	}
	ss.from, ss.to = from, nil
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := ss.checkAuth(); err != nil {
		return err
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	if err := ss.checkAuth(); err != nil {
		return err
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.s.add(Message{From: ss.from, To: ss.to, Data: data, Username: ss.user, TLS: ss.tls})
	ss.from, ss.to = "", nil
	return nil
}

func (ss *session) Reset()        { ss.from, ss.to = "", nil }
func (ss *session) Logout() error { return nil }

// trackingListener counts accepted connections and remembers them until
// they are closed, so that stopping the server can wait for every
// connection handler.
type trackingListener struct {
	net.Listener
	onAccept func()

	mu     sync.Mutex
	open   map[*trackedConn]struct{}
	closed chan struct{} // closed when open empties after stopping
	stop   bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	if l.open == nil {
		l.open = make(map[*trackedConn]struct{})
	}
	l.open[tc] = struct{}{}
	l.mu.Unlock()
	l.onAccept()
	return tc, nil
}

// closeAndWait closes the connections still open and waits until each has
// been closed by its handler too.
func (l *trackingListener) closeAndWait(timeout time.Duration) error {
	l.mu.Lock()
	l.stop = true
	if len(l.open) == 0 {
		l.mu.Unlock()
		return nil
	}
	l.closed = make(chan struct{})
	closed := l.closed
	for c := range l.open {
		_ = c.Conn.Close() // unblocks the handler, which then calls c.Close
	}
	l.mu.Unlock()
	select {
	case <-closed:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("connection handlers still running after %v", timeout)
	}
}

func (l *trackingListener) done(c *trackedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.open[c]; !ok {
		return
	}
	delete(l.open, c)
	if l.stop && len(l.open) == 0 && l.closed != nil {
		close(l.closed)
	}
}

type trackedConn struct {
	net.Conn
	l *trackingListener
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil // closed by closeAndWait first
	}
	c.l.done(c)
	return err
}

// testLog passes go-smtp's error log to the test log until stopped, after
// which logging would panic.
type testLog struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool
}

func (l *testLog) Printf(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.t.Logf("smtptest: "+format, v...)
	}
}

func (l *testLog) Println(v ...any) {
	l.Printf("%s", fmt.Sprintln(v...))
}

func (l *testLog) stop() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
}

// selfSigned returns a server configuration with a fresh self-signed
// certificate for 127.0.0.1 and localhost, and a client configuration that
// trusts it.
func selfSigned() (server, client *tls.Config, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "smtptest"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
		MinVersion:   tls.VersionTLS12,
	}
	client = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return server, client, nil
}
