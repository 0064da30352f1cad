package pgcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// EnvBinDir is the environment variable that names the directory of the
// PostgreSQL server binaries (initdb, postgres), overriding the search.
const EnvBinDir = "EXPORTD_PG_BIN"

// debianLibDir holds one bin directory per installed major version on
// Debian and Ubuntu: /usr/lib/postgresql/<version>/bin.
const debianLibDir = "/usr/lib/postgresql"

// FindBinDir returns the directory holding initdb and postgres: $EXPORTD_PG_BIN
// if set, else the highest version under /usr/lib/postgresql/*/bin, else the
// directory of initdb on PATH.
func FindBinDir() (string, error) {
	return findBinDir(os.Getenv(EnvBinDir), debianLibDir, exec.LookPath)
}

func findBinDir(env, libDir string, lookPath func(string) (string, error)) (string, error) {
	if env != "" {
		if err := hasServerBinaries(env); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBinDir, env, err)
		}
		return env, nil
	}
	if dir, ok := highestVersionBinDir(libDir); ok {
		return dir, nil
	}
	if initdb, err := lookPath("initdb"); err == nil {
		// Prefer the real directory when PATH holds a symlink, e.g.
		// /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb.
		if real, err := filepath.EvalSymlinks(initdb); err == nil && hasServerBinaries(filepath.Dir(real)) == nil {
			return filepath.Dir(real), nil
		}
		if hasServerBinaries(filepath.Dir(initdb)) == nil {
			return filepath.Dir(initdb), nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries (initdb and postgres) found in $" + EnvBinDir + ", " +
		libDir + "/*/bin or PATH: install the PostgreSQL server package, e.g. apt-get install postgresql, " +
		"or set " + EnvBinDir + " to their directory")
}

// highestVersionBinDir returns libDir/<version>/bin for the highest version
// that has the server binaries; client-only packages install bin dirs
// without them.
func highestVersionBinDir(libDir string) (string, bool) {
	entries, err := os.ReadDir(libDir)
	if err != nil {
		return "", false
	}
	type candidate struct {
		version []int
		dir     string
	}
	var found []candidate
	for _, e := range entries {
		v, ok := parseVersion(e.Name())
		if !ok {
			continue
		}
		dir := filepath.Join(libDir, e.Name(), "bin")
		if hasServerBinaries(dir) == nil {
			found = append(found, candidate{v, dir})
		}
	}
	if len(found) == 0 {
		return "", false
	}
	best := slices.MaxFunc(found, func(a, b candidate) int { return slices.Compare(a.version, b.version) })
	return best.dir, true
}

// parseVersion parses "15" or "9.6".
func parseVersion(s string) ([]int, bool) {
	var v []int
	for part := range strings.SplitSeq(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 {
			return nil, false
		}
		v = append(v, n)
	}
	return v, true
}

// hasServerBinaries checks that dir holds executable initdb and postgres.
func hasServerBinaries(dir string) error {
	var errs []error
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("no %s: %w", name, err))
		case fi.IsDir() || fi.Mode().Perm()&0o111 == 0:
			errs = append(errs, fmt.Errorf("%s is not an executable file", filepath.Join(dir, name)))
		}
	}
	return errors.Join(errs...)
}
