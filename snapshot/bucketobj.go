package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/exportd/exportd/storage"
)

// Uploads one Sync runs at once: syncUploads in all, of which at most
// syncLargeUploads of objects above largeUpload bytes, since each of those
// buffers a few multipart parts (storage.S3Config.PartSize) in memory.
const (
	syncUploads      = 16
	syncLargeUploads = 2
	largeUpload      = 8 << 20
)

// bucketObjects keeps data files in a shared bucket, the truth, with a
// local directory as their cache. A new object is written to the cache and
// uploaded by Sync (before a manifest entry names it, as for local files);
// an object not in the cache is downloaded whole on Open. Remove deletes
// both copies; dropLocal only the cached one.
type bucketObjects struct {
	ctx    context.Context // the store's life: uploads and downloads stop with it
	b      Bucket
	prefix string // key prefix of data files in the bucket
	local  *dirObjects

	mu       sync.Mutex
	unsynced map[string]bool // committed to the cache, not uploaded yet
	fetching map[string]*fetch
}

var _ objects = (*bucketObjects)(nil)

// fetch is one download in flight; others that want the object wait on done.
type fetch struct {
	done chan struct{}
	err  error
}

func newBucketObjects(ctx context.Context, b Bucket, prefix, cacheDir string) (*bucketObjects, error) {
	local, err := newDirObjects(cacheDir)
	if err != nil {
		return nil, err
	}
	return &bucketObjects{ctx: ctx, b: b, prefix: prefix, local: local,
		unsynced: make(map[string]bool), fetching: make(map[string]*fetch)}, nil
}

func (o *bucketObjects) key(name string) string { return o.prefix + name }

func (o *bucketObjects) Create(name string) (objWriter, error) {
	w, err := o.local.Create(name)
	if err != nil {
		return nil, err
	}
	return &bucketWriter{objWriter: w, o: o, name: name}, nil
}

// Open opens the cached copy, downloading the object first if there is none.
func (o *bucketObjects) Open(name string) (objReader, error) {
	r, err := o.local.Open(name)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return r, err
	}
	if err := o.fetch(name); err != nil {
		return nil, err
	}
	return o.local.Open(name)
}

// fetch downloads name into the cache, once however many ask at the same time.
func (o *bucketObjects) fetch(name string) error {
	o.mu.Lock()
	if f, ok := o.fetching[name]; ok {
		o.mu.Unlock()
		<-f.done
		return f.err
	}
	f := &fetch{done: make(chan struct{})}
	o.fetching[name] = f
	o.mu.Unlock()

	f.err = o.download(name)
	o.mu.Lock()
	delete(o.fetching, name)
	o.mu.Unlock()
	close(f.done)
	return f.err
}

func (o *bucketObjects) download(name string) (err error) {
	if _, err := os.Stat(o.local.path(name)); err == nil {
		return nil // another fetch finished just before this one started
	}
	rc, err := o.b.Get(o.ctx, o.key(name))
	if err != nil {
		if errors.Is(err, storage.ErrNotExist) {
			return fmt.Errorf("download object %s: %w (%w)", name, fs.ErrNotExist, err)
		}
		return fmt.Errorf("download object %s: %w", name, err)
	}
	defer func() { err = errors.Join(err, rc.Close()) }()
	w, err := o.local.Create(name)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, rc); err != nil {
		return errors.Join(fmt.Errorf("download object %s: %w", name, err), w.Abort())
	}
	return w.Commit()
}

// Remove deletes the object from the bucket and the cache.
func (o *bucketObjects) Remove(name string) error {
	o.mu.Lock()
	delete(o.unsynced, name)
	o.mu.Unlock()
	if err := o.b.Delete(o.ctx, o.key(name)); err != nil {
		return fmt.Errorf("remove object %s: %w", name, err)
	}
	return o.local.Remove(name)
}

// dropLocal removes the cached copy only.
func (o *bucketObjects) dropLocal(name string) error { return o.local.Remove(name) }

// List lists the cache: it is used to find cached files no version needs.
func (o *bucketObjects) List(prefix string) ([]string, error) { return o.local.List(prefix) }

// Sync uploads the named objects that are not in the bucket yet: small
// ones many at a time, large ones (which buffer multipart parts in
// memory) syncLargeUploads at a time.
func (o *bucketObjects) Sync(names []string) error {
	var g errgroup.Group
	g.SetLimit(syncUploads)
	large := make(chan struct{}, syncLargeUploads)
	for _, n := range names {
		o.mu.Lock()
		need := o.unsynced[n]
		o.mu.Unlock()
		if !need {
			continue
		}
		g.Go(func() error {
			if st, err := os.Stat(o.local.path(n)); err == nil && st.Size() > largeUpload {
				large <- struct{}{}
				defer func() { <-large }()
			}
			if err := o.upload(n); err != nil {
				return err
			}
			o.mu.Lock()
			delete(o.unsynced, n)
			o.mu.Unlock()
			return nil
		})
	}
	return g.Wait()
}

func (o *bucketObjects) upload(name string) error {
	f, err := os.Open(o.local.path(name))
	if err != nil {
		return fmt.Errorf("upload object %s: %w", name, err)
	}
	defer f.Close() // read-only: nothing to lose
	if _, err := o.b.Put(o.ctx, o.key(name), f); err != nil {
		return fmt.Errorf("upload object %s: %w", name, err)
	}
	return nil
}

// bucketWriter writes a new object into the cache; Commit marks it for upload.
type bucketWriter struct {
	objWriter
	o    *bucketObjects
	name string
}

func (w *bucketWriter) Commit() error {
	if err := w.objWriter.Commit(); err != nil {
		return err
	}
	w.o.mu.Lock()
	w.o.unsynced[w.name] = true
	w.o.mu.Unlock()
	return nil
}

func (w *bucketWriter) Abort() error {
	w.o.mu.Lock()
	delete(w.o.unsynced, w.name)
	w.o.mu.Unlock()
	return w.objWriter.Abort()
}
