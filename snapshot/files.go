package snapshot

import (
	"bytes"
	"container/list"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/bloom"
)

// fileCache keeps parsed Parquet footers of recently used files. Open files
// are bounded: at most max unreferenced files stay open (LRU); referenced
// ones stay open until released.
type fileCache struct {
	objs objects
	max  int

	mu    sync.Mutex
	files map[string]*cachedFile
	lru   *list.List // of *cachedFile with refs == 0
}

type cachedFile struct {
	name  string
	r     objReader
	f     *parquet.File
	refs  int
	elem  *list.Element
	gone  bool // evicted while referenced: close on last release
	ready chan struct{}
	err   error

	baseOnce sync.Once
	base     *baseLayout
	baseErr  error

	bloomMu sync.Mutex
	blooms  map[[2]int]bloom.SplitBlockFilter // (row group, column) -> filter bits
}

func newFileCache(objs objects, max int) *fileCache {
	return &fileCache{objs: objs, max: max, files: make(map[string]*cachedFile), lru: list.New()}
}

// acquire returns the open file; release it when done.
func (c *fileCache) acquire(name string) (*cachedFile, error) {
	c.mu.Lock()
	cf, ok := c.files[name]
	if ok {
		cf.refs++
		if cf.elem != nil {
			c.lru.Remove(cf.elem)
			cf.elem = nil
		}
		c.mu.Unlock()
		<-cf.ready
		if cf.err != nil {
			c.release(cf)
			return nil, cf.err
		}
		return cf, nil
	}
	cf = &cachedFile{name: name, refs: 1, ready: make(chan struct{})}
	c.files[name] = cf
	c.mu.Unlock()

	cf.r, cf.f, cf.err = c.open(name)
	close(cf.ready)
	if cf.err != nil {
		c.mu.Lock()
		if c.files[name] == cf {
			delete(c.files, name)
		}
		cf.gone = true
		c.mu.Unlock()
		c.release(cf)
		return nil, cf.err
	}
	return cf, nil
}

func (c *fileCache) open(name string) (objReader, *parquet.File, error) {
	r, err := c.objs.Open(name)
	if err != nil {
		return nil, nil, err
	}
	// Page indexes are loaded per column chunk when a reader seeks in it
	// (loadOffsetIndexes), not for every column of every file at open.
	f, err := parquet.OpenFile(r, r.Size(),
		parquet.ReadBufferSize(16<<10),
		parquet.SkipPageIndex(true),
	)
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("open parquet file %s: %w", name, err), r.Close())
	}
	return r, f, nil
}

func (c *fileCache) release(cf *cachedFile) {
	c.mu.Lock()
	cf.refs--
	if cf.refs > 0 {
		c.mu.Unlock()
		return
	}
	var toClose []*cachedFile
	if cf.gone {
		toClose = append(toClose, cf)
	} else {
		cf.elem = c.lru.PushBack(cf)
		for c.lru.Len() > c.max {
			old := c.lru.Remove(c.lru.Front()).(*cachedFile)
			old.elem = nil
			delete(c.files, old.name)
			toClose = append(toClose, old)
		}
	}
	c.mu.Unlock()
	for _, f := range toClose {
		f.close()
	}
}

// evict forgets a file (it is about to be deleted); it is closed once unreferenced.
func (c *fileCache) evict(name string) {
	c.mu.Lock()
	cf, ok := c.files[name]
	if !ok {
		c.mu.Unlock()
		return
	}
	delete(c.files, name)
	cf.gone = true
	if cf.refs > 0 {
		c.mu.Unlock()
		return
	}
	if cf.elem != nil {
		c.lru.Remove(cf.elem)
		cf.elem = nil
	}
	c.mu.Unlock()
	cf.close()
}

// closeAll closes every unreferenced file; referenced ones close on release.
func (c *fileCache) closeAll() {
	c.mu.Lock()
	var toClose []*cachedFile
	for name, cf := range c.files {
		delete(c.files, name)
		cf.gone = true
		if cf.refs == 0 {
			if cf.elem != nil {
				c.lru.Remove(cf.elem)
				cf.elem = nil
			}
			toClose = append(toClose, cf)
		}
	}
	c.mu.Unlock()
	for _, cf := range toClose {
		cf.close()
	}
}

func (c *fileCache) openCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.files)
}

func (cf *cachedFile) close() {
	if cf.r != nil {
		_ = cf.r.Close() // read-only file: nothing to lose
		cf.r = nil
	}
}

// baseLayout returns the parsed column layout of a base file.
func (cf *cachedFile) baseLayout() (*baseLayout, error) {
	cf.baseOnce.Do(func() { cf.base, cf.baseErr = readBaseLayout(cf.f) })
	return cf.base, cf.baseErr
}

// bloom returns the column chunk's bloom filter, read into memory once (nil
// if it has none).
func (cf *cachedFile) bloom(rg, col int, cc parquet.ColumnChunk) bloom.SplitBlockFilter {
	k := [2]int{rg, col}
	cf.bloomMu.Lock()
	defer cf.bloomMu.Unlock()
	if bf, ok := cf.blooms[k]; ok {
		return bf
	}
	var bits bloom.SplitBlockFilter
	if fc, ok := cc.(*parquet.FileColumnChunk); ok {
		if pbf := fc.BloomFilter(); pbf != nil && pbf.Size() > 0 && pbf.Size()%32 == 0 {
			buf := make([]byte, pbf.Size())
			if _, err := pbf.ReadAt(buf, 0); err == nil || errors.Is(err, io.EOF) {
				bits = bloom.MakeSplitBlockFilter(buf)
			}
		}
	}
	if cf.blooms == nil {
		cf.blooms = make(map[[2]int]bloom.SplitBlockFilter)
	}
	cf.blooms[k] = bits
	return bits
}

// loadOffsetIndexes loads the offset indexes of the row group's column
// chunks so that seeking to a row jumps to its page.
func loadOffsetIndexes(rg parquet.RowGroup, cols ...int) {
	ccs := rg.ColumnChunks()
	if len(cols) == 0 {
		for _, cc := range ccs {
			_, _ = cc.OffsetIndex() // without one, seeking reads from the chunk start
		}
		return
	}
	for _, c := range cols {
		_, _ = ccs[c].OffsetIndex() // without one, seeking reads from the chunk start
	}
}

// pointLookup finds the row whose sorted byte-array column col equals key.
// It returns the row group and the row's index in it.
func (cf *cachedFile) pointLookup(col int, key []byte) (parquet.RowGroup, int64, bool, error) {
	f := cf.f
	var buf [128]parquet.Value
	for rgi, rg := range f.RowGroups() {
		cc := rg.ColumnChunks()[col]
		minV, maxV, ok := chunkBounds(cc)
		if ok && bytes.Compare(key, maxV) > 0 {
			continue
		}
		if ok && bytes.Compare(key, minV) < 0 {
			return nil, 0, false, nil // sorted: no later row group holds it
		}
		if bf := cf.bloom(rgi, col, cc); bf != nil && !bf.Check(bloom.XXH64{}.Sum64(key)) {
			continue
		}
		start, err := seekSorted(rg, col, key)
		if err != nil {
			return nil, 0, false, err
		}
		if start < 0 {
			continue
		}
		row, found, err := scanPagesFor(cc, start, key, buf[:])
		if err != nil || found {
			return rg, row, found, err
		}
		return nil, 0, false, nil
	}
	return nil, 0, false, nil
}

// scanPagesFor reads the sorted column from row start until it finds key
// (or passes it).
func scanPagesFor(cc parquet.ColumnChunk, start int64, key []byte, buf []parquet.Value) (int64, bool, error) {
	pages := cc.Pages()
	defer pages.Close()
	if err := pages.SeekToRow(start); err != nil {
		return 0, false, fmt.Errorf("seek page: %w", err)
	}
	row := start
	for {
		p, err := pages.ReadPage()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, false, nil
			}
			return 0, false, fmt.Errorf("read page: %w", err)
		}
		vr := p.Values()
		for {
			n, err := vr.ReadValues(buf)
			for _, v := range buf[:n] {
				switch c := bytes.Compare(v.ByteArray(), key); {
				case c == 0:
					parquet.Release(p)
					return row, true, nil
				case c > 0:
					parquet.Release(p)
					return 0, false, nil
				}
				row++
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				parquet.Release(p)
				return 0, false, fmt.Errorf("read values: %w", err)
			}
		}
		parquet.Release(p)
	}
}

// readCell returns the value of column col at row of the row group.
func readCell(rg parquet.RowGroup, col int, row int64) (parquet.Value, error) {
	loadOffsetIndexes(rg, col)
	pages := rg.ColumnChunks()[col].Pages()
	defer pages.Close()
	if err := pages.SeekToRow(row); err != nil {
		return parquet.Value{}, fmt.Errorf("seek page: %w", err)
	}
	p, err := pages.ReadPage()
	if err != nil {
		return parquet.Value{}, fmt.Errorf("read page: %w", err)
	}
	var buf [1]parquet.Value
	n, err := p.Values().ReadValues(buf[:])
	if n == 1 {
		v := buf[0].Clone()
		parquet.Release(p)
		return v, nil
	}
	parquet.Release(p)
	if err == nil || errors.Is(err, io.EOF) {
		err = errors.New("empty page")
	}
	return parquet.Value{}, fmt.Errorf("read value: %w", err)
}
