package cache

import (
	"cmp"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Loading the index. A restart with a million cached files must serve at
// once: New only lists the tiers' index files (names, no reads) and
// returns; a background loader reads them one by one. A read of a file
// whose index is still waiting loads that one first, found by its hash in
// the listing: the cache is warm from the first read. The cleaner waits
// for the whole index (its totals are partial until then), and so does a
// prefix eviction (it finds items by name, which only the index says).

// pendingIndex is an index file listed and not loaded yet.
type pendingIndex struct {
	t    *tier
	path string
}

// startLoad lists the tiers' index files and loads them in the
// background (see above).
func (c *Cache) startLoad() {
	c.listed = make(chan struct{})
	c.loaded = make(chan struct{})
	c.stopLoad = make(chan struct{})
	c.loadWG.Add(1)
	go func() {
		defer c.loadWG.Done()
		defer close(c.loaded)
		pend := c.listIndexes()
		// The loader walks its own list of the hashes: readers delete
		// from the map as they load their files.
		hashes := make([]string, 0, len(pend))
		for h := range pend {
			hashes = append(hashes, h)
		}
		c.mu.Lock()
		c.pending = pend
		c.listedDone = true
		c.mu.Unlock()
		close(c.listed)
		if c.opts.loadGate != nil {
			select {
			case <-c.opts.loadGate:
			case <-c.stopLoad:
				return
			}
		}
		for _, hash := range hashes {
			select {
			case <-c.stopLoad:
				return
			default:
			}
			c.loadPending(hash, true)
		}
		c.mu.Lock()
		c.pending = nil
		c.mu.Unlock()
		c.loadedAll.Store(true)
		c.mu.Lock()
		files := len(c.items)
		c.mu.Unlock()
		c.log.V(1).Info("Cache index loaded", "files", files)
		c.clean.kick()
	}()
}

// listIndexes returns the index files of every tier by item hash
// (<tier>/<hash[:2]>/<hash>[-<gen>].meta).
func (c *Cache) listIndexes() map[string][]pendingIndex {
	pend := map[string][]pendingIndex{}
	for _, t := range c.tiers {
		subs, err := readNames(t.Dir)
		if err != nil {
			c.log.Error(err, "Listing a cache tier failed: its cached files are fetched again", "tier", t.Name)
			continue
		}
		for _, sub := range subs {
			if len(sub) != 2 {
				continue
			}
			names, err := readNames(filepath.Join(t.Dir, sub))
			if err != nil {
				c.log.Error(err, "Listing a cache tier failed: its cached files are fetched again", "tier", t.Name, "dir", sub)
				continue
			}
			for _, n := range names {
				if len(n) < 37 || !strings.HasSuffix(n, ".meta") || n[:2] != sub {
					continue // data files, temporary files
				}
				h := n[:32]
				pend[h] = append(pend[h], pendingIndex{t: t, path: filepath.Join(t.Dir, sub, n)})
			}
		}
	}
	return pend
}

// readNames returns the names in directory dir.
func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// onDiskLocked reports whether dataset's file id may have an index only
// on disk (listed at start and not loaded yet, or dormant, or being
// loaded), and its hash; c.mu is held. The caller loads it (loadFromDisk)
// before it looks again.
func (c *Cache) onDiskLocked(dataset, id string) (string, bool) {
	if c.loadedAll.Load() && c.dormant.len() == 0 && len(c.inLoad) == 0 {
		return "", false
	}
	h := itemHash(dataset, id)
	if !c.listedDone {
		return h, true
	}
	if _, ok := c.pending[h]; ok {
		return h, true
	}
	if _, ok := c.inLoad[h]; ok {
		return h, true
	}
	hk, _ := hashKey(h)
	_, ok := c.dormant.get(hk)
	return h, ok
}

// loadFromDisk loads the index of hash (see onDiskLocked), waiting for
// the start's listing first.
func (c *Cache) loadFromDisk(hash string) {
	select {
	case <-c.listed:
	case <-c.loaded: // the loader stopped before listing (Close)
		return
	}
	c.loadPending(hash, false)
}

// waitLoaded waits until the whole index is loaded (or loading stopped).
func (c *Cache) waitLoaded() { <-c.loaded }

// loadPending loads the index files of hash that are only on disk:
// listed at start and not loaded yet, or dormant. The background loader
// (asleep) keeps them dormant, a reader wakes them. If another goroutine
// is loading them, it waits for that.
func (c *Cache) loadPending(hash string, asleep bool) {
	c.mu.Lock()
	if ch := c.inLoad[hash]; ch != nil {
		c.mu.Unlock()
		<-ch
		return
	}
	idx, listed := c.pending[hash]
	hk, _ := hashKey(hash)
	d, dormant := c.dormant.get(hk)
	if !listed && (!dormant || asleep) {
		c.mu.Unlock()
		return
	}
	delete(c.pending, hash)
	if dormant {
		// Still counted in asleep until it is awake: a reader that
		// finds no dormant record and no load in progress may create
		// a new item.
		c.dormant.delete(hk)
		c.uncountLocked(d)
	}
	ch := make(chan struct{})
	c.inLoad[hash] = ch
	c.mu.Unlock()
	if dormant {
		_, mp := filePaths(d.tier.Dir, hash, d.gen)
		c.loadIndexFile(d.tier, mp, false, d.atime)
	}
	for _, p := range idx {
		c.loadIndexFile(p.t, p.path, asleep, 0)
	}
	c.mu.Lock()
	delete(c.inLoad, hash)
	c.mu.Unlock()
	close(ch)
	if dormant {
		c.asleep.Add(-1)
	}
}

// loadIndexFile adopts the index at mp of tier t, awake or dormant, with a
// last use of at least atime; it removes the index (and its data) when it
// cannot be read.
func (c *Cache) loadIndexFile(t *tier, mp string, asleep bool, atime int64) {
	m, err := readIndex(mp)
	var it *Item
	if err == nil {
		c.mu.Lock()
		ctr := c.countersLocked(m.Dataset)
		c.mu.Unlock()
		it = newItem(c.env, t, m.Dataset, cmp.Or(m.ID, m.Name), m.Name, ctr)
		err = it.loadIndex(m, mp)
	}
	if errors.Is(err, fs.ErrNotExist) {
		c.log.V(2).Info("A cache index is gone", "path", mp)
		os.Remove(strings.TrimSuffix(mp, ".meta") + ".data")
		return
	}
	if err != nil {
		c.log.Error(err, "Dropping an unreadable cache index", "path", mp)
		os.Remove(mp)
		os.Remove(strings.TrimSuffix(mp, ".meta") + ".data")
		return
	}
	if atime > it.atime.Load() {
		it.atime.Store(atime)
	}
	key := itemKey(it.dataset, it.id)
	hk, _ := hashKey(it.hash)
	c.mu.Lock()
	// Two generations of one file (a crash between a reset and the
	// removal of the old one): keep the newer.
	if prev := c.items[key]; prev != nil {
		if prev.atime.Load() >= it.atime.Load() {
			c.mu.Unlock()
			it.addBytesLocked(-it.presentBytes())
			it.removeFiles()
			return
		}
		delete(c.items, key)
		prev.ctr.files.Add(-1)
		defer prev.remove()
	}
	if prev, ok := c.dormant.get(hk); ok {
		if prev.atime >= it.atime.Load() {
			c.mu.Unlock()
			it.addBytesLocked(-it.presentBytes())
			it.removeFiles()
			return
		}
		c.dormant.delete(hk)
		c.asleep.Add(-1)
		c.uncountLocked(prev)
		defer c.removeDormantFiles(hk, prev)
	}
	it.ctr.files.Add(1)
	if asleep {
		c.dormant.set(hk, it.dormant())
		c.asleep.Add(1)
	} else {
		c.items[key] = it
	}
	c.mu.Unlock()
}
