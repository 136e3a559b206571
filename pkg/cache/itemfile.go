package cache

import (
	"container/list"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// openFiles bounds how many items' data files are open at once: the least
// recently used beyond max are handed back to be closed (and reopened on
// demand), so a dataset of millions of files cannot exhaust the daemon's
// descriptors.
type openFiles struct {
	max int

	mu    sync.Mutex
	order *list.List // guarded by mu; *Item with an open data file, most recent first
	// INVARIANT: order.Len() <= max once touch returns.
}

func newOpenFiles(max int) *openFiles { return &openFiles{max: max, order: list.New()} }

// touch puts it first and returns the items pushed out of the bound, for
// the caller to close outside the lock.
func (o *openFiles) touch(it *Item) []*Item {
	o.mu.Lock()
	defer o.mu.Unlock()
	if it.fdElem != nil {
		o.order.MoveToFront(it.fdElem)
	} else {
		it.fdElem = o.order.PushFront(it)
	}
	var victims []*Item
	for o.order.Len() > o.max {
		e := o.order.Back()
		v := e.Value.(*Item)
		o.order.Remove(e)
		v.fdElem = nil
		victims = append(victims, v)
	}
	return victims
}

// forget drops it from the order (its file is being closed).
func (o *openFiles) forget(it *Item) {
	o.mu.Lock()
	if it.fdElem != nil {
		o.order.Remove(it.fdElem)
		it.fdElem = nil
	}
	o.mu.Unlock()
}

// openFile returns the item's data file, opening it if needed, and closes
// the files the open-file bound pushes out.
func (it *Item) openFile(gen uint64) (*os.File, error) {
	f, err := it.ensureOpen(gen)
	if err != nil {
		return nil, err
	}
	for _, v := range it.env.files.touch(it) {
		_ = v.closeFile()
	}
	// Closed, evicted or put to sleep between the open and the touch:
	// those clear the file first and then leave the order, so one of
	// them, or this, takes it out again.
	it.mu.Lock()
	closed := it.file == nil
	it.mu.Unlock()
	if closed {
		it.env.files.forget(it)
	}
	return f, nil
}

// errRemoved: the item was evicted or put to sleep, or a fetch's version
// was reset; nothing is stored through it.
var errRemoved = errors.New("cache item evicted or asleep")

// ensureOpen opens the data file unless it is open; it takes it.mu. A gen
// other than 0 must be the item's generation: a fetch of a version before
// a reset never writes into the next version's file.
func (it *Item) ensureOpen(gen uint64) (*os.File, error) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.removed || (gen != 0 && gen != it.gen) {
		return nil, errRemoved
	}
	if it.file != nil {
		return it.file, nil
	}
	data, _ := it.pathsLocked()
	if err := os.MkdirAll(filepath.Dir(data), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(data, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if it.opened {
		// A reopen (the open-file bound closed it): whatever happened to
		// the file meanwhile, trust no earlier verification; every block
		// is checked against its checksum again before it is served.
		clear(it.verified)
	}
	it.opened = true
	// A sparse file of the full size: on the tmpfs memory tier
	// (huge=within_size) pages inside i_size may be huge pages, which
	// passthrough reads at page-cache speed.
	if err := f.Truncate(it.size); err != nil {
		f.Close()
		return nil, err
	}
	it.file = f
	return f, nil
}

// pread reads the data file at off. A file closed by the open-file bound
// meanwhile is reopened.
func (it *Item) pread(dst []byte, off int64) (int, error) {
	for range 3 {
		f, err := it.openFile(0)
		if err != nil {
			return 0, err
		}
		n, err := f.ReadAt(dst, off)
		if errors.Is(err, os.ErrClosed) {
			continue
		}
		return n, err
	}
	return 0, fmt.Errorf("cache file of %s closed under three reads in a row: %w", it.name, os.ErrClosed)
}

// pwrite writes the data file at off, as pread reads it. A full file
// system kicks the cleaner.
func (it *Item) pwrite(gen uint64, buf []byte, off int64) error {
	var err error
	for range 3 {
		var f *os.File
		if f, err = it.openFile(gen); err != nil {
			return err
		}
		if _, err = f.WriteAt(buf, off); !errors.Is(err, os.ErrClosed) {
			break
		}
	}
	if errors.Is(err, syscall.ENOSPC) {
		it.env.kick()
	}
	return err
}

func (it *Item) closeFile() error {
	it.mu.Lock()
	f := it.file
	it.file = nil
	it.mu.Unlock()
	it.env.files.forget(it)
	if f != nil {
		return f.Close()
	}
	return nil
}

// remove deletes the item's files; the caller has taken it out of the map.
func (it *Item) remove() {
	it.mu.Lock()
	it.removed = true
	f := it.file
	it.file = nil
	it.addBytesLocked(-it.bytes.Load())
	it.mu.Unlock()
	it.env.files.forget(it)
	if f != nil {
		f.Close()
	}
	it.removeFiles()
}

// removeFiles deletes the item's data and index files (those of its
// current generation: its own).
func (it *Item) removeFiles() {
	it.saveMu.Lock()
	defer it.saveMu.Unlock()
	it.mu.Lock()
	data, meta := it.pathsLocked()
	it.mu.Unlock()
	os.Remove(meta)
	os.Remove(data)
}

// newFileGen returns the number of a new file generation (never 0).
func newFileGen() uint64 { return rand.Uint64() | 1 }

// filePaths returns the data and index file names of generation gen of
// the item hash in dir. The names are computed, not kept: two paths per
// cached file were a tenth of the daemon's memory.
func filePaths(dir, hash string, gen uint64) (data, meta string) {
	base := hash
	if gen != 0 {
		base = fmt.Sprintf("%s-%016x", hash, gen)
	}
	base = filepath.Join(dir, hash[:2], base)
	return base + ".data", base + ".meta"
}

// pathsLocked returns the item's file names (its current generation's).
func (it *Item) pathsLocked() (data, meta string) { return filePaths(it.tier.Dir, it.hash, it.fileGen) }
