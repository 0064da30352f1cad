package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tmpPrefix starts the names of FS's temporary files and of its lock
// files' directory. List skips them, and keys with a segment that starts
// with it are rejected.
const tmpPrefix = ".tmp-"

// lockDir is the directory, under the store's root, of the lock files of
// conditional writes: one per key, named by the SHA-256 of the key, and
// never removed (removing one while a process holds it would let a second
// process lock a new file of the same name).
const lockDir = tmpPrefix + "locks"

// Bounds of the wait between attempts to take a lock that another writer
// holds.
const (
	lockMinWait = time.Millisecond
	lockMaxWait = 10 * time.Millisecond
)

// createTempAttempts bounds Put's retries when a concurrent Delete removes
// the object's directory.
const createTempAttempts = 10

// FS is a Store in a local directory: the object at key "a/b" is the file
// root/a/b. Files are created with mode 0600 and directories with 0700:
// exports hold tenants' data. Empty directories left by Delete are removed.
//
// A key cannot name both an object and a directory of objects: with "a/b"
// stored, "a" is not an object, and Put to "a" fails (as does Put to "a/b/c"
// with "a/b" stored).
type FS struct {
	root string
}

var (
	_ Store       = (*FS)(nil)
	_ Conditional = (*FS)(nil)
)

// NewFS returns an FS rooted at dir, creating dir if needed.
func NewFS(dir string) (*FS, error) {
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return &FS{root: root}, nil
}

// Root returns the directory the store keeps its objects in.
func (s *FS) Root() string { return s.root }

// path validates key and returns its file path.
func (s *FS) path(key string) (string, error) {
	if err := ValidateKey(key); err != nil {
		return "", err
	}
	for seg := range strings.SplitSeq(key, "/") {
		if strings.HasPrefix(seg, tmpPrefix) {
			return "", fmt.Errorf("invalid key %q: segment %q has the reserved prefix %q", key, seg, tmpPrefix)
		}
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

// Put writes r to a temporary file beside the object, syncs it, renames it
// over the object and syncs the directory.
func (s *FS) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	path, err := s.path(key)
	if err != nil {
		return 0, fmt.Errorf("put object: %w", err)
	}
	n, _, err := s.write(ctx, path, r, false)
	if err != nil {
		return n, fmt.Errorf("put object %q: %w", key, err)
	}
	return n, nil
}

// write writes r to a temporary file beside path, syncs it, moves it to
// path and syncs the directory. It renames the file over path, or, if
// noReplace, links it to path, which fails with an error wrapping
// fs.ErrExist if something is there. If the object is in place, placed is
// true and n is the number of bytes written, even if an error follows.
func (s *FS) write(ctx context.Context, path string, r io.Reader, noReplace bool) (n int64, placed bool, err error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	dir := filepath.Dir(path)
	f, err := s.createTemp(dir, filepath.Base(path))
	if err != nil {
		return 0, false, err
	}
	tmp := f.Name()
	defer func() {
		if err != nil && !placed {
			err = errors.Join(err, removeTemp(f, tmp))
		}
	}()
	// Large writes: bundles stream through here, and io.Copy's 32 KiB
	// would cost a system call each.
	n, err = io.CopyBuffer(onlyWriter{f}, ctxReader{ctx: ctx, r: r}, make([]byte, 256<<10))
	if err != nil {
		return 0, false, fmt.Errorf("write: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, false, fmt.Errorf("sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, false, fmt.Errorf("close: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	if noReplace {
		if err := os.Link(tmp, path); err != nil {
			return 0, false, err
		}
		if err := os.Remove(tmp); err != nil {
			// The object is in place; RemoveTemp removes the second name.
			return n, true, fmt.Errorf("remove temporary file: %w", err)
		}
	} else {
		if err := os.Rename(tmp, path); err != nil {
			return 0, false, err
		}
	}
	if err := syncDir(dir); err != nil {
		// The object is in place; only its durability across a crash is in doubt.
		return n, true, err
	}
	return n, true, nil
}

// createTemp creates a temporary file in dir, creating dir first. A
// concurrent Delete removes directories it empties, possibly between the
// two steps, so a missing directory is retried.
func (s *FS) createTemp(dir, base string) (*os.File, error) {
	for attempt := 1; ; attempt++ {
		err := os.MkdirAll(dir, 0o700)
		if err == nil {
			var f *os.File
			if f, err = os.CreateTemp(dir, tmpPrefix+base+"-*"); err == nil {
				return f, nil
			}
		}
		if !errors.Is(err, fs.ErrNotExist) || attempt == createTempAttempts {
			return nil, fmt.Errorf("create temporary file: %w", err)
		}
	}
}

// removeTemp closes and removes a temporary file after a failed Put.
func removeTemp(f *os.File, name string) error {
	if err := f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("close temporary file: %w", err)
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove temporary file: %w", err)
	}
	return nil
}

// Get opens the object's file.
func (s *FS) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	f, _, err := s.open(ctx, "get", key)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Open opens the object's file and describes it, for callers that need
// the file itself, such as DownloadHandler serving byte ranges. The error
// wraps ErrNotExist if there is no object at key.
func (s *FS) Open(ctx context.Context, key string) (*os.File, ObjectInfo, error) {
	return s.open(ctx, "open", key)
}

func (s *FS) open(ctx context.Context, op, key string) (*os.File, ObjectInfo, error) {
	path, err := s.path(key)
	if err != nil {
		return nil, ObjectInfo{}, fmt.Errorf("%s object: %w", op, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, ObjectInfo{}, fmt.Errorf("%s object %q: %w", op, key, err)
	}
	f, err := os.Open(path)
	if err != nil {
		if isNotExist(err) {
			return nil, ObjectInfo{}, fmt.Errorf("%s object %q: %w", op, key, ErrNotExist)
		}
		return nil, ObjectInfo{}, fmt.Errorf("%s object %q: %w", op, key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, ObjectInfo{}, errors.Join(fmt.Errorf("%s object %q: %w", op, key, err), f.Close())
	}
	if !fi.Mode().IsRegular() {
		// A directory holding other objects' files is not an object.
		return nil, ObjectInfo{}, errors.Join(fmt.Errorf("%s object %q: %w", op, key, ErrNotExist), f.Close())
	}
	return f, ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Stat describes the object's file.
func (s *FS) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	path, err := s.path(key)
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("stat object: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, fmt.Errorf("stat object %q: %w", key, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		if isNotExist(err) {
			return ObjectInfo{}, fmt.Errorf("stat object %q: %w", key, ErrNotExist)
		}
		return ObjectInfo{}, fmt.Errorf("stat object %q: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		return ObjectInfo{}, fmt.Errorf("stat object %q: %w", key, ErrNotExist)
	}
	return ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete removes the object's file, then the directories above it that are
// left empty.
func (s *FS) Delete(ctx context.Context, key string) error {
	path, err := s.path(key)
	if err != nil {
		return fmt.Errorf("delete object: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete object %q: %w", key, err)
	}
	fi, err := os.Lstat(path)
	switch {
	case isNotExist(err):
		return nil
	case err != nil:
		return fmt.Errorf("delete object %q: %w", key, err)
	case fi.IsDir():
		return nil // not an object
	}
	if err := os.Remove(path); err != nil && !isNotExist(err) {
		return fmt.Errorf("delete object %q: %w", key, err)
	}
	for dir := filepath.Dir(path); dir != s.root; dir = filepath.Dir(dir) {
		if err := os.Remove(dir); err != nil {
			break // not empty, or gone: either way done
		}
	}
	return nil
}

// List walks the directory that holds prefix's whole segments, then sorts:
// directory order differs from key order ("a/b" sorts after "a.txt").
func (s *FS) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	if err := validatePrefix(prefix); err != nil {
		return fmt.Errorf("list objects: %w", err)
	}
	dir, _ := splitPrefix(prefix)
	start := filepath.Join(s.root, filepath.FromSlash(dir))
	var objects []ObjectInfo
	err := filepath.WalkDir(start, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if isNotExist(err) {
				return nil // nothing under the prefix, or deleted meanwhile
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tmpPrefix) && path != s.root {
			if d.IsDir() {
				return fs.SkipDir // such as the lock files' directory
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(s.root, path)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if isNotExist(err) {
				return nil // deleted meanwhile
			}
			return err
		}
		objects = append(objects, ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return fmt.Errorf("list objects %q: %w", prefix, err)
	}
	slices.SortFunc(objects, func(a, b ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
	for _, o := range objects {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list objects %q: %w", prefix, err)
		}
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

// PutIfAbsent writes data under key's lock: it writes and syncs a temporary
// file beside the object, links it to the object's name, which fails if
// any file is there (so that a concurrent Put is not overwritten either),
// removes the temporary name and syncs the directory. The ETag is the
// quoted hex SHA-256 of the content. If the object is in place but the
// directory's sync fails, PutIfAbsent returns the ETag with the error.
func (s *FS) PutIfAbsent(ctx context.Context, key string, data []byte) (string, error) {
	path, err := s.path(key)
	if err != nil {
		return "", fmt.Errorf("put object if absent: %w", err)
	}
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return "", fmt.Errorf("put object %q if absent: %w", key, err)
	}
	defer unlock()
	exists := func() error {
		fi, err := os.Lstat(path)
		if err == nil && fi.IsDir() {
			return fmt.Errorf("put object %q if absent: a directory of objects is there", key)
		}
		return fmt.Errorf("put object %q if absent: %w", key, ErrPrecondition)
	}
	switch _, err := os.Lstat(path); {
	case err == nil:
		return "", exists() // without writing a temporary file first
	case !isNotExist(err):
		return "", fmt.Errorf("put object %q if absent: %w", key, err)
	}
	_, placed, err := s.write(ctx, path, bytes.NewReader(data), true)
	switch {
	case errors.Is(err, fs.ErrExist) && !placed:
		// Put, which takes no lock, wrote it meanwhile.
		return "", exists()
	case err != nil && !placed:
		return "", fmt.Errorf("put object %q if absent: %w", key, err)
	case err != nil:
		return fsETag(data), fmt.Errorf("put object %q if absent: %w", key, err)
	}
	return fsETag(data), nil
}

// PutIfMatch replaces the object under key's lock: it reads and hashes the
// current content and, if its ETag is etag (quoted or not), replaces it as
// Put does. If the object is in place but the directory's sync fails,
// PutIfMatch returns the new ETag with the error.
func (s *FS) PutIfMatch(ctx context.Context, key string, data []byte, etag string) (string, error) {
	path, err := s.path(key)
	if err != nil {
		return "", fmt.Errorf("put object if match: %w", err)
	}
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return "", fmt.Errorf("put object %q if match: %w", key, err)
	}
	defer unlock()
	cur, _, err := s.GetETag(ctx, key)
	if err != nil {
		return "", fmt.Errorf("put object if match: %w", err)
	}
	if !sameETag(fsETag(cur), etag) {
		return "", fmt.Errorf("put object %q if match: %w", key, ErrPrecondition)
	}
	_, placed, err := s.write(ctx, path, bytes.NewReader(data), false)
	switch {
	case err != nil && !placed:
		return "", fmt.Errorf("put object %q if match: %w", key, err)
	case err != nil:
		return fsETag(data), fmt.Errorf("put object %q if match: %w", key, err)
	}
	return fsETag(data), nil
}

// GetETag reads the object's file and hashes it. It takes no lock: the
// file is replaced by renames, so it reads one whole version.
func (s *FS) GetETag(ctx context.Context, key string) (_ []byte, _ string, err error) {
	f, _, err := s.open(ctx, "get object", key)
	if err != nil {
		return nil, "", err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	data, err := io.ReadAll(ctxReader{ctx: ctx, r: f})
	if err != nil {
		return nil, "", fmt.Errorf("get object %q: %w", key, err)
	}
	return data, fsETag(data), nil
}

// fsETag is FS's ETag of content: its hex SHA-256, quoted like S3's.
func fsETag(data []byte) string {
	sum := sha256.Sum256(data)
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

// sameETag compares ETags with or without their quotes.
func sameETag(a, b string) bool {
	return strings.Trim(a, `"`) == strings.Trim(b, `"`)
}

// lock takes an exclusive flock on key's lock file (see lockDir), waiting
// while another writer, in this process or another, holds it, until ctx
// ends. Each call opens the file anew: flocks belong to open file
// descriptions, so two calls of one process exclude each other too.
// Calling the returned function releases the lock.
func (s *FS) lock(ctx context.Context, key string) (unlock func(), err error) {
	dir := filepath.Join(s.root, lockDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	sum := sha256.Sum256([]byte(key))
	f, err := os.OpenFile(filepath.Join(dir, hex.EncodeToString(sum[:])), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	// Closing the file releases the lock; the close of a file never
	// written cannot lose data, so its error does not matter.
	unlock = func() { _ = f.Close() }
	rc, err := f.SyscallConn()
	if err != nil {
		unlock()
		return nil, fmt.Errorf("lock: %w", err)
	}
	wait := lockMinWait
	for {
		var ferr error
		if err := rc.Control(func(fd uintptr) { ferr = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB) }); err != nil {
			unlock()
			return nil, fmt.Errorf("lock: %w", err)
		}
		switch {
		case ferr == nil:
			return unlock, nil
		case !errors.Is(ferr, unix.EWOULDBLOCK) && !errors.Is(ferr, unix.EINTR):
			unlock()
			return nil, fmt.Errorf("lock: %w", ferr)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			unlock()
			return nil, fmt.Errorf("lock: %w", ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, lockMaxWait)
	}
}

// isNotExist reports a missing file, including a missing file under a path
// component that is a file rather than a directory.
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func syncDir(dir string) (err error) {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer func() { err = errors.Join(err, d.Close()) }()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// RemoveTemp removes the temporary files that Puts interrupted by a crash
// left behind, and returns how many it removed. Call it when no Put runs,
// such as at startup.
func (s *FS) RemoveTemp() (int, error) {
	n := 0
	err := filepath.WalkDir(s.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() && path == filepath.Join(s.root, lockDir) {
			return fs.SkipDir // lock files are never removed
		}
		if !d.IsDir() && strings.HasPrefix(d.Name(), tmpPrefix) {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("remove temporary files: %w", err)
	}
	return n, nil
}

// onlyWriter hides the file's ReadFrom, so that io.CopyBuffer uses the
// given buffer.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }
