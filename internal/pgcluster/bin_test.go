package pgcluster

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeBin creates dir with the named executables.
func fakeBin(t *testing.T, dir string, names ...string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for _, n := range names {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755))
	}
	return dir
}

func TestFindBinDir(t *testing.T) {
	root := t.TempDir()
	lib := filepath.Join(root, "lib")
	fakeBin(t, filepath.Join(lib, "9.6", "bin"), "initdb", "postgres")
	v15 := fakeBin(t, filepath.Join(lib, "15", "bin"), "initdb", "postgres")
	fakeBin(t, filepath.Join(lib, "17", "bin"), "psql") // client only
	fakeBin(t, filepath.Join(lib, "latest", "bin"), "initdb", "postgres")
	env := fakeBin(t, filepath.Join(root, "env"), "initdb", "postgres")
	envClientOnly := fakeBin(t, filepath.Join(root, "envclient"), "psql")
	onPath := fakeBin(t, filepath.Join(root, "path"), "initdb", "postgres")
	require.NoError(t, os.MkdirAll(filepath.Join(root, "links"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(onPath, "initdb"), filepath.Join(root, "links", "initdb")))

	noPath := func(string) (string, error) { return "", errors.New("not found") }
	path := func(dir string) func(string) (string, error) {
		return func(name string) (string, error) { return filepath.Join(dir, name), nil }
	}
	for _, tc := range []struct {
		name     string
		env      string
		lib      string
		lookPath func(string) (string, error)
		want     string
		wantErr  string
	}{
		{name: "env wins", env: env, lib: lib, lookPath: path(onPath), want: env},
		{name: "env without server binaries", env: envClientOnly, lib: lib, wantErr: "EXPORTD_PG_BIN=" + envClientOnly + ": no initdb"},
		{name: "highest server version", lib: lib, lookPath: path(onPath), want: v15},
		{name: "PATH", lib: filepath.Join(root, "missing"), lookPath: path(onPath), want: onPath},
		{name: "PATH symlink resolved", lib: filepath.Join(root, "missing"), lookPath: path(filepath.Join(root, "links")), want: onPath},
		{name: "none", lib: filepath.Join(root, "missing"), lookPath: noPath, wantErr: "apt-get install postgresql"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := findBinDir(tc.env, tc.lib, tc.lookPath)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
		ok   bool
	}{
		{"15", []int{15}, true},
		{"9.6", []int{9, 6}, true},
		{"latest", nil, false},
		{"15beta1", nil, false},
		{"", nil, false},
	} {
		got, ok := parseVersion(tc.in)
		require.Equal(t, tc.ok, ok, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
}
