package storage

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

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
