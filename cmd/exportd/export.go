package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/exportd/exportd/internal/config"
	"github.com/exportd/exportd/internal/daemon"
	"github.com/exportd/exportd/pipeline"
	"github.com/exportd/exportd/snapshot"
	"github.com/exportd/exportd/storage"
)

// cmdExport renders and publishes one tenant's export offline, from the
// staging of a stopped daemon, to a filesystem store, and prints the
// manifest as JSON. It is a tool for operators and tests; the daemon
// serves requests from Kafka.
func cmdExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stagingDir := fs.String("staging-dir", "", "staging directory of a stopped daemon (<state_dir>/staging); with -config and shared staging, a directory to cache its files in")
	configPath := fs.String("config", "", "exportd's configuration file: with staging.backend s3 or fs, export from the shared staging (replicas may keep running)")
	tenant := fs.String("tenant", "", "tenant id")
	requestID := fs.String("request-id", "", "request id (default: manual-<unix time>)")
	filesDir := fs.String("files-dir", "", "directory of the platform's file store")
	outDir := fs.String("out-dir", "", "directory to publish the export to")
	specPath := fs.String("spec", "", "export spec YAML (default: the built-in spec of the reference schema)")
	publicURL := fs.String("public-url", "http://127.0.0.1:8080", "base URL of the daemon that serves the download links")
	secretFile := fs.String("link-secret-file", "", "file holding the link signing secret (or env EXPORTD_PUBLISH_LINK_SECRET)")
	level := fs.Int("compression-level", 1, "deflate level, 1-9")
	prerenderDir := fs.String("prerender-dir", "", "the daemon's prerendered CSVs, copied where they match (default <state_dir>/prerender if it exists; \"off\": render every CSV)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to this file")
	memProfile := fs.String("memprofile", "", "write an allocation profile to this file at the end")
	memLimit := fs.Int64("memory-limit", 192<<20, "soft memory limit in bytes (runtime/debug.SetMemoryLimit); ignored when GOMEMLIMIT is set")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for name, v := range map[string]string{"-staging-dir": *stagingDir, "-tenant": *tenant, "-files-dir": *filesDir, "-out-dir": *outDir} {
		if v == "" {
			return fmt.Errorf("export: %s is required", name)
		}
	}
	if os.Getenv("GOMEMLIMIT") == "" && *memLimit > 0 {
		debug.SetMemoryLimit(*memLimit)
	}
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	if *memProfile != "" {
		defer func() {
			if f, err := os.Create(*memProfile); err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	if *requestID == "" {
		*requestID = fmt.Sprintf("manual-%d", time.Now().Unix())
	}
	secret := []byte(os.Getenv("EXPORTD_PUBLISH_LINK_SECRET"))
	if *secretFile != "" {
		b, err := os.ReadFile(*secretFile)
		if err != nil {
			return fmt.Errorf("export: -link-secret-file: %w", err)
		}
		secret = []byte(strings.TrimRight(string(b), "\r\n"))
	}
	if len(secret) == 0 {
		return errors.New("export: a link secret is required: -link-secret-file or EXPORTD_PUBLISH_LINK_SECRET")
	}
	spec := pipeline.DefaultSpec()
	if *specPath != "" {
		var err error
		if spec, err = pipeline.LoadSpec(*specPath); err != nil {
			return err
		}
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	files, err := storage.NewFS(*filesDir)
	if err != nil {
		return fmt.Errorf("export: -files-dir: %w", err)
	}
	out, err := storage.NewFS(*outDir)
	if err != nil {
		return fmt.Errorf("export: -out-dir: %w", err)
	}
	signer, err := storage.NewSigner(secret, *publicURL, time.Now)
	if err != nil {
		return fmt.Errorf("export: link secret: %w", err)
	}
	store, closeStaging, err := openExportStaging(ctx, *configPath, *stagingDir, logger)
	if err != nil {
		return err
	}
	defer closeStaging()
	if !store.State().SnapshotDone {
		return errors.New("export: staging has no complete initial snapshot")
	}
	v, err := store.Pin(ctx)
	if err != nil {
		return err
	}
	defer v.Close()
	switch *prerenderDir {
	case "off":
		*prerenderDir = ""
	case "":
		if d := filepath.Join(filepath.Dir(filepath.Clean(*stagingDir)), pipeline.PrerenderDir); isDir(d) {
			*prerenderDir = d
		}
	}
	ex := pipeline.NewExporter(spec, files, &storage.FSLinker{FS: out, Signer: signer},
		pipeline.ExportConfig{CompressionLevel: *level, PrerenderDir: *prerenderDir}, logger, nil)
	m, err := ex.Export(ctx, v, *tenant, *requestID)
	if err != nil {
		return err
	}
	if peak, ok := peakRSS(); ok {
		logger.Info("export done", "peak_rss_bytes", peak)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(m)
}

// openExportStaging opens the staging to export from: the shared staging of
// the configuration at configPath, if it has one, else the local staging in
// dir.
func openExportStaging(ctx context.Context, configPath, dir string, logger *slog.Logger) (*snapshot.Store, func(), error) {
	if configPath != "" {
		cfg, err := config.Load(configPath, os.Getenv)
		if err != nil {
			return nil, nil, err
		}
		if cfg.Staging.Shared() {
			if err := cfg.Validate(); err != nil {
				return nil, nil, err
			}
			store, closer, err := daemon.OpenSharedStaging(ctx, cfg, dir, logger)
			if err != nil {
				return nil, nil, fmt.Errorf("export: %w", err)
			}
			// Open read the bucket's newest version.
			return store, func() { store.Close(); closer.Close() }, nil
		}
	}
	store, err := snapshot.Open(ctx, dir, snapshot.Options{Logger: logger, NoCompaction: true})
	if err != nil {
		return nil, nil, fmt.Errorf("export: open staging %s: %w", dir, err)
	}
	return store, func() { store.Close() }, nil
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// peakRSS reads the process's peak resident set size (VmHWM) from /proc:
// unlike getrusage's ru_maxrss seen by a parent, it excludes the memory the
// process shared with its parent between fork and exec.
func peakRSS() (int64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err == nil {
				return kb << 10, true
			}
		}
	}
	return 0, false
}
