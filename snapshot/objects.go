package snapshot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// objects is where staged data files live: a flat namespace of immutable
// objects. The local-directory implementation is the only one today; an
// object-store implementation (S3) can be added behind the same interface.
type objects interface {
	// Create starts writing a new object. The object does not exist under its
	// name until the writer's Commit returns; Create must not be called twice
	// with the same name.
	Create(name string) (objWriter, error)
	// Open opens a committed object for random-access reads.
	Open(name string) (objReader, error)
	// Remove deletes an object; removing a missing object is not an error.
	Remove(name string) error
	// List returns the names of all objects (committed or not) whose name has
	// the prefix, in lexical order. Incomplete objects may be listed with a
	// ".tmp" suffix: they are garbage.
	List(prefix string) ([]string, error)
	// Sync makes the named committed objects durable, content and name. It
	// is called before a manifest edit references them.
	Sync(names []string) error
}

// objWriter writes one object.
type objWriter interface {
	io.Writer
	// Commit makes the object visible under its name; it is durable only
	// after objects.Sync.
	Commit() error
	// Abort discards the object. It may be called after a failed Commit.
	Abort() error
}

// objReader reads one committed object.
type objReader interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// dirObjects stores objects as files of one local directory. Objects are
// written as "<name>.tmp" and renamed on Commit; Sync fsyncs the files (in
// parallel) and then the directory.
type dirObjects struct {
	dir string
}

var _ objects = (*dirObjects)(nil)

func newDirObjects(dir string) (*dirObjects, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	return &dirObjects{dir: dir}, nil
}

func (d *dirObjects) path(name string) string { return filepath.Join(d.dir, name) }

func (d *dirObjects) Create(name string) (objWriter, error) {
	tmp := d.path(name) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create object %s: %w", name, err)
	}
	return &dirWriter{f: f, tmp: tmp, final: d.path(name)}, nil
}

func (d *dirObjects) Open(name string) (objReader, error) {
	f, err := os.Open(d.path(name))
	if err != nil {
		return nil, fmt.Errorf("open object %s: %w", name, err)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("stat object %s: %w", name, err), f.Close())
	}
	return &dirReader{File: f, size: st.Size()}, nil
}

func (d *dirObjects) Remove(name string) error {
	if err := os.Remove(d.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove object %s: %w", name, err)
	}
	return nil
}

func (d *dirObjects) List(prefix string) ([]string, error) {
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("list objects: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// SyncCold makes a committed object's content durable and drops it from the
// page cache: an initial snapshot's runs are read again only by the fold,
// and letting gigabytes of them fill the page cache made every write of the
// load slower (kernel CPU per GB written rose about 2.5 times past a few
// GB on the 2-core benchmark machine). The name is made durable by Sync.
func (d *dirObjects) SyncCold(name string) error {
	f, err := os.Open(d.path(name))
	if err != nil {
		return fmt.Errorf("sync object %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return errors.Join(fmt.Errorf("sync object %s: %w", name, err), f.Close())
	}
	// Advice only: an error here loses nothing.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	return f.Close()
}

func (d *dirObjects) Sync(names []string) error {
	var g errgroup.Group
	g.SetLimit(16)
	for _, n := range names {
		g.Go(func() error {
			f, err := os.Open(d.path(n))
			if err != nil {
				return fmt.Errorf("sync object %s: %w", n, err)
			}
			if err := f.Sync(); err != nil {
				return errors.Join(fmt.Errorf("sync object %s: %w", n, err), f.Close())
			}
			return f.Close()
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	f, err := os.Open(d.dir)
	if err != nil {
		return fmt.Errorf("sync data directory: %w", err)
	}
	if err := f.Sync(); err != nil {
		return errors.Join(fmt.Errorf("sync data directory: %w", err), f.Close())
	}
	return f.Close()
}

type dirWriter struct {
	f          *os.File
	tmp, final string
	done       bool
}

var _ objWriter = (*dirWriter)(nil)

func (w *dirWriter) Write(p []byte) (int, error) { return w.f.Write(p) }

func (w *dirWriter) Commit() error {
	if w.done {
		return errors.New("commit object: already finished")
	}
	w.done = true
	if err := w.f.Close(); err != nil {
		return errors.Join(fmt.Errorf("close object: %w", err), os.Remove(w.tmp))
	}
	if err := os.Rename(w.tmp, w.final); err != nil {
		return errors.Join(fmt.Errorf("rename object: %w", err), os.Remove(w.tmp))
	}
	return nil
}

func (w *dirWriter) Abort() error {
	if w.done {
		// Commit already ran: the object may exist under its final name.
		if err := os.Remove(w.final); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("abort object: %w", err)
		}
		return nil
	}
	w.done = true
	cerr := w.f.Close()
	if err := os.Remove(w.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return errors.Join(fmt.Errorf("abort object: %w", err), cerr)
	}
	return nil
}

type dirReader struct {
	*os.File
	size int64
}

var _ objReader = (*dirReader)(nil)

func (r *dirReader) Size() int64 { return r.size }
