package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newFS(t *testing.T) *FS {
	t.Helper()
	s, err := NewFS(filepath.Join(t.TempDir(), "store", "root"))
	require.NoError(t, err)
	return s
}

func TestFSConformance(t *testing.T) {
	testStore(t, newFS(t))
}

// files returns the paths of all files and directories under the store's
// root, relative to it.
func files(t *testing.T, s *FS) []string {
	t.Helper()
	var got []string
	require.NoError(t, filepath.WalkDir(s.Root(), func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == s.Root() {
			return err
		}
		rel, err := filepath.Rel(s.Root(), path)
		if d.IsDir() {
			rel += "/"
		}
		got = append(got, rel)
		return err
	}))
	return got
}

func TestFSLayout(t *testing.T) {
	s := newFS(t)
	put(t, s, "a/b/c", []byte("abc"))
	require.Equal(t, []string{"a/", "a/b/", "a/b/c"}, files(t, s))

	fi, err := os.Stat(filepath.Join(s.Root(), "a", "b", "c"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	del(t, s, "a/b/c")
	require.Empty(t, files(t, s), "Delete removes the directories it empties")
	require.DirExists(t, s.Root(), "but not the root")
}

func TestFSFailedPutLeavesNoTemporaryFile(t *testing.T) {
	s := newFS(t)
	_, err := s.Put(t.Context(), "dir/obj", &failingReader{data: []byte("partial"), err: os.ErrClosed})
	require.ErrorIs(t, err, os.ErrClosed)
	require.Equal(t, []string{"dir/"}, files(t, s))
}

func TestFSDirectoriesAreNotObjects(t *testing.T) {
	s := newFS(t)
	put(t, s, "a/b", []byte("x"))

	_, err := s.Get(t.Context(), "a")
	require.ErrorIs(t, err, ErrNotExist)
	_, err = s.Stat(t.Context(), "a")
	require.ErrorIs(t, err, ErrNotExist)
	del(t, s, "a")
	require.Equal(t, "x", string(get(t, s, "a/b")), "deleting a directory's key is a no-op")

	_, err = s.Put(t.Context(), "a", strings.NewReader("y"))
	require.Error(t, err, "a key cannot be both an object and a directory")
	_, err = s.Put(t.Context(), "a/b/c", strings.NewReader("y"))
	require.Error(t, err)
	require.Equal(t, []string{"a/", "a/b"}, files(t, s), "failed Puts leave nothing behind")
}

func TestFSTemporaryFilesAreHidden(t *testing.T) {
	s := newFS(t)
	put(t, s, "d/obj", []byte("x"))
	require.NoError(t, os.WriteFile(filepath.Join(s.Root(), "d", tmpPrefix+"obj-123"), []byte("half"), 0o600))

	var keys []string
	require.NoError(t, s.List(t.Context(), "", func(o ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}))
	require.Equal(t, []string{"d/obj"}, keys)

	for _, key := range []string{tmpPrefix + "x", "d/" + tmpPrefix + "obj-123"} {
		_, err := s.Get(t.Context(), key)
		require.ErrorContains(t, err, "reserved prefix")
	}
}

func TestNewFSCreatesRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x", "y")
	s, err := NewFS(dir)
	require.NoError(t, err)
	require.DirExists(t, dir)
	require.Equal(t, dir, s.Root())
}

func TestFSConcurrentPutDelete(t *testing.T) {
	// Delete removes the directories it empties while Puts create files in
	// them; neither may fail.
	s := newFS(t)
	var wg sync.WaitGroup
	for i := range 4 {
		key := fmt.Sprintf("x/y/k%d", i)
		wg.Go(func() {
			for range 200 {
				_, err := s.Put(t.Context(), key, strings.NewReader("v"))
				if !assert.NoError(t, err) {
					return
				}
				if !assert.NoError(t, s.Delete(t.Context(), key)) {
					return
				}
			}
		})
	}
	wg.Wait()
	require.Empty(t, files(t, s))
}

func TestFSRemoveTemp(t *testing.T) {
	ctx := t.Context()
	s, err := NewFS(t.TempDir())
	require.NoError(t, err)
	_, err = s.Put(ctx, "a/b/obj", strings.NewReader("x"))
	require.NoError(t, err)
	// What a Put killed mid-write leaves.
	for _, p := range []string{"a/b/.tmp-obj-123", "a/.tmp-other-9"} {
		require.NoError(t, os.WriteFile(filepath.Join(s.Root(), p), []byte("partial"), 0o600))
	}
	n, err := s.RemoveTemp()
	require.NoError(t, err)
	require.Equal(t, 2, n)
	var keys []string
	require.NoError(t, s.List(ctx, "", func(o ObjectInfo) error { keys = append(keys, o.Key); return nil }))
	require.Equal(t, []string{"a/b/obj"}, keys)
	entries, err := os.ReadDir(filepath.Join(s.Root(), "a", "b"))
	require.NoError(t, err)
	require.Len(t, entries, 1)
}

func TestFSLockFilesAreHidden(t *testing.T) {
	s := newFS(t)
	_, err := s.PutIfAbsent(t.Context(), "d/obj", []byte("x"))
	require.NoError(t, err)
	locks, err := os.ReadDir(filepath.Join(s.Root(), lockDir))
	require.NoError(t, err)
	require.Len(t, locks, 1, "a lock file per key")

	var keys []string
	require.NoError(t, s.List(t.Context(), "", func(o ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}))
	require.Equal(t, []string{"d/obj"}, keys)
	require.NoError(t, s.List(t.Context(), lockDir+"/", func(o ObjectInfo) error {
		return fmt.Errorf("listed %s", o.Key)
	}))
	_, err = s.Get(t.Context(), lockDir+"/"+locks[0].Name())
	require.ErrorContains(t, err, "reserved prefix")

	n, err := s.RemoveTemp()
	require.NoError(t, err)
	require.Zero(t, n)
	require.FileExists(t, filepath.Join(s.Root(), lockDir, locks[0].Name()), "RemoveTemp keeps lock files")
	del(t, s, "d/obj")
	require.FileExists(t, filepath.Join(s.Root(), lockDir, locks[0].Name()), "and so does Delete")
}

func TestFSPutIfAbsentOverDirectory(t *testing.T) {
	s := newFS(t)
	put(t, s, "a/b", []byte("x"))
	_, err := s.PutIfAbsent(t.Context(), "a", []byte("y"))
	require.ErrorContains(t, err, "directory")
	require.NotErrorIs(t, err, ErrPrecondition, "no object is there")
	_, err = s.PutIfMatch(t.Context(), "a", []byte("y"), fsETag([]byte("x")))
	require.ErrorIs(t, err, ErrNotExist)
	require.Equal(t, []string{".tmp-locks/", ".tmp-locks/" + lockName("a"), "a/", "a/b"}, files(t, s),
		"no temporary file is left")
}

func lockName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func TestFSLockHonoursContext(t *testing.T) {
	s := newFS(t)
	unlock, err := s.lock(t.Context(), "k")
	require.NoError(t, err)
	defer unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = s.PutIfAbsent(ctx, "k", []byte("x"))
	require.ErrorIs(t, err, context.DeadlineExceeded, "the key stays locked")
	_, err = s.Stat(t.Context(), "k")
	require.ErrorIs(t, err, ErrNotExist)
}

// counterDirEnv, when set, makes TestFSConditionalAcrossProcesses a child
// process incrementing the counter in the store at that directory.
const counterDirEnv = "EXPORTD_TEST_FS_COUNTER_DIR"

// TestFSConditionalAcrossProcesses increments one counter from several
// processes sharing the directory, as exportd replicas share an FS store.
func TestFSConditionalAcrossProcesses(t *testing.T) {
	const (
		children   = 3
		increments = 20 // per process
	)
	if dir := os.Getenv(counterDirEnv); dir != "" {
		s, err := NewFS(dir)
		require.NoError(t, err)
		for range increments {
			_, err := increment(t.Context(), s, "counter")
			require.NoError(t, err)
		}
		return
	}
	s := newFS(t)
	_, err := s.PutIfAbsent(t.Context(), "counter", []byte("0"))
	require.NoError(t, err)

	var wg sync.WaitGroup
	for range children {
		wg.Go(func() {
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestFSConditionalAcrossProcesses$", "-test.count=1")
			cmd.Env = append(os.Environ(), counterDirEnv+"="+s.Root())
			out, err := cmd.CombinedOutput()
			assert.NoError(t, err, "child:\n%s", out)
		})
	}
	wg.Go(func() { // and this process too
		for range increments {
			_, err := increment(t.Context(), s, "counter")
			if !assert.NoError(t, err) {
				return
			}
		}
	})
	wg.Wait()
	require.Equal(t, strconv.Itoa((children+1)*increments), string(get(t, s, "counter")), "no increment is lost")
}
