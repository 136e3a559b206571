package cache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The block cache.
//
// Every source file read through the cache has an Item: a sparse data file
// in one tier directory plus a small JSON index (<hash>.meta) with the
// file's fingerprint, which blocks are present, and a CRC-32C per block.
// Blocks are fetched whole, blockSize bytes at a time; concurrent readers of
// one missing block wait for a single fetch (single-flight). A block read
// from disk for the first time since the process started is verified against
// its checksum; a corrupt block is dropped and fetched again, never served.
// The index is rebuilt from the .meta files at start, so a restart keeps
// the cache warm.
//
// Lock order: Cache.mu, then Item.mu. No I/O is done while Cache.mu is held;
// Item.mu is held only around index updates, never around a fetch or a
// pread. Eviction picks victims under Cache.mu and deletes their files after
// releasing it.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

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
	// MaxFetches bounds concurrent source reads (16).
	MaxFetches int
	// ReadAhead is how many blocks a sequential reader prefetches (4).
	ReadAhead int
	// MaxOpenFiles bounds the cache files held open at once (the least
	// recently used is closed and reopened on demand): a dataset of a
	// million files must not exhaust the daemon's descriptors. Default:
	// a quarter of RLIMIT_NOFILE, at most 4096.
	MaxOpenFiles int
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
		o.MaxFetches = 16
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = 4
	}
	if o.MaxOpenFiles <= 0 {
		o.MaxOpenFiles = 4096
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur/4 < uint64(o.MaxOpenFiles) {
			o.MaxOpenFiles = max(16, int(rl.Cur/4))
		}
	}
	return nil
}

// Stats are the cache's counters.
type Stats struct {
	Hits        int64 // block reads served from a tier
	Misses      int64 // blocks fetched from the source
	ReadThrough int64 // blocks served without storing (tier full or failing)
	Corrupt     int64 // blocks whose checksum failed
	SourceBytes int64 // bytes read from the source
	Evictions   int64 // items evicted
	TierBytes   map[string]int64
	// TierServed counts bytes served from each tier by the daemon (reads
	// of passthrough files go to the kernel and are not seen).
	TierServed map[string]int64
	// SourceLatency is a histogram of source block fetches.
	SourceLatency Histogram
}

// latencyBuckets are the upper bounds, in seconds, of SourceLatency.
var latencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Histogram is a cumulative-free snapshot: Counts[i] observations fell in
// (Bounds[i-1], Bounds[i]]; the last count is above every bound.
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Sum    float64
}

type histogram struct {
	counts [14]atomic.Uint64
	sumNs  atomic.Int64
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := sort.SearchFloat64s(latencyBuckets, s)
	h.counts[i].Add(1)
	h.sumNs.Add(int64(d))
}

func (h *histogram) snapshot() Histogram {
	out := Histogram{Bounds: latencyBuckets, Counts: make([]uint64, len(h.counts)), Sum: float64(h.sumNs.Load()) / 1e9}
	for i := range h.counts {
		out.Counts[i] = h.counts[i].Load()
	}
	return out
}

type tier struct {
	TierOptions
	used   atomic.Int64 // bytes of present blocks
	served atomic.Int64 // bytes served from this tier
}

// Cache is a block cache over sources, shared by every dataset of a node.
type Cache struct {
	// immutable after New
	opts  Options
	tiers []*tier
	sem   chan struct{}

	fdMu    sync.Mutex
	fdOrder *list.List // guarded by fdMu; items with an open data file, most recent first

	// raSem bounds read-ahead fetches to a quarter of the fetch slots, so
	// readers' own blocks never queue behind speculation.
	raSem chan struct{}
	kick  chan struct{}
	ctx   context.Context // cancelled by Close; owns read-ahead and the cleaner
	stop  context.CancelFunc
	wg    sync.WaitGroup // the cleaner and every fetch goroutine

	hits, misses, readThrough, corrupt, sourceBytes, evictions atomic.Int64
	latency                                                    histogram

	mu     sync.Mutex
	items  map[string]*Item     // guarded by mu; key: dataset + "\x00" + path
	perDS  map[string]*counters // guarded by mu; per-dataset counters
	logged map[string]bool      // guarded by mu; tiers whose write failure was logged
}

// logOnce logs the first write failure of a tier: it then serves by reading
// through, and says so once rather than on every block.
func (c *Cache) logOnce(tierName string, err error) {
	c.mu.Lock()
	first := !c.logged[tierName]
	c.logged[tierName] = true
	c.mu.Unlock()
	if first {
		klog.ErrorS(err, "Cache tier cannot store blocks; reading through", "tier", tierName)
	}
}

// New opens a cache and rebuilds its index from the tier directories.
func New(opts Options) (*Cache, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	c := &Cache{
		opts:    opts,
		sem:     make(chan struct{}, opts.MaxFetches),
		raSem:   make(chan struct{}, max(1, opts.MaxFetches/4)),
		fdOrder: list.New(),
		kick:    make(chan struct{}, 1),
		ctx:     ctx,
		stop:    stop,
		items:   map[string]*Item{},
		perDS:   map[string]*counters{},
		logged:  map[string]bool{},
	}
	for _, t := range opts.Tiers {
		if err := os.MkdirAll(t.Dir, 0o700); err != nil {
			stop()
			return nil, fmt.Errorf("cache tier %s: %w", t.Name, err)
		}
		c.tiers = append(c.tiers, &tier{TierOptions: t})
	}
	for _, t := range c.tiers {
		if err := c.load(t); err != nil {
			stop()
			return nil, err
		}
	}
	c.wg.Add(1)
	go c.cleaner()
	return c, nil
}

// Close stops background work (the cleaner, read-ahead and every fetch in
// flight, which it waits for) and saves every index.
func (c *Cache) Close() error {
	c.stop()
	c.wg.Wait()
	c.mu.Lock()
	items := make([]*Item, 0, len(c.items))
	for _, it := range c.items {
		items = append(items, it)
	}
	c.mu.Unlock()
	var errs []error
	for _, it := range items {
		errs = append(errs, it.save(), it.closeFile())
	}
	return errors.Join(errs...)
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	s := Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), ReadThrough: c.readThrough.Load(),
		Corrupt: c.corrupt.Load(), SourceBytes: c.sourceBytes.Load(), Evictions: c.evictions.Load(),
		TierBytes: map[string]int64{}, TierServed: map[string]int64{}, SourceLatency: c.latency.snapshot(),
	}
	for _, t := range c.tiers {
		s.TierBytes[t.Name] = t.used.Load()
		s.TierServed[t.Name] = t.served.Load()
	}
	return s
}

// counters are one dataset's cache counters.
type counters struct {
	hits, misses, sourceBytes atomic.Int64
}

// countersLocked returns dataset's counters; c.mu is held.
func (c *Cache) countersLocked(dataset string) *counters {
	ct := c.perDS[dataset]
	if ct == nil {
		ct = &counters{}
		c.perDS[dataset] = ct
	}
	return ct
}

// DatasetStats are one dataset's share of the cache.
type DatasetStats struct {
	Hits        int64            `json:"hits"`
	Misses      int64            `json:"misses"`
	SourceBytes int64            `json:"sourceBytes"`
	Files       int              `json:"files"`
	TierBytes   map[string]int64 `json:"tierBytes"`
}

// DatasetStats returns the counters and cached bytes of one dataset.
func (c *Cache) DatasetStats(dataset string) DatasetStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	ct := c.countersLocked(dataset)
	s := DatasetStats{Hits: ct.hits.Load(), Misses: ct.misses.Load(), SourceBytes: ct.sourceBytes.Load(), TierBytes: map[string]int64{}}
	for _, t := range c.tiers {
		s.TierBytes[t.Name] = 0
	}
	for _, it := range c.items {
		if it.dataset == dataset {
			s.Files++
			s.TierBytes[it.tier.Name] += it.bytes.Load()
		}
	}
	return s
}

// BlockSize returns the fetch unit.
func (c *Cache) BlockSize() int64 { return c.opts.BlockSize }

func itemHash(dataset, name string) string {
	sum := sha256.Sum256([]byte(dataset + "\x00" + name))
	return hex.EncodeToString(sum[:16])
}

// item returns the item of dataset/name for the given source attributes,
// creating it, or resetting it when the source's fingerprint changed.
func (c *Cache) item(dataset, name string, a Attr) (*Item, error) {
	key := dataset + "\x00" + name
	c.mu.Lock()
	it := c.items[key]
	if it == nil {
		h := itemHash(dataset, name)
		t := c.placement(a.Size)
		it = &Item{c: c, tier: t, dataset: dataset, name: name, hash: h, ctr: c.countersLocked(dataset),
			dataPath: filepath.Join(t.Dir, h[:2], h+".data"), metaPath: filepath.Join(t.Dir, h[:2], h+".meta")}
		it.resetLocked(a)
		c.items[key] = it
	}
	it.atime.Store(time.Now().UnixNano())
	c.mu.Unlock()

	it.mu.Lock()
	stale := it.fingerprint != a.Fingerprint()
	if stale {
		it.resetLocked(a)
	}
	it.mu.Unlock()
	if stale {
		klog.V(4).InfoS("Cached file changed at the source; dropping its blocks", "dataset", dataset, "path", name)
		if err := it.truncateFile(); err != nil {
			return nil, err
		}
	}
	return it, nil
}

func (c *Cache) placement(size int64) *tier {
	for _, t := range c.tiers {
		if size*4 <= t.Quota {
			return t
		}
	}
	return c.tiers[len(c.tiers)-1]
}

// ReadAt reads p at off of dataset/name through the cache. a are the
// source's current attributes of the file (its size bounds the read).
func (c *Cache) ReadAt(ctx context.Context, src Source, dataset, name string, a Attr, p []byte, off int64) (int, error) {
	if off >= a.Size {
		return 0, io.EOF
	}
	it, err := c.item(dataset, name, a)
	if err != nil {
		return 0, err
	}
	end := min(off+int64(len(p)), a.Size)
	bs := c.opts.BlockSize
	n := 0
	for pos := off; pos < end; {
		b := pos / bs
		boff := pos - b*bs
		want := min(bs-boff, end-pos)
		got, err := it.readBlock(ctx, src, b, p[n:n+int(want)], boff)
		n += got
		if err != nil {
			return n, err
		}
		pos += want
	}
	it.noteRead(src, off, end)
	if end < off+int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// Warm fetches every missing block of dataset/name; progress, if not nil,
// is called (one call at a time) with the bytes done so far.
func (c *Cache) Warm(ctx context.Context, src Source, dataset, name string, a Attr, progress func(done int64)) error {
	it, err := c.item(dataset, name, a)
	if err != nil {
		return err
	}
	nb := it.blocks()
	var wg sync.WaitGroup
	var done atomic.Int64
	errc := make(chan error, 1)
	// Its own limit: the fetches themselves take c.sem, which this loop
	// must not hold while it waits for them.
	lim := make(chan struct{}, c.opts.MaxFetches)
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
				_, err = it.fetch(ctx, src, b)
			}
			<-lim
			if err != nil {
				select {
				case errc <- err:
				default:
				}
				return
			}
			d := done.Add(it.blockLen(b))
			if progress != nil {
				progressMu.Lock()
				progress(d)
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

// CompleteFile returns a read-only descriptor of the item's data file when
// every block is present and verified (for FUSE passthrough), or nil.
func (c *Cache) CompleteFile(dataset, name string, a Attr) *os.File {
	it, err := c.item(dataset, name, a)
	if err != nil || a.Size == 0 {
		return nil
	}
	for b := int64(0); b < it.blocks(); b++ {
		if !it.verify(b) {
			return nil
		}
	}
	f, err := os.Open(it.dataPath)
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

// Evict drops every cached item of dataset under prefix ("" = all).
func (c *Cache) Evict(dataset, prefix string) int {
	c.mu.Lock()
	var victims []*Item
	for k, it := range c.items {
		if it.dataset == dataset && (prefix == "" || it.name == prefix || strings.HasPrefix(it.name, prefix+"/")) {
			victims = append(victims, it)
			delete(c.items, k)
		}
	}
	c.mu.Unlock()
	for _, it := range victims {
		it.remove()
	}
	return len(victims)
}

func acquire(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// load rebuilds the index of tier t from its .meta files.
func (c *Cache) load(t *tier) error {
	metas, err := filepath.Glob(filepath.Join(t.Dir, "*", "*.meta"))
	if err != nil {
		return err
	}
	for _, mp := range metas {
		it, err := loadItem(c, t, mp)
		if err != nil {
			klog.InfoS("Dropping an unreadable cache index", "path", mp, "err", err)
			os.Remove(mp)
			os.Remove(strings.TrimSuffix(mp, ".meta") + ".data")
			continue
		}
		it.ctr = c.countersLocked(it.dataset)
		c.items[it.dataset+"\x00"+it.name] = it
		t.used.Add(it.presentBytes())
	}
	return nil
}

// cleaner evicts least-recently-used items when a tier is over its quota
// or its file system is short of free space. It runs on a kick and every
// few seconds.
func (c *Cache) cleaner() {
	defer c.wg.Done()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.kick:
		case <-tick.C:
		}
		for _, t := range c.tiers {
			c.clean(t)
		}
	}
}

func (c *Cache) kickCleaner() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// overFull reports how many bytes tier t must free.
func (c *Cache) overFull(t *tier) int64 {
	used := t.used.Load()
	var need int64
	if used > int64(float64(t.Quota)*c.opts.LowWater) && used >= t.Quota-c.opts.BlockSize {
		need = used - int64(float64(t.Quota)*c.opts.LowWater)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(t.Dir, &st); err == nil && st.Blocks > 0 {
		free := int64(st.Bavail) * st.Bsize
		want := int64(float64(int64(st.Blocks)*st.Bsize) * c.opts.FreeSpaceRatio)
		if free < want && want-free > need {
			need = min(want-free, used)
		}
	}
	return need
}

// clean evicts from t until it is under its low watermark.
func (c *Cache) clean(t *tier) {
	need := c.overFull(t)
	if need <= 0 {
		return
	}
	c.mu.Lock()
	var cands []*Item
	for _, it := range c.items {
		if it.tier == t && it.busy.Load() == 0 {
			cands = append(cands, it)
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].atime.Load() < cands[j].atime.Load() })
	var victims []*Item
	for _, it := range cands {
		if need <= 0 {
			break
		}
		need -= it.presentBytes()
		victims = append(victims, it)
		delete(c.items, it.dataset+"\x00"+it.name)
	}
	c.mu.Unlock()
	for _, it := range victims {
		it.remove()
		c.evictions.Add(1)
	}
	if len(victims) > 0 {
		klog.V(3).InfoS("Evicted cache items", "tier", t.Name, "items", len(victims), "usedBytes", t.used.Load())
	}
}

// noteOpen records that it's data file is open and in use, and closes the
// least recently used files beyond MaxOpenFiles. A reader holding a file
// that is closed under it reopens it (see Item.pread).
func (c *Cache) noteOpen(it *Item) {
	c.fdMu.Lock()
	if it.fdElem != nil {
		c.fdOrder.MoveToFront(it.fdElem)
	} else {
		it.fdElem = c.fdOrder.PushFront(it)
	}
	var victims []*Item
	for c.fdOrder.Len() > c.opts.MaxOpenFiles {
		e := c.fdOrder.Back()
		v := e.Value.(*Item)
		c.fdOrder.Remove(e)
		v.fdElem = nil
		victims = append(victims, v)
	}
	c.fdMu.Unlock()
	for _, v := range victims {
		_ = v.closeFile()
	}
}

// forgetOpen drops it from the open-file order (its file is closed).
func (c *Cache) forgetOpen(it *Item) {
	c.fdMu.Lock()
	if it.fdElem != nil {
		c.fdOrder.Remove(it.fdElem)
		it.fdElem = nil
	}
	c.fdMu.Unlock()
}
