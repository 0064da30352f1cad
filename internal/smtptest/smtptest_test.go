package smtptest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 30 * time.Second

const body = "Subject: hi\r\n\r\nline one\r\n.leading dot\r\n"

func send(t *testing.T, c *smtp.Client, from string, to ...string) {
	t.Helper()
	require.NoError(t, c.SendMail(from, to, strings.NewReader(body)))
}

func TestPlain(t *testing.T) {
	s := Start(t)
	require.True(t, strings.HasPrefix(s.Addr(), "127.0.0.1:"), s.Addr())
	require.Nil(t, s.ClientTLSConfig())
	require.Empty(t, s.Messages())

	c, err := smtp.Dial(s.Addr())
	require.NoError(t, err)
	defer c.Close()
	ok, _ := c.Extension("AUTH")
	require.False(t, ok, "AUTH offered without WithAuth")
	send(t, c, "a@example.com", "b@example.com", "c@example.com")
	send(t, c, "d@example.com", "e@example.com")
	require.NoError(t, c.Quit())

	msgs := s.WaitMessages(t, 2, waitTimeout)
	require.Len(t, msgs, 2)
	require.Equal(t, "a@example.com", msgs[0].From)
	require.Equal(t, []string{"b@example.com", "c@example.com"}, msgs[0].To)
	require.Equal(t, body, string(msgs[0].Data))
	require.Empty(t, msgs[0].Username)
	require.False(t, msgs[0].TLS)
	require.Equal(t, "d@example.com", msgs[1].From)
	require.Equal(t, []string{"e@example.com"}, msgs[1].To)
	require.Equal(t, 1, s.Connections())

	msgs[0].To[0] = "changed"
	require.Equal(t, "b@example.com", s.Messages()[0].To[0], "Messages returns copies")
}

func TestWaitMessagesWaits(t *testing.T) {
	s := Start(t)
	sent := make(chan error, 1)
	go func() {
		// Sent while WaitMessages below is (most likely) already waiting.
		c, err := smtp.Dial(s.Addr())
		if err == nil {
			err = errors.Join(c.SendMail("a@example.com", []string{"b@example.com"}, strings.NewReader(body)), c.Quit())
		}
		sent <- err
	}()
	msgs := s.WaitMessages(t, 1, waitTimeout)
	require.Len(t, msgs, 1)
	require.NoError(t, <-sent)
}

func TestAuth(t *testing.T) {
	s := Start(t, WithAuth("user", "secret-pass"))

	c, err := smtp.Dial(s.Addr())
	require.NoError(t, err)
	defer c.Close()
	require.True(t, c.SupportsAuth(sasl.Plain))

	err = c.SendMail("a@example.com", []string{"b@example.com"}, strings.NewReader(body))
	require.ErrorContains(t, err, "authenticate", "MAIL before AUTH")

	err = c.Auth(sasl.NewPlainClient("", "user", "wrong"))
	require.Error(t, err)
	require.Equal(t, 1, s.AuthFailures())

	require.NoError(t, c.Auth(sasl.NewPlainClient("", "user", "secret-pass")))
	send(t, c, "a@example.com", "b@example.com")
	require.NoError(t, c.Quit())

	msgs := s.WaitMessages(t, 1, waitTimeout)
	require.Equal(t, "user", msgs[0].Username)
	require.Equal(t, 1, s.AuthFailures())
}

func TestStartTLS(t *testing.T) {
	s := Start(t, WithTLS(TLSStartTLS), WithAuth("user", "pw"))

	// Without TLS the server neither offers nor accepts AUTH.
	c, err := smtp.Dial(s.Addr())
	require.NoError(t, err)
	require.NoError(t, c.Hello("localhost"))
	ok, _ := c.Extension("AUTH")
	require.False(t, ok, "AUTH offered before STARTTLS")
	ok, _ = c.Extension("STARTTLS")
	require.True(t, ok)
	require.NoError(t, c.Close())

	c, err = smtp.DialStartTLS(s.Addr(), s.ClientTLSConfig())
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Auth(sasl.NewPlainClient("", "user", "pw")))
	send(t, c, "a@example.com", "b@example.com")
	require.NoError(t, c.Quit())

	msgs := s.WaitMessages(t, 1, waitTimeout)
	require.True(t, msgs[0].TLS)
	require.Equal(t, "user", msgs[0].Username)
}

func TestImplicitTLS(t *testing.T) {
	s := Start(t, WithTLS(TLSImplicit))

	c, err := smtp.DialTLS(s.Addr(), s.ClientTLSConfig())
	require.NoError(t, err)
	defer c.Close()
	send(t, c, "a@example.com", "b@example.com")
	require.NoError(t, c.Quit())

	msgs := s.WaitMessages(t, 1, waitTimeout)
	require.True(t, msgs[0].TLS)

	// A client that does not trust the certificate is refused.
	_, err = smtp.DialTLS(s.Addr(), nil)
	require.Error(t, err)
}

// TestStopIdle stops servers right after starting them, before Serve may
// have started.
func TestStopIdle(t *testing.T) {
	for i := range 50 {
		t.Run(fmt.Sprint(i), func(t *testing.T) { Start(t) })
	}
}

// TestStopWithOpenConnection checks that the cleanup does not wait for
// clients to hang up, and leaves no goroutine behind (goleak).
func TestStopWithOpenConnection(t *testing.T) {
	var conn net.Conn
	t.Run("server", func(t *testing.T) {
		s := Start(t)
		var err error
		conn, err = net.Dial("tcp", s.Addr())
		require.NoError(t, err)
		greeting, err := bufio.NewReader(conn).ReadString('\n')
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(greeting, "220 "), greeting)
	})
	defer conn.Close()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(waitTimeout)))
	_, err := conn.Read(make([]byte, 512))
	require.Error(t, err, "the server closed the connection")
	var ne net.Error
	if errors.As(err, &ne) {
		require.False(t, ne.Timeout(), "read timed out: %v", err)
	}
}
