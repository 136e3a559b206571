package cache

import (
	"encoding/hex"
	"os"
	"runtime/debug"
	"strings"
	"time"
)

// Dormant items. A cached file no one has used for Options.SleepAfter is
// put to sleep by the cleaner: its Item (about 500 bytes with its strings,
// block maps and read-ahead state) leaves memory, and a record of 40
// bytes (about 46 with its share of the structure's slack: dormants.go)
// says where its files are, how many bytes they hold and when it was last
// used: enough for the tiers' accounting and the cleaner's LRU order.
// Its index on disk has the rest; the first use reads it back
// (loadFromDisk).
// A restart loads every index dormant. Memory then grows with the files
// in use, not with the files cached.

// freeAfter is how many items put to sleep at once have the memory freed
// returned to the system at once.
const freeAfter = 1000

// dormant is a cached file whose Item is not in memory.
type dormant struct {
	ctr   *counters // its dataset's
	tier  *tier
	gen   uint64 // the generation its files are named by
	bytes int64  // present bytes, counted in its tier and dataset
	atime int64  // last use, UnixNano
}

// hashKey is a dormant record's key: an item hash (hex) as bytes.
func hashKey(hash string) ([16]byte, bool) {
	var k [16]byte
	n, err := hex.Decode(k[:], []byte(hash))
	return k, err == nil && n == len(k)
}

// dormant returns the item's record; it.mu is held (or it is not shared).
func (it *Item) dormant() dormant {
	return dormant{ctr: it.ctr, tier: it.tier, gen: it.fileGen, bytes: it.bytes.Load(), atime: it.atime.Load()}
}

// uncountLocked takes a dormant record's bytes and file out of its tier's
// and dataset's counts (it is being woken or evicted); c.mu is held.
func (c *Cache) uncountLocked(d dormant) {
	d.tier.used.Add(-d.bytes)
	d.ctr.tierBytes[d.tier.index].Add(-d.bytes)
	d.ctr.files.Add(-1)
}

// removeDormantFiles deletes the files of a dormant record taken out of
// the map (and uncounted).
func (c *Cache) removeDormantFiles(hk [16]byte, d dormant) {
	data, meta := filePaths(d.tier.Dir, hex.EncodeToString(hk[:]), d.gen)
	os.Remove(meta)
	os.Remove(data)
}

// sleepIdle puts to sleep the items not used for SleepAfter that nothing
// reads, fetches or has to save. A holder of a sleeping item's pointer
// (a read that found it a moment before) finds it removed, as after an
// eviction: it reads without storing.
func (c *Cache) sleepIdle() {
	if c.opts.SleepAfter < 0 {
		return
	}
	cutoff := time.Now().Add(-c.opts.SleepAfter).UnixNano()
	c.mu.Lock()
	var idle []*Item
	for _, it := range c.items {
		if it.atime.Load() < cutoff && it.busy.Load() == 0 {
			idle = append(idle, it)
		}
	}
	c.mu.Unlock()
	slept := 0
	for _, it := range idle {
		if c.sleep(it, cutoff) {
			slept++
		}
	}
	if slept > 0 {
		c.log.V(3).Info("Idle cache items put to sleep", "items", slept)
	}
	if slept >= freeAfter {
		// Many items at once (the end of a pass over a large dataset):
		// a map never shrinks, so the items left move to one of their
		// size, and the memory goes back to the system now rather than
		// over minutes: the daemon's resident size follows what it
		// holds.
		c.mu.Lock()
		items := make(map[string]*Item, len(c.items))
		for k, it := range c.items {
			items[k] = it
		}
		c.items = items
		c.mu.Unlock()
		debug.FreeOSMemory()
	}
}

// sleep puts it to sleep if it is still idle.
func (c *Cache) sleep(it *Item, cutoff int64) bool {
	key := itemKey(it.dataset, it.id)
	hk, ok := hashKey(it.hash)
	if !ok {
		return false
	}
	c.mu.Lock()
	if _, dup := c.dormant.get(hk); dup || c.items[key] != it || it.busy.Load() != 0 || it.atime.Load() >= cutoff {
		c.mu.Unlock()
		return false
	}
	it.mu.Lock()
	if it.removed || it.inflight != nil || it.raQueued != nil || it.unsaved != 0 {
		it.mu.Unlock()
		c.mu.Unlock()
		return false
	}
	it.removed = true // nothing more is stored or saved through it
	// An item with no block has no index to wake from (it was only
	// asked about): it goes, like an eviction.
	empty := it.presentCount == 0
	f := it.file
	it.file = nil
	d := it.dormant()
	it.mu.Unlock()
	delete(c.items, key)
	if empty {
		it.ctr.files.Add(-1)
	} else {
		c.dormant.set(hk, d)
		c.asleep.Add(1)
	}
	c.mu.Unlock()
	it.env.files.forget(it)
	if f != nil {
		f.Close()
	}
	if empty {
		it.removeFiles()
	}
	return true
}

// evictDormant evicts the dormant record hk if it is still there.
func (c *Cache) evictDormant(hk [16]byte) (int64, bool) {
	c.mu.Lock()
	d, ok := c.dormant.get(hk)
	if ok {
		c.dormant.delete(hk)
		c.asleep.Add(-1)
		c.uncountLocked(d)
	}
	c.mu.Unlock()
	if !ok {
		return 0, false
	}
	c.removeDormantFiles(hk, d)
	c.env.total.evictions.Add(1)
	return d.bytes, true
}

// evictDormantTree evicts the dormant files of dataset at or under prefix
// ("" = all); their names are in their indexes, read for a prefix.
func (c *Cache) evictDormantTree(dataset, prefix string) int {
	c.mu.Lock()
	ctr := c.countersLocked(dataset)
	var keys [][16]byte
	var recs []dormant
	for hk, d := range c.dormant.all() {
		if d.ctr == ctr {
			keys = append(keys, hk)
			recs = append(recs, d)
		}
	}
	c.mu.Unlock()
	n := 0
	for i, hk := range keys {
		if prefix != "" {
			_, meta := filePaths(recs[i].tier.Dir, hex.EncodeToString(hk[:]), recs[i].gen)
			m, err := readIndex(meta)
			if err == nil && m.Name != prefix && !strings.HasPrefix(m.Name, prefix+"/") {
				continue
			}
		}
		if _, ok := c.evictDormant(hk); ok {
			n++
		}
	}
	return n
}
