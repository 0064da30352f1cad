package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/exportd/exportd/internal/config"
	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/pipeline"
)

// cmdStatus prints a running daemon's status from its HTTP API.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (for http.addr)")
	addr := fs.String("addr", "", "base URL of the daemon (default: http://<http.addr> of the config)")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	watch := fs.Duration("watch", 0, "refresh every interval until interrupted, redrawing the screen on a terminal (e.g. 1s)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	base := *addr
	if base == "" {
		cfg, err := config.Load(*cfgPath, os.Getenv)
		if err != nil {
			return err
		}
		base = "http://" + cfg.HTTP.Addr
	}
	if *watch <= 0 {
		return statusOnce(ctx, stdout, base, *asJSON)
	}
	tty := isTerminal(stdout)
	for {
		if tty {
			fmt.Fprint(stdout, "\033[H\033[2J") // home, clear: progress bars redraw in place
		}
		if err := statusOnce(ctx, stdout, base, *asJSON); err != nil {
			fmt.Fprintln(stdout, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*watch):
		}
	}
}

// isTerminal reports whether w is a character device (an interactive terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func statusOnce(ctx context.Context, stdout io.Writer, base string, asJSON bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/api/status", nil)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: %s: %s", resp.Status, body)
	}
	if asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var s daemon.Status
	if err := json.Unmarshal(body, &s); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return printStatus(stdout, s)
}

func printStatus(w io.Writer, s daemon.Status) error {
	r := s.Replication
	fmt.Fprintf(w, "ready:        %v\n", s.Ready)
	fmt.Fprintf(w, "replication:  connected=%v snapshot_done=%v applied_lsn=%s lag=%d bytes %.1fs\n",
		r.Connected, r.SnapshotDone, r.AppliedLSN, r.LagBytes, r.LagSeconds)
	if p := r.Snapshot; p != nil {
		fmt.Fprintf(w, "snapshot:     %s %5.1f%%  %d rows  %.1f MB  about %s left\n",
			bar(p.Percent, 30), p.Percent, p.Rows, float64(p.Bytes)/1e6, (time.Duration(p.ETASeconds) * time.Second).Round(time.Second))
	}
	fmt.Fprintf(w, "staging:      %d tables, %d files, %.1f MB (every tenant at %s)\n",
		s.Staging.Tables, s.Staging.Files, float64(s.Staging.Bytes)/1e6, r.AppliedLSN)
	fmt.Fprintf(w, "requests:    ")
	for _, st := range []string{"received", "accepted", "blocked_unpaid", "rendering", "completed", "failed", "rejected", "expired"} {
		fmt.Fprintf(w, " %s=%d", st, s.Requests[pipeline.RequestState(st)])
	}
	fmt.Fprintln(w)
	for _, e := range s.Exports {
		fmt.Fprintf(w, "export %s (tenant %s): %s %5.1f%%  %d of ~%d rows  %d files  %.1f MB  about %s left\n",
			e.RequestID, e.TenantID, bar(e.Percent, 30), e.Percent, e.Rows, e.RowsTotal, e.Files, float64(e.Bytes)/1e6,
			(time.Duration(e.ETASeconds) * time.Second).Round(time.Second))
	}
	if len(s.Active) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nREQUEST\tTENANT\tSTATE\tSINCE\tREASON")
	for _, a := range s.Active {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Request.RequestID, a.Request.TenantID, a.State,
			a.UpdatedAt.Format(time.RFC3339), a.Reason)
	}
	return tw.Flush()
}

// bar draws a progress bar of width cells.
func bar(percent float64, width int) string {
	n := int(percent / 100 * float64(width))
	n = max(0, min(width, n))
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}
