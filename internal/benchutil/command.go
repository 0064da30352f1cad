package benchutil

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// CommandUsage is what running a command took.
type CommandUsage struct {
	Wall time.Duration
	CPU  time.Duration // user plus system, from the child's rusage
	// PeakRSS is the child's resident set high-water mark, sampled from /proc
	// (rusage's maxrss is useless here: it counts the parent's memory, which
	// the child shared between fork and exec).
	PeakRSS int64
}

// RunCommand runs cmd to completion and measures it. cmd's Stdout and Stderr,
// if nil, are captured and quoted in the error when it fails.
func RunCommand(cmd *exec.Cmd) (CommandUsage, error) {
	var out bytes.Buffer
	if cmd.Stdout == nil {
		cmd.Stdout = &out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &out
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return CommandUsage{}, fmt.Errorf("start %s: %w", filepath.Base(cmd.Path), err)
	}
	w := WatchProcess(cmd.Process.Pid, 20*time.Millisecond)
	err := cmd.Wait()
	u := CommandUsage{Wall: time.Since(start)}
	_, u.PeakRSS = w.Stop()
	if ps := cmd.ProcessState; ps != nil {
		u.CPU = ps.UserTime() + ps.SystemTime()
	}
	if err != nil {
		return u, fmt.Errorf("run %s: %w: %s", filepath.Base(cmd.Path), err, strings.TrimSpace(out.String()))
	}
	return u, nil
}

// RecvLogical describes a pg_recvlogical run against one logical slot.
type RecvLogical struct {
	BinDir  string   // directory holding pg_recvlogical
	ConnURL string   // database URL, e.g. postgres://postgres@127.0.0.1:5432/postgres
	Slot    string   // slot name
	Options []string // plugin options, "name=value"
}

func (r RecvLogical) command(ctx context.Context, args ...string) *exec.Cmd {
	base := []string{"-d", r.ConnURL, "--slot=" + r.Slot}
	return exec.CommandContext(ctx, filepath.Join(r.BinDir, "pg_recvlogical"), append(base, args...)...)
}

// CreateSlot creates the slot with plugin (e.g. "pgoutput").
func (r RecvLogical) CreateSlot(ctx context.Context, plugin string) error {
	_, err := RunCommand(r.command(ctx, "--create-slot", "-P", plugin))
	return err
}

// DropSlot drops the slot.
func (r RecvLogical) DropSlot(ctx context.Context) error {
	_, err := RunCommand(r.command(ctx, "--drop-slot"))
	return err
}

// Drain streams the slot from its confirmed position up to endpos (an LSN as
// PostgreSQL prints it) into /dev/null, without retrying on errors, and
// measures the run. pg_recvlogical confirms what it wrote as it goes, so the
// slot ends at endpos.
func (r RecvLogical) Drain(ctx context.Context, endpos string) (CommandUsage, error) {
	args := []string{"--start", "--no-loop", "-f", "/dev/null", "--endpos=" + endpos}
	for _, o := range r.Options {
		args = append(args, "-o", o)
	}
	return RunCommand(r.command(ctx, args...))
}
