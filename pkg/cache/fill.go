package cache

import (
	"context"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Filling: a file the kernel read straight from a POSIX source (FUSE
// passthrough to the source's own file, the cold path of a read-only
// POSIX dataset) is copied into the cache once it is closed, in the
// background, so that its next open is served from a tier. The copy reads
// what the reader just read: from a NAS, mostly the node's page cache.
// Files are filled one at a time in the order they were closed, a block at
// a time under the fetch slots, so a reader's own fetches never wait long
// behind a fill.

// maxFillQueue bounds the files waiting to be filled: beyond it a closed
// file is not queued (its next open from the source queues it again).
const maxFillQueue = 1 << 16

type fillJob struct {
	d    *Dataset
	name string
	a    source.Attr
	key  string
}

type filler struct {
	mu      sync.Mutex
	queue   []fillJob       // guarded by mu
	queued  map[string]bool // guarded by mu; item keys queued or being filled
	running bool            // guarded by mu; a worker drains queue
}

// Fill copies name, whose attributes when it was opened were a, into the
// cache in the background (see filling above). A file already queued is
// not queued twice.
func (d *Dataset) Fill(name string, a source.Attr) {
	c := d.c
	if c.env.fetch.closed() != nil || a.Size == 0 {
		return
	}
	key := itemKey(d.key, itemID(name, a))
	f := &c.fill
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.queued[key] || len(f.queue) >= maxFillQueue {
		return
	}
	if f.queued == nil {
		f.queued = map[string]bool{}
	}
	f.queued[key] = true
	f.queue = append(f.queue, fillJob{d: d, name: name, a: a, key: key})
	if !f.running {
		f.running = true
		c.env.fetch.spawn(c.fillAll)
	}
}

// Filling returns how many files are queued or being filled.
func (c *Cache) Filling() int {
	c.fill.mu.Lock()
	defer c.fill.mu.Unlock()
	return len(c.fill.queued)
}

// fillAll fills queued files until the queue is empty or ctx ends.
func (c *Cache) fillAll(ctx context.Context) {
	f := &c.fill
	for {
		f.mu.Lock()
		if len(f.queue) == 0 || ctx.Err() != nil {
			f.running = false
			clear(f.queued)
			f.queue = nil
			f.mu.Unlock()
			return
		}
		j := f.queue[0]
		f.queue = f.queue[1:]
		f.mu.Unlock()
		j.d.fillOne(ctx, j.name, j.a)
		f.mu.Lock()
		delete(f.queued, j.key)
		f.mu.Unlock()
	}
}

// fillOne fetches the missing blocks of name if the source still has the
// version a (a file changed since is left to its next open).
func (d *Dataset) fillOne(ctx context.Context, name string, a source.Attr) {
	now, err := d.src.Stat(ctx, name)
	if err != nil || now.Fingerprint() != a.Fingerprint() {
		return
	}
	it, err := d.c.item(d.key, name, a)
	if err != nil {
		return
	}
	ref := fileRef{src: d.src, name: name}
	read := d.residentBlocks(ctx, name, it)
	for b := range it.blocks() {
		if ctx.Err() != nil {
			return
		}
		if (read != nil && !read[b]) || it.verify(b) {
			continue
		}
		if _, err := it.fetch(ctx, ref, b); err != nil {
			d.c.log.V(2).Info("Fill failed", "path", name, "block", b, "error", err.Error())
			return
		}
	}
}

// residentBlocks returns which blocks of it the node's page cache holds
// some pages of in the POSIX source's file name: what the kernel read in
// passthrough (and its read-ahead), so that a reader of a few MiB of a
// large file does not make the fill copy all of it. nil: fill every block
// (not a POSIX source, or no cachestat(2), Linux 6.5).
func (d *Dataset) residentBlocks(ctx context.Context, name string, it *Item) []bool {
	w, ok := d.src.(source.Writable)
	if !ok {
		return nil
	}
	f, err := w.OpenFile(ctx, name, unix.O_RDONLY)
	if err != nil {
		return nil
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	bs := d.c.opts.BlockSize
	read := make([]bool, it.blocks())
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for b := range read {
			r := unix.CachestatRange{Off: uint64(int64(b) * bs), Len: uint64(bs)}
			var st unix.Cachestat_t
			if serr = unix.Cachestat(uint(fd), &r, &st, 0); serr != nil {
				return
			}
			read[b] = st.Cache > 0
		}
	}); err != nil || serr != nil {
		return nil
	}
	return read
}
