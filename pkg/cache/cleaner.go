package cache

import (
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// cleaner runs evictions in one goroutine: on a kick (a tier passed its
// low watermark or ran out of space) and every interval. With a negative
// interval its loop is off: kicks are dropped and tests call Clean.
type cleaner struct {
	interval time.Duration
	run      func()
	kicks    chan struct{}
	done     chan struct{}
	wg       sync.WaitGroup
}

func newCleaner(interval time.Duration, run func()) *cleaner {
	return &cleaner{interval: interval, run: run, kicks: make(chan struct{}, 1), done: make(chan struct{})}
}

func (cl *cleaner) start() {
	if cl.interval < 0 {
		return
	}
	cl.wg.Add(1)
	go cl.loop()
}

func (cl *cleaner) loop() {
	defer cl.wg.Done()
	tick := time.NewTicker(cl.interval)
	defer tick.Stop()
	for {
		select {
		case <-cl.done:
			return
		case <-cl.kicks:
		case <-tick.C:
		}
		cl.run()
	}
}

// kick asks for a run soon; it never blocks.
func (cl *cleaner) kick() {
	select {
	case cl.kicks <- struct{}{}:
	default:
	}
}

func (cl *cleaner) close() {
	close(cl.done)
	cl.wg.Wait()
}

// Clean runs the cleaner once, now.
func (c *Cache) Clean() {
	c.waitLoaded()
	c.cleanTiers()
}

func (c *Cache) cleanTiers() {
	c.saveDirty()
	if !c.loadedAll.Load() {
		return // the tiers' totals are partial until the index is loaded
	}
	c.sleepIdle()
	for _, t := range c.tiers {
		c.cleanTier(t)
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

// cleanTier evicts least recently used items of t that no one is reading
// until t is under its low watermark. Only the candidates are collected
// under the cache's lock; they are sorted outside it.
func (c *Cache) cleanTier(t *tier) {
	need := c.overFull(t)
	if need <= 0 {
		return
	}
	type cand struct {
		it    *Item    // an item in memory, or
		hk    [16]byte // a dormant one
		atime int64
	}
	c.mu.Lock()
	cands := make([]cand, 0, (len(c.items)+c.dormant.len())/len(c.tiers)+1)
	for _, it := range c.items {
		if it.tier == t {
			cands = append(cands, cand{it: it, atime: it.atime.Load()})
		}
	}
	for hk, d := range c.dormant.all() {
		if d.tier == t {
			cands = append(cands, cand{hk: hk, atime: d.atime})
		}
	}
	c.mu.Unlock()
	sort.Slice(cands, func(i, j int) bool { return cands[i].atime < cands[j].atime })
	var victims []*Item
	type asleep struct {
		hk [16]byte
		d  dormant
	}
	var sleeping []asleep
	c.mu.Lock()
	for _, cd := range cands {
		if need <= 0 {
			break
		}
		if cd.it == nil {
			d, ok := c.dormant.get(cd.hk)
			if !ok {
				continue // woken or evicted meanwhile
			}
			c.dormant.delete(cd.hk)
			c.asleep.Add(-1)
			c.uncountLocked(d)
			need -= d.bytes
			sleeping = append(sleeping, asleep{cd.hk, d})
			continue
		}
		it := cd.it
		key := itemKey(it.dataset, it.id)
		if c.items[key] != it || it.busy.Load() != 0 {
			continue // gone, replaced or in use meanwhile
		}
		need -= it.presentBytes()
		victims = append(victims, it)
		delete(c.items, key)
		it.ctr.files.Add(-1)
	}
	if len(sleeping) >= freeAfter {
		c.dormant.shrink() // many records at once: the room of the dead goes too
	}
	c.mu.Unlock()
	for _, it := range victims {
		it.remove()
		c.env.total.evictions.Add(1)
	}
	for _, v := range sleeping {
		c.removeDormantFiles(v.hk, v.d)
		c.env.total.evictions.Add(1)
	}
	if len(victims)+len(sleeping) > 0 {
		c.log.V(3).Info("Evicted cache items", "tier", t.Name, "items", len(victims)+len(sleeping), "usedBytes", t.used.Load())
	}
}
