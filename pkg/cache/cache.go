// Package cache is the node cache engine: a block cache over dataset
// sources, shared by every dataset of a node.
//
// Every source file read through the cache has an Item: a sparse data file
// in one tier directory plus a small JSON index (<hash>.meta) with the
// file's fingerprint, which blocks are present, and a CRC-32C per block.
// Blocks are fetched whole, BlockSize bytes at a time, by the fetcher, which
// owns the fetch slots; concurrent readers of one missing block wait for a
// single fetch (single-flight). A block read from disk for the first time
// since the process started is verified against its checksum; a corrupt
// block is dropped and fetched again, never served. The index is rebuilt
// from the .meta files at start, so a restart keeps the cache warm. The
// cleaner evicts least recently used items when a tier passes its quota or
// its file system runs short of space. A Dataset is the engine as one
// mounted dataset sees it (what the FUSE layer and the daemon use).
//
// Lock order: Cache.mu, then Item.mu; openFiles.mu is a leaf taken with
// neither held. No I/O is done while Cache.mu is held; Item.mu is held
// only around index updates, never around a fetch or a pread. Eviction
// picks victims under Cache.mu and deletes their files after releasing it.
package cache

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// TierOptions configure one cache tier: a directory with a byte quota.
type TierOptions struct {
	Name  string // "mem" or "disk"
	Dir   string
	Quota int64
}

// Options configure a Cache.
type Options struct {
	// Tiers, hottest first. A file goes to the first tier whose quota is
	// at least four times its size, else to the last tier.
	Tiers []TierOptions
	// BlockSize is the fetch unit (default 4 MiB).
	BlockSize int64
	// LowWater: eviction frees a tier down to LowWater x quota (0.8).
	LowWater float64
	// FreeSpaceRatio: eviction also keeps this fraction of each tier's
	// file system free (0.1).
	FreeSpaceRatio float64
	// MaxFetches bounds concurrent source reads (64), and MaxFetchBytes
	// the bytes they read at once (16 blocks): many small files, or a
	// few large blocks, in flight.
	MaxFetches    int
	MaxFetchBytes int64
	// ReadAhead is how many blocks a sequential reader prefetches (8).
	ReadAhead int
	// MaxOpenFiles bounds the cache files held open at once (the least
	// recently used is closed and reopened on demand): a dataset of a
	// million files must not exhaust the daemon's descriptors. Default:
	// a quarter of RLIMIT_NOFILE, at most 4096.
	MaxOpenFiles int
	// CleanInterval is how often the cleaner looks at the tiers besides
	// its kicks (5s). Negative: the cleaner never runs on its own (tests
	// run it with Clean).
	CleanInterval time.Duration
	// SleepAfter is how long a cached file stays in memory unused before
	// the cleaner puts it to sleep (see dormant.go; default 1m, negative:
	// never).
	SleepAfter time.Duration
	// Logger is the engine's logger (default: klog's).
	Logger klog.Logger

	// loadGate, in tests, holds the background index load after the
	// listing until it is closed.
	loadGate chan struct{}
}

func (o *Options) setDefaults() error {
	if len(o.Tiers) == 0 {
		return errors.New("cache: at least one tier is required")
	}
	for _, t := range o.Tiers {
		if t.Dir == "" || t.Quota <= 0 {
			return fmt.Errorf("cache: tier %q needs a directory and a positive quota", t.Name)
		}
	}
	if o.BlockSize == 0 {
		o.BlockSize = 4 << 20
	}
	if o.BlockSize < 4096 || o.BlockSize&(o.BlockSize-1) != 0 {
		return fmt.Errorf("cache: block size %d must be a power of two >= 4096", o.BlockSize)
	}
	if o.LowWater == 0 {
		o.LowWater = 0.8
	}
	if o.FreeSpaceRatio == 0 {
		o.FreeSpaceRatio = 0.1
	}
	if o.MaxFetches == 0 {
		o.MaxFetches = 64
	}
	if o.MaxFetchBytes == 0 {
		o.MaxFetchBytes = 16 * o.BlockSize
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = 8
	}
	if o.MaxOpenFiles <= 0 {
		o.MaxOpenFiles = 4096
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur/4 < uint64(o.MaxOpenFiles) {
			o.MaxOpenFiles = max(16, int(rl.Cur/4))
		}
	}
	if o.CleanInterval == 0 {
		o.CleanInterval = 5 * time.Second
	}
	if o.SleepAfter == 0 {
		o.SleepAfter = time.Minute
	}
	if o.Logger.GetSink() == nil {
		o.Logger = klog.Background()
	}
	return nil
}

// Cache is a block cache over sources, shared by every dataset of a node.
type Cache struct {
	// immutable after New
	opts  Options
	log   klog.Logger
	tiers []*tier
	env   *itemEnv // what every item shares: fetcher, open files, counters
	clean *cleaner
	fill  filler // files read from a POSIX source in passthrough, to be cached

	dirtyMu sync.Mutex
	dirty   map[*Item]struct{} // guarded by dirtyMu (a leaf lock); items whose index is behind

	// Loading the index in the background (load.go).
	listed, loaded chan struct{} // closed once the index files are listed, and loaded
	stopLoad       chan struct{} // closed by Close
	loadWG         sync.WaitGroup
	loadedAll      atomic.Bool

	mu         sync.Mutex
	pending    map[string][]pendingIndex // guarded by mu; index files not loaded yet, by item hash
	listedDone bool                      // guarded by mu; pending is filled (listed is closed)
	inLoad     map[string]chan struct{}  // guarded by mu; hashes being loaded, closed when done
	dormant    dormants                  // guarded by mu; cached files whose items sleep, by item hash
	asleep     atomic.Int64              // dormant records, and those being woken
	items      map[string]*Item          // guarded by mu; by itemKey
	perDS      map[string]*counters      // guarded by mu; per-dataset counters
	// INVARIANT: an item in items is never removed (Item.removed is set
	// only after the item left the map).
}

// New opens a cache and rebuilds its index from the tier directories.
func New(opts Options) (*Cache, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	c := &Cache{
		opts:  opts,
		log:   opts.Logger,
		items: map[string]*Item{},
		perDS: map[string]*counters{},
		dirty: map[*Item]struct{}{},

		inLoad:  map[string]chan struct{}{},
		dormant: newDormants(),
	}
	c.clean = newCleaner(opts.CleanInterval, c.cleanTiers)
	c.env = &itemEnv{
		blockSize: opts.BlockSize,
		lowWater:  opts.LowWater,
		readAhead: opts.ReadAhead,
		fetch:     newFetcher(opts.MaxFetches, opts.MaxFetchBytes),
		borrowed:  newBorrowed(opts.MaxFetchBytes),
		files:     newOpenFiles(opts.MaxOpenFiles),
		kick:      c.clean.kick,
		markDirty: c.markDirty,
		total:     &counters{},
		log:       opts.Logger,
	}
	for _, t := range opts.Tiers {
		if err := os.MkdirAll(t.Dir, 0o700); err != nil {
			c.env.fetch.close()
			return nil, fmt.Errorf("cache tier %s: %w", t.Name, err)
		}
		c.tiers = append(c.tiers, &tier{TierOptions: t, index: len(c.tiers)})
	}
	c.startLoad()
	c.clean.start()
	return c, nil
}

// Close stops background work (the cleaner, read-ahead and every fetch in
// flight, which it waits for), saves the indexes that are behind and closes
// the open data files.
func (c *Cache) Close() error {
	close(c.stopLoad)
	c.loadWG.Wait()
	c.clean.close()
	c.env.fetch.close()
	c.saveDirty()
	c.mu.Lock()
	items := make([]*Item, 0, len(c.items))
	for _, it := range c.items {
		items = append(items, it)
	}
	c.mu.Unlock()
	var errs []error
	for _, it := range items {
		errs = append(errs, it.closeFile())
	}
	return errors.Join(errs...)
}

// markDirty remembers that it's index is behind its blocks.
func (c *Cache) markDirty(it *Item) {
	c.dirtyMu.Lock()
	c.dirty[it] = struct{}{}
	c.dirtyMu.Unlock()
}

// saveDirty writes the indexes that are behind.
func (c *Cache) saveDirty() {
	c.dirtyMu.Lock()
	items := c.dirty
	c.dirty = map[*Item]struct{}{}
	c.dirtyMu.Unlock()
	for it := range items {
		if err := it.save(); err != nil {
			c.log.Error(err, "Saving a cache index failed", "dataset", it.dataset, "path", it.name)
		}
	}
}

// BlockSize returns the fetch unit.
func (c *Cache) BlockSize() int64 { return c.opts.BlockSize }

// item returns the item of dataset/name for the given source attributes,
// creating it, or resetting it when the source's fingerprint changed.
func (c *Cache) item(dataset, name string, a source.Attr) (*Item, error) {
	id := itemID(name, a)
	key := itemKey(dataset, id)
	c.mu.Lock()
	it := c.findLocked(dataset, id, key)
	if it == nil {
		it = newItem(c.env, c.placement(a.Size), dataset, id, name, c.countersLocked(dataset))
		it.resetLocked(a) // not yet shared, and nothing to retire
		c.items[key] = it
		it.ctr.files.Add(1)
	}
	it.atime.Store(time.Now().UnixNano())
	c.mu.Unlock()

	it.mu.Lock()
	stale := it.fingerprint != a.Fingerprint()
	var old retired
	if stale {
		old = it.resetLocked(a)
	}
	it.mu.Unlock()
	if stale {
		it.dropRetired(old)
		c.log.V(4).Info("Cached file changed at the source; dropping its blocks", "dataset", dataset, "path", name)
	}
	return it, nil
}

// findLocked returns the item of dataset's file id (map key key), loading
// its index first if it is only on disk (not loaded yet since the start,
// or asleep) rather than let the caller start a second item of the same
// file; nil if there is none. c.mu is held, and released while loading.
func (c *Cache) findLocked(dataset, id, key string) *Item {
	it := c.items[key]
	for it == nil {
		h, onDisk := c.onDiskLocked(dataset, id)
		if !onDisk {
			break
		}
		c.mu.Unlock()
		c.loadFromDisk(h)
		c.mu.Lock()
		it = c.items[key]
	}
	return it
}

func (c *Cache) placement(size int64) *tier {
	for _, t := range c.tiers {
		if size*4 <= t.Quota {
			return t
		}
	}
	return c.tiers[len(c.tiers)-1]
}

// evictName drops the cached item of dataset/name, if any: what a write,
// a create, an unlink or a rename of a file costs, whatever the number of
// cached files. (An item known by its inode is not found by a path: its
// fingerprint, checked on every read, drops its blocks when the file
// changes, and the cleaner removes it when it is no longer read.)
func (c *Cache) evictName(dataset, name string) int {
	key := itemKey(dataset, name)
	c.mu.Lock()
	it := c.findLocked(dataset, name, key)
	if it != nil {
		delete(c.items, key)
		it.ctr.files.Add(-1)
	}
	c.mu.Unlock()
	if it == nil {
		return 0
	}
	it.remove()
	return 1
}

// evictTree drops every cached item of dataset at or under prefix ("" =
// all): a scan of the items, for a directory renamed or an evict asked
// for by an administrator.
func (c *Cache) evictTree(dataset, prefix string, dormantToo bool) int {
	n := 0
	if dormantToo {
		// Every name is in an index: all of them loaded first.
		c.waitLoaded()
		n = c.evictDormantTree(dataset, prefix)
	}
	c.mu.Lock()
	var victims []*Item
	for k, it := range c.items {
		if it.dataset == dataset && (prefix == "" || it.name == prefix || strings.HasPrefix(it.name, prefix+"/")) {
			victims = append(victims, it)
			delete(c.items, k)
			it.ctr.files.Add(-1)
		}
	}
	c.mu.Unlock()
	for _, it := range victims {
		it.remove()
	}
	return n + len(victims)
}
