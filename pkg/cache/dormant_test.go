package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// newSleepyCache is a cache whose items sleep as soon as they are idle and
// whose cleaner runs only when the test calls Clean.
func newSleepyCache(t *testing.T, dir string, quota int64) *Cache {
	t.Helper()
	c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: dir, Quota: quota}}, BlockSize: cachetest.Block,
		CleanInterval: -1, SleepAfter: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	c.waitLoaded()
	return c
}

func counts(c *Cache) (awake, asleep int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items), c.dormant.len()
}

// TestIdleItemsSleepAndWake: the cleaner puts idle items to sleep (out of
// memory, their files and counts kept); a read wakes one from its index
// with nothing fetched again; an eviction by name, by prefix or by the
// cleaner's LRU finds dormant files too.
func TestIdleItemsSleepAndWake(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	want := map[string][]byte{}
	for i := range 30 {
		name := fmt.Sprintf("d/f%02d", i)
		if i >= 20 {
			name = fmt.Sprintf("d/sub/f%02d", i)
		}
		want[name] = cachetest.WriteRandom(t, filepath.Join(root, name), cachetest.Block+i*7, uint64(100+i))
	}
	p, _ := posix.New(root)
	c := newSleepyCache(t, dir, 1<<30)
	defer c.Close()
	for name := range want {
		readAll(t, c, p, name)
	}
	// A file only asked about (a passthrough open asks whether it is
	// complete): an item with no block, and no index to wake from.
	cachetest.WriteRandom(t, filepath.Join(root, "asked"), 100, 99)
	aa, _ := p.Stat(context.Background(), "asked")
	if _, err := c.item("ds", "asked", aa); err != nil {
		t.Fatal(err)
	}
	settle(t, c)
	time.Sleep(time.Millisecond)
	c.Clean()
	if awake, asleep := counts(c); awake != 0 || asleep != 30 {
		t.Fatalf("after the cleaner: %d items in memory, %d dormant; want 0 and 30 (the item with no block gone)", awake, asleep)
	}
	checkInvariants(t, c)

	src := newCounting(p)
	if got := readAll(t, c, src, "d/f03"); !bytes.Equal(got, want["d/f03"]) || src.total.Load() != 0 {
		t.Fatalf("a dormant file read: equal=%t, %d source reads; want its cached bytes", bytes.Equal(got, want["d/f03"]), src.total.Load())
	}
	if awake, asleep := counts(c); awake != 1 || asleep != 29 {
		t.Errorf("after a read: %d in memory, %d dormant; want 1 and 29", awake, asleep)
	}
	checkInvariants(t, c)

	a, _ := p.Stat(context.Background(), "d/f04")
	if n := c.Dataset("ds", p).EvictFile("d/f04", a); n != 1 {
		t.Errorf("evicting a dormant file by name dropped %d; want 1", n)
	}
	if n := c.Dataset("ds", p).EvictTree("d/sub"); n != 10 {
		t.Errorf("evicting d/sub dropped %d; want its 10 dormant files", n)
	}
	checkInvariants(t, c)
	for name, w := range want {
		before := src.total.Load()
		if got := readAll(t, c, src, name); !bytes.Equal(got, w) {
			t.Fatalf("%s: wrong bytes", name)
		}
		evicted := name == "d/f04" || filepath.Dir(name) == "d/sub"
		if reads := src.total.Load() - before; evicted != (reads > 0) {
			t.Errorf("%s: %d source reads (evicted: %t)", name, reads, evicted)
		}
	}
	checkInvariants(t, c)
}

// TestCleanerEvictsDormantOldestFirst: a restart loads every index
// dormant; over quota, the cleaner evicts dormant files in LRU order like
// items in memory, down to the low watermark.
func TestCleanerEvictsDormantOldestFirst(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	p, _ := posix.New(root)
	c := newSleepyCache(t, dir, 1<<30)
	var names []string
	for i := range 20 {
		name := fmt.Sprintf("f%02d", i)
		cachetest.WriteRandom(t, filepath.Join(root, name), cachetest.Block, uint64(200+i))
		readAll(t, c, p, name)
		names = append(names, name)
		time.Sleep(2 * time.Millisecond) // distinct last uses, oldest first
	}
	settle(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Room for 10 blocks: the 20 cached ones are over it.
	c2 := newSleepyCache(t, dir, 10*cachetest.Block)
	defer c2.Close()
	if _, asleep := counts(c2); asleep != 20 {
		t.Fatalf("%d dormant after the restart; want 20", asleep)
	}
	c2.Clean()
	checkInvariants(t, c2)
	src := newCounting(p)
	kept := 0
	for i, name := range names {
		before := src.total.Load()
		readAll(t, c2, src, name)
		cached := src.total.Load() == before
		if cached {
			kept++
		}
		if cached && i < 10 {
			t.Errorf("%s (among the 10 oldest) survived the cleaner", name)
		}
	}
	if kept == 0 || kept > 8 {
		t.Errorf("%d of 20 files kept in a tier of 10 blocks with a low watermark of 0.8; want 1 to 8", kept)
	}
}

// TestSleepRacesReads: items put to sleep while readers use them (a read
// that found an item a moment before it slept reads through it without
// storing) never serve wrong bytes, and the counts stay right.
func TestSleepRacesReads(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	want := map[string][]byte{}
	var names []string
	for i := range 16 {
		name := fmt.Sprintf("f%02d", i)
		want[name] = cachetest.WriteRandom(t, filepath.Join(root, name), 3*cachetest.Block+i, uint64(300+i))
		names = append(names, name)
	}
	p, _ := posix.New(root)
	c := newSleepyCache(t, dir, 1<<30)
	defer c.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				c.Clean()
			}
		}
	}()
	var rwg sync.WaitGroup
	for r := range 4 {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			for range 200 {
				name := names[rng.IntN(len(names))]
				got := make([]byte, len(want[name]))
				a, err := p.Stat(context.Background(), name)
				if err == nil {
					_, err = c.Dataset("ds", p).ReadAt(context.Background(), name, a, got, 0)
				}
				if (err != nil && err != io.EOF) || !bytes.Equal(got, want[name]) {
					t.Errorf("%s: %v, or wrong bytes, while items sleep and wake", name, err)
					return
				}
			}
		}()
	}
	rwg.Wait()
	close(stop)
	wg.Wait()
	checkInvariants(t, c)
}

// TestDormantRecordsPacked: records kept packed, in the sorted slice or
// among the fresh ones, read back as they were set (the last use to the
// millisecond) through merges, deaths, revivals and compactions; the pairs
// of dataset and tier past the packed index's bound keep whole records.
func TestDormantRecordsPacked(t *testing.T) {
	s := newDormants()
	t1, t2 := &tier{index: 0}, &tier{index: 1}
	c1, c2 := &counters{}, &counters{}
	now := time.Now().UnixNano()
	want := map[[16]byte]dormant{}
	key := func(i int) [16]byte {
		h := sha256.Sum256([]byte(fmt.Sprint(i)))
		return [16]byte(h[:16])
	}
	set := func(i int) {
		d := dormant{ctr: []*counters{c1, c2}[i%2], tier: []*tier{t1, t2}[i%3%2], gen: uint64(i) * 0x9e3779b97f4a7c15, bytes: int64(i) << 33, atime: now - int64(i)*int64(time.Millisecond) - int64(i%1000)}
		s.set(key(i), d)
		d.atime -= d.atime % int64(time.Millisecond)
		want[key(i)] = d
	}
	check := func(when string) {
		t.Helper()
		seen := 0
		for hk, d := range s.all() {
			if w, ok := want[hk]; !ok || d != w {
				t.Fatalf("%s: record %x is %+v, want %+v (%v)", when, hk[:4], d, w, ok)
			}
			seen++
		}
		for hk, w := range want {
			if d, ok := s.get(hk); !ok || d != w {
				t.Fatalf("%s: get %x = %+v, %v; want %+v", when, hk[:4], d, ok, w)
			}
		}
		if seen != len(want) || s.len() != len(want) {
			t.Fatalf("%s: %d records yielded, len %d; want %d", when, seen, s.len(), len(want))
		}
	}
	for i := range 20000 {
		set(i)
	}
	if len(s.pairs) != 4 || len(s.sorted) < 15000 {
		t.Fatalf("%d pairs, %d records merged of 20000; want 4 pairs and most merged", len(s.pairs), len(s.sorted))
	}
	check("after 20,000")
	// Grown a 32nd at a time: append's growth left up to a quarter of
	// the slice unused (about 5 bytes a record on average).
	if len(s.sorted)+len(s.sorted)/32+1 < cap(s.sorted) {
		t.Fatalf("%d records merged in a slice of room for %d", len(s.sorted), cap(s.sorted))
	}
	for i := 0; i < 20000; i += 3 { // a third die (compactions on the way)
		s.delete(key(i))
		delete(want, key(i))
	}
	check("after deaths")
	for i := 0; i < 20000; i += 6 { // half of them come back, with another use
		set(i + 0)
	}
	for i := 20000; i < 23000; i++ {
		set(i)
	}
	set(5) // a live record set again
	check("after revivals")
	s.shrink()
	if s.dead != 0 {
		t.Fatalf("%d dead after shrink", s.dead)
	}
	check("after shrink")
	// The table of pairs full: a new pair's record is kept whole.
	s.pairs = append(s.pairs, make([]dormantPair, deadPair-len(s.pairs))...)
	full := dormant{ctr: &counters{}, tier: t1, gen: 7, bytes: 9, atime: now + 123}
	s.set([16]byte{0xff}, full)
	want[[16]byte{0xff}] = full
	check("a pair past the bound")
	s.delete([16]byte{0xff})
	delete(want, [16]byte{0xff})
	check("its record removed")
}

// TestItemsKeepTheirSizeClass: an Item fits Go's 320-byte size class,
// below the 352 bytes of the FUSE nodes (fusefs): items of files read once
// and put to sleep, allocated between the nodes the kernel keeps, left
// most of those spans pinned and empty (bench-scale, 100,000 idle files:
// 18 MB of heap in use beyond the live bytes, 9 MB once apart). A field
// added to Item may need a place where it packs.
func TestItemsKeepTheirSizeClass(t *testing.T) {
	if size := unsafe.Sizeof(Item{}); size > 320 {
		t.Errorf("an Item is %d bytes; want at most 320 (a field added may need a place where it packs)", size)
	}
}
