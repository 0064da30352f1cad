// Package pgcluster owns private, throwaway PostgreSQL clusters for
// integration tests, the demo and benchmarks.
//
// Start finds the server binaries, runs initdb into a new directory,
// configures the cluster for logical replication on loopback only, starts
// postgres as a child process and waits until it accepts connections; Stop
// shuts it down and removes its directory. Such a cluster is for tests only:
// fsync is off and every local and loopback connection is trusted.
//
// PostgreSQL refuses to run as root, so when the current process is root the
// server runs as the "postgres" OS user (created by the PostgreSQL server
// package), in a directory chowned to that user.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// readyTimeout bounds how long Start waits for postgres to accept connections.
	readyTimeout = 60 * time.Second
	// readyPoll is the interval between connection attempts while starting.
	readyPoll = 25 * time.Millisecond
	// stopTimeout bounds a shutdown before the server is killed.
	stopTimeout = 30 * time.Second
	// killWait bounds the wait for the server to exit after SIGKILL.
	killWait = 10 * time.Second
	// portAttempts is how often Start picks another free port when the one it
	// picked was taken before postgres could bind it.
	portAttempts = 5
	// logTailMaxBytes is how much of the end of the log LogTail reads.
	logTailMaxBytes = 256 << 10
)

// process is one run of postgres.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once postgres has exited
	err    error         // exit status; read only after exited is closed
}

// errPortInUse reports that postgres could not bind the port it was given.
var errPortInUse = errors.New("port already in use")

// Options configures Start. The zero value is valid.
type Options struct {
	// Dir is the base directory; the cluster gets a new directory inside it.
	// Default: os.TempDir(). When running as root, every directory above the
	// cluster's must be traversable by the postgres OS user.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Settings are extra postgresql.conf settings. They override the defaults
	// (see Start) except "port", which is set by Port.
	Settings map[string]string
	// Keep leaves the cluster directory in place after Stop and after a
	// failed Start, for inspection.
	Keep bool
	// Logger receives start and stop events. Default: discard.
	Logger *slog.Logger
}

// Cluster is a running PostgreSQL server started by Start.
type Cluster struct {
	dir     string
	dataDir string
	logPath string
	binDir  string
	port    int
	keep    bool
	owner   *osUser
	logger  *slog.Logger

	proc *process // the running postgres

	stopOnce sync.Once
	stopErr  error
}

// Start creates a new cluster under opts.Dir and starts it. The server
// listens on 127.0.0.1 only and has these postgresql.conf settings unless
// opts.Settings overrides them: wal_level=logical, max_replication_slots=20,
// max_wal_senders=20, fsync=off, synchronous_commit=off, full_page_writes=off,
// shared_buffers=256MB, max_connections=200, wal_sender_timeout=60s, and the
// server log written to a file in the cluster directory (see LogTail). The
// cluster uses UTF8 and the C locale, so text sorts in byte order, and trusts
// every local and loopback connection, replication included, for user
// "postgres".
//
// ctx bounds only the start; the server runs until Stop.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "pgcluster")
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("start PostgreSQL: invalid port %d", opts.Port)
	}
	if err := validateSettings(opts.Settings); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	binDir, err := FindBinDir()
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	owner, err := serverUser()
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}

	base := opts.Dir
	if base == "" {
		base = os.TempDir()
	}
	if base, err = filepath.Abs(base); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: resolve base dir: %w", err)
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: create base dir: %w", err)
	}
	if owner != nil {
		if err := owner.checkTraversable(base); err != nil {
			return nil, fmt.Errorf("start PostgreSQL: %w", err)
		}
	}
	dir, err := os.MkdirTemp(base, "exportd-pg-")
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: create cluster dir: %w", err)
	}
	defer func() {
		if err != nil && !opts.Keep {
			err = errors.Join(err, removeDir(dir))
		}
	}()

	c := &Cluster{
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		logPath: filepath.Join(dir, "postgres.log"),
		binDir:  binDir,
		keep:    opts.Keep,
		owner:   owner,
		logger:  logger,
	}
	sockDir := filepath.Join(dir, "sock")
	if err := os.Mkdir(sockDir, 0o700); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: create socket dir: %w", err)
	}
	if err := c.chown(dir, sockDir); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}

	began := time.Now()
	if err := c.initdb(ctx); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: %w", err)
	}
	confPath := filepath.Join(c.dataDir, "postgresql.conf")
	initConf, err := os.ReadFile(confPath)
	if err != nil {
		return nil, fmt.Errorf("start PostgreSQL: read postgresql.conf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.dataDir, "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return nil, fmt.Errorf("start PostgreSQL: write pg_hba.conf: %w", err)
	}

	for attempt := 1; ; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = freePort(); err != nil {
				return nil, fmt.Errorf("start PostgreSQL: %w", err)
			}
		}
		conf := append(bytes.Clone(initConf), renderConf(port, sockDir, opts.Settings)...)
		if err := os.WriteFile(confPath, conf, 0o600); err != nil {
			return nil, fmt.Errorf("start PostgreSQL: write postgresql.conf: %w", err)
		}
		err = c.start(ctx, port)
		if err == nil {
			break
		}
		if errors.Is(err, errPortInUse) && opts.Port == 0 && attempt < portAttempts && !c.running() {
			logger.Warn("picked port was taken, trying another", "port", port, "attempt", attempt)
			continue
		}
		return nil, fmt.Errorf("start PostgreSQL in %s: %w\npostgres log (last lines):\n%s", dir, err, c.logTailOrNote(30))
	}
	logger.Info("PostgreSQL started", "port", c.port, "dir", c.dir, "bin", c.binDir,
		"duration", time.Since(began).Round(time.Millisecond))
	return c, nil
}

// initdb creates the data directory.
func (c *Cluster) initdb(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, "initdb"),
		"-D", c.dataDir,
		"--auth=trust", "-U", "postgres",
		"--encoding=UTF8", "--locale=C",
		"--no-sync",
	)
	cmd.Dir = c.dir
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr(c.owner.credential(), false)
	out, err := cmd.CombinedOutput()
	if werr := os.WriteFile(filepath.Join(c.dir, "initdb.log"), out, 0o644); werr != nil {
		c.logger.Warn("write initdb.log", "err", werr)
	}
	if err != nil {
		return fmt.Errorf("run initdb: %w\n%s", err, lastLines(string(out), 30))
	}
	return nil
}

// start starts postgres on port and waits until it accepts connections. On
// error the process is gone.
func (c *Cluster) start(ctx context.Context, port int) (err error) {
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open postgres log: %w", err)
	}
	defer func() { err = errors.Join(err, logFile.Close()) }() // the child has its own descriptor
	if err := c.chown(c.logPath); err != nil {
		return err
	}

	cmd := exec.Command(filepath.Join(c.binDir, "postgres"), "-D", c.dataDir)
	cmd.Dir = c.dir
	cmd.Env = childEnv()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr(c.owner.credential(), true)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	c.proc, c.port = p, port

	if err := c.waitReady(ctx); err != nil {
		return errors.Join(err, c.kill())
	}
	return nil
}

// waitReady polls until the server accepts connections, it exits, ctx ends
// or readyTimeout passes.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for {
		ok, err := c.ping(ctx)
		if ok || err != nil {
			return err
		}
		select {
		case <-c.proc.exited:
			if strings.Contains(c.LogTail(20), "Address already in use") {
				return fmt.Errorf("postgres exited: %w", errPortInUse)
			}
			return fmt.Errorf("postgres exited before accepting connections: %v", c.proc.err)
		case <-ctx.Done():
			return fmt.Errorf("wait for postgres to accept connections: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// ping reports whether this cluster accepts connections. A connection
// failure is not an error; a server on the port with another data directory
// is: some other process took the port first.
func (c *Cluster) ping(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		return false, nil
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	var dataDir string
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&dataDir); err != nil {
		return false, nil
	}
	if filepath.Clean(dataDir) != c.dataDir {
		return false, fmt.Errorf("port %d is served by another cluster (%s): %w", c.port, dataDir, errPortInUse)
	}
	return true, nil
}

// Stop shuts the server down (fast shutdown: SIGINT, which ends open
// sessions) and then removes the cluster directory unless Options.Keep was
// set. If ctx ends first or the shutdown takes longer than 30s, the server's
// process group is killed. Stop may be called more than once; later calls
// return the first call's result.
func (c *Cluster) Stop(ctx context.Context) error {
	return c.stop(ctx, syscall.SIGINT, "fast")
}

// StopImmediate is Stop with an immediate shutdown (SIGQUIT): the server
// exits without a checkpoint, as after a crash.
func (c *Cluster) StopImmediate(ctx context.Context) error {
	return c.stop(ctx, syscall.SIGQUIT, "immediate")
}

func (c *Cluster) stop(ctx context.Context, sig syscall.Signal, mode string) error {
	c.stopOnce.Do(func() {
		c.stopErr = c.shutdown(ctx, sig, mode)
	})
	return c.stopErr
}

func (c *Cluster) shutdown(ctx context.Context, sig syscall.Signal, mode string) error {
	var errs []error
	began := time.Now()
	select {
	case <-c.proc.exited:
		errs = append(errs, fmt.Errorf("postgres exited before Stop: %v", c.proc.err))
	default:
		if err := c.proc.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("signal postgres: %w", err))
		}
		timer := time.NewTimer(stopTimeout)
		defer timer.Stop()
		select {
		case <-c.proc.exited:
			if c.proc.err != nil && sig == syscall.SIGINT {
				errs = append(errs, fmt.Errorf("postgres %s shutdown: %w", mode, c.proc.err))
			}
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("wait for postgres %s shutdown: %w", mode, ctx.Err()), c.kill())
		case <-timer.C:
			errs = append(errs, fmt.Errorf("postgres %s shutdown took over %s; killed", mode, stopTimeout), c.kill())
		}
	}
	if !c.keep {
		errs = append(errs, removeDir(c.dir))
	}
	err := errors.Join(errs...)
	if err != nil {
		c.logger.Warn("PostgreSQL stopped with errors", "port", c.port, "dir", c.dir, "err", err)
	} else {
		c.logger.Info("PostgreSQL stopped", "port", c.port, "dir", c.dir, "mode", mode, "kept", c.keep,
			"duration", time.Since(began).Round(time.Millisecond))
	}
	return err
}

// running reports whether the last postgres started is still running.
func (c *Cluster) running() bool {
	if c.proc == nil {
		return false
	}
	select {
	case <-c.proc.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to the server's process group and waits for it to exit.
func (c *Cluster) kill() error {
	// Setpgid made the postmaster the leader of a process group holding its
	// backends too.
	if err := syscall.Kill(-c.proc.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill postgres: %w", err)
	}
	timer := time.NewTimer(killWait)
	defer timer.Stop()
	select {
	case <-c.proc.exited:
		return nil
	case <-timer.C:
		return fmt.Errorf("postgres (pid %d) still running %s after SIGKILL", c.proc.cmd.Process.Pid, killWait)
	}
}

// ConnString returns a URL for database db as user postgres over TCP, e.g.
// postgres://postgres@127.0.0.1:54321/db?sslmode=disable.
func (c *Cluster) ConnString(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the TCP port the server listens on at 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// Dir returns the cluster's own directory: it holds the data directory
// ("data"), the Unix socket directory ("sock") and the server log
// ("postgres.log").
func (c *Cluster) Dir() string { return c.dir }

// DataDir returns the PostgreSQL data directory (PGDATA).
func (c *Cluster) DataDir() string { return c.dataDir }

// BinDir returns the directory of the server binaries in use.
func (c *Cluster) BinDir() string { return c.binDir }

// CreateDatabase creates database name.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (err error) {
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		return fmt.Errorf("create database %q: connect: %w", name, err)
	}
	defer func() { err = errors.Join(err, conn.Close(context.WithoutCancel(ctx))) }()
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %q: %w", name, err)
	}
	return nil
}

// LogTail returns the last n lines of the server log, or a note saying why
// it cannot be read.
func (c *Cluster) LogTail(n int) string {
	if n <= 0 {
		return ""
	}
	f, err := os.Open(c.logPath)
	if err != nil {
		return fmt.Sprintf("(read postgres log: %v)", err)
	}
	defer func() { _ = f.Close() }() // read-only
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(read postgres log: %v)", err)
	}
	off := max(fi.Size()-logTailMaxBytes, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return fmt.Sprintf("(read postgres log: %v)", err)
	}
	s := string(b)
	if off > 0 {
		// Drop the partial first line.
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	return lastLines(s, n)
}

// logTailOrNote is LogTail for error messages: never empty.
func (c *Cluster) logTailOrNote(n int) string {
	if tail := c.LogTail(n); tail != "" {
		return tail
	}
	return "(empty)"
}

// lastLines returns the last n lines of s, without a trailing newline.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// chown gives paths to the server's OS user when it is not the current one.
func (c *Cluster) chown(paths ...string) error {
	if c.owner == nil {
		return nil
	}
	for _, p := range paths {
		if err := os.Chown(p, c.owner.uid, c.owner.gid); err != nil {
			return fmt.Errorf("chown %s to %s: %w", p, c.owner.name, err)
		}
	}
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	return port, nil
}

// childEnv is the environment for initdb and postgres: ours, with English
// messages (the port-in-use check reads them) and no libpq settings.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

func removeDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove cluster dir: %w", err)
	}
	return nil
}
