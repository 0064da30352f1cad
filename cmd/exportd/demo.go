package main

import (
	"context"
	"flag"
	"io"
	"log/slog"

	"github.com/exportd/exportd/internal/demo"
)

// cmdDemo runs the one-command demo until SIGINT or SIGTERM.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("http-addr", "", "address of exportd's HTTP server (default 127.0.0.1:8080, or a free port)")
	rows := fs.Int("rows", 20_000, "rows of generated data")
	verbose := fs.Bool("v", false, "log the components' info messages too")
	replicas := fs.Int("replicas", 1, "exportd replicas to run, sharing staging in a directory (then the staging writer is stopped to show another take over)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	return demo.Run(ctx, stdout, demo.Options{HTTPAddr: *addr, Rows: *rows, Logger: logger, Replicas: *replicas})
}
