package cache

import (
	"context"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Dataset is the engine as one mounted dataset sees it: its key (which
// separates the cached files of datasets that share path names) and its
// source. It is what the FUSE layer and the daemon use.
type Dataset struct {
	c   *Cache
	key string
	src source.Source
}

// Dataset returns the engine's view of the dataset key served from src.
func (c *Cache) Dataset(key string, src source.Source) *Dataset {
	return &Dataset{c: c, key: key, src: src}
}

// Source returns the dataset's source.
func (d *Dataset) Source() source.Source { return d.src }

// ReadAt reads p at off of name through the cache. a are the source's
// current attributes of the file (its size bounds the read).
func (d *Dataset) ReadAt(ctx context.Context, name string, a source.Attr, p []byte, off int64) (int, error) {
	if off >= a.Size {
		return 0, io.EOF
	}
	it, err := d.c.item(d.key, name, a)
	if err != nil {
		return 0, err
	}
	end := min(off+int64(len(p)), a.Size)
	n, err := it.readAt(ctx, fileRef{src: d.src, name: name}, p, off, end)
	if err == nil && end < off+int64(len(p)) {
		err = io.EOF
	}
	return n, err
}

// Warm fetches every missing block of name; progress, if not nil, is
// called (one call at a time) with the bytes done so far.
func (d *Dataset) Warm(ctx context.Context, name string, a source.Attr, progress func(done int64)) error {
	it, err := d.c.item(d.key, name, a)
	if err != nil {
		return err
	}
	nb := it.blocks()
	var wg sync.WaitGroup
	var done atomic.Int64
	errc := make(chan error, 1)
	// Its own limit: the fetches themselves take fetch slots, which this
	// loop must not hold while it waits for them.
	lim := make(chan struct{}, d.c.opts.MaxFetches)
	var progressMu sync.Mutex // progress is called by one goroutine at a time
	for b := int64(0); b < nb; b++ {
		if err := acquire(ctx, lim); err != nil {
			wg.Wait()
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if !it.verify(b) {
				_, err = it.fetch(ctx, fileRef{src: d.src, name: name}, b)
			}
			<-lim
			if err != nil {
				select {
				case errc <- err:
				default:
				}
				return
			}
			n := done.Add(it.blockLen(b))
			if progress != nil {
				progressMu.Lock()
				progress(n)
				progressMu.Unlock()
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	return nil
}

// CompleteFile returns a read-only descriptor of name's cache file when
// every block is present and verified (for FUSE passthrough), or nil.
func (d *Dataset) CompleteFile(name string, a source.Attr) *os.File {
	it, err := d.c.item(d.key, name, a)
	if err != nil || a.Size == 0 {
		return nil
	}
	for b := int64(0); b < it.blocks(); b++ {
		if !it.verify(b) {
			return nil
		}
	}
	it.mu.Lock()
	path, _ := it.pathsLocked()
	it.mu.Unlock()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	// The file may have been reset between the checks and the open.
	it.mu.Lock()
	ok := it.fingerprint == a.Fingerprint() && it.presentCount == int64(len(it.present))
	it.mu.Unlock()
	if !ok {
		f.Close()
		return nil
	}
	return f
}

// EvictFile drops the cached copy of the file name whose attributes are a
// (a constant cost): a POSIX file's copy is known by a's device and inode,
// an object's by its name (a zero a).
func (d *Dataset) EvictFile(name string, a source.Attr) int {
	return d.c.evictName(d.key, itemID(name, a))
}

// EvictTree drops the cached files at or under prefix ("" = all) and
// returns how many (a scan of the cache, and a read of the index of every
// dormant file of the dataset: for an administrator).
func (d *Dataset) EvictTree(prefix string) int { return d.c.evictTree(d.key, prefix, true) }

// ForgetTree drops the cached files in memory at or under prefix: what a
// directory renamed through the mount had cached. Dormant ones are left to
// the cleaner: a POSIX file's copy is known by its inode and checked on
// every read, so nothing stale is served.
func (d *Dataset) ForgetTree(prefix string) int { return d.c.evictTree(d.key, prefix, false) }

// Stats returns the dataset's counters and cached bytes.
func (d *Dataset) Stats() DatasetStats { return d.c.datasetStats(d.key) }
