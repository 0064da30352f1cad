// Command exportd is the exportd daemon and its tools. Subcommands:
//
//	exportd run      replicate the configured tables into staging and serve HTTP
//	exportd demo     a one-command demo on a private PostgreSQL and an embedded Kafka broker
//	exportd request  produce an export request to the request topic
//	exportd status   print a running daemon's status
//	exportd export   render one tenant's export offline from a stopped daemon's staging
//	exportd version  print the version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "exportd:", err)
		os.Exit(1)
	}
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usage(stderr)
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stderr)
	case "demo":
		return cmdDemo(ctx, args[1:], stdout, stderr)
	case "request":
		return cmdRequest(ctx, args[1:], stdout, stderr)
	case "status":
		return cmdStatus(ctx, args[1:], stdout, stderr)
	case "export":
		return cmdExport(ctx, args[1:], stdout, stderr)
	case "version":
		_, err := fmt.Fprintln(stdout, "exportd", version)
		return err
	case "help", "-h", "--help":
		return usage(stdout)
	default:
		usage(stderr)
		return fmt.Errorf("unknown subcommand %q", args[0])
	}
}

func usage(w io.Writer) error {
	_, err := fmt.Fprint(w, `usage: exportd <subcommand> [flags]

subcommands:
  run       replicate the configured tables into staging and serve /metrics, /healthz, /readyz
  demo      run everything on this machine (private PostgreSQL, embedded Kafka) and export two tenants
  request   produce an export request to the request topic (-wait: wait for its outcome)
  status    print a running daemon's replication, staging and request status
  export    render and publish one tenant's export offline from a stopped daemon's staging
  version   print the version

Run "exportd <subcommand> -h" for its flags.
`)
	return err
}
