package cache

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// TestRestartServesBeforeTheIndexIsLoaded: a new cache returns once it
// has listed its index files; a read of a cached file loads that file's
// index first and is served from the cache while the rest still waits; an
// eviction of a file not loaded yet drops it; the background load then
// adopts the rest, and every file is still cached. (The whole index was
// read before New returned: a daemon with a million cached files served
// nothing, its pods' mounts hung, for as long as that took.)
func TestRestartServesBeforeTheIndexIsLoaded(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	const files = 40
	want := map[string][]byte{}
	for i := range files {
		name := fmt.Sprintf("d/f%02d", i)
		want[name] = cachetest.WriteRandom(t, filepath.Join(root, name), cachetest.Block+i, uint64(60+i))
	}
	p, _ := posix.New(root)
	c := newTestCache(t, dir, 1<<30)
	for name := range want {
		readAll(t, c, p, name)
	}
	settle(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	gate := make(chan struct{})
	c2, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: dir, Quota: 1 << 30}}, BlockSize: cachetest.Block, loadGate: gate})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	src := newCounting(p)
	if got := readAll(t, c2, src, "d/f07"); !bytes.Equal(got, want["d/f07"]) || src.total.Load() != 0 {
		t.Fatalf("a read while the index waits: equal=%t, %d source reads; want the cached bytes, 0 reads", bytes.Equal(got, want["d/f07"]), src.total.Load())
	}
	a, err := p.Stat(context.Background(), "d/f08")
	if err != nil {
		t.Fatal(err)
	}
	if n := c2.Dataset("ds", p).EvictFile("d/f08", a); n != 1 {
		t.Errorf("evicting a file whose index waits dropped %d items; want 1", n)
	}
	c2.mu.Lock()
	loaded := len(c2.items)
	c2.mu.Unlock()
	if loaded != 1 {
		t.Errorf("%d items before the background load; want 1 (the file read)", loaded)
	}
	close(gate)
	c2.waitLoaded()
	c2.mu.Lock()
	loaded, asleep := len(c2.items), c2.dormant.len()
	c2.mu.Unlock()
	if loaded != 1 || asleep != files-2 {
		t.Errorf("%d items and %d dormant after the load; want 1 (the file read) and %d (all but it and the evicted one)", loaded, asleep, files-2)
	}
	checkInvariants(t, c2)
	for name, w := range want {
		before := src.total.Load()
		if got := readAll(t, c2, src, name); !bytes.Equal(got, w) {
			t.Fatalf("%s after the load: wrong bytes", name)
		}
		if reads := src.total.Load() - before; (name == "d/f08") != (reads > 0) {
			t.Errorf("%s after the load: %d source reads (only the evicted file is read again)", name, reads)
		}
	}
}

// TestReadsWhileTheIndexLoads: reads of files whose indexes wait, while
// the background loader goes through them, load each once and serve the
// cached bytes. (The loader walked the map of waiting indexes that the
// readers delete from: Go stops a process on a map iterated and written
// at once.)
func TestReadsWhileTheIndexLoads(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	const files = 1000
	p, _ := posix.New(root)
	c := newTestCache(t, dir, 1<<30)
	names := make([]string, files)
	want := make([][]byte, files)
	for i := range files {
		names[i] = fmt.Sprintf("d%d/f%04d", i%10, i)
		want[i] = cachetest.WriteRandom(t, filepath.Join(root, names[i]), 100+i%50, uint64(1000+i))
		readAll(t, c, p, names[i])
	}
	settle(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c2 := newTestCacheNoWait(t, dir, 1<<30)
	defer c2.Close()
	src := newCounting(p)
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := r; i < files; i += 4 {
				got := make([]byte, len(want[i]))
				a, err := p.Stat(context.Background(), names[i])
				if err == nil {
					_, err = c2.Dataset("ds", src).ReadAt(context.Background(), names[i], a, got, 0)
				}
				if (err != nil && err != io.EOF) || !bytes.Equal(got, want[i]) {
					t.Errorf("%s: %v or wrong bytes", names[i], err)
					return
				}
			}
		}()
	}
	wg.Wait()
	c2.waitLoaded()
	if n := src.total.Load(); n != 0 {
		t.Errorf("%d source reads while the index loaded; want 0 (every file was cached)", n)
	}
	checkInvariants(t, c2)
}

// TestForgetTreeDoesNotWaitForTheLoad: a directory renamed on a
// read-write mount drops what is cached in memory under it at once; it
// waited for the whole index to load (minutes at a million files, the
// rename hanging meanwhile).
func TestForgetTreeDoesNotWaitForTheLoad(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	p, _ := posix.New(root)
	cachetest.WriteRandom(t, filepath.Join(root, "d/f"), 100, 1)
	c := newTestCache(t, dir, 1<<30)
	readAll(t, c, p, "d/f")
	settle(t, c)
	c.Close()
	gate := make(chan struct{})
	defer close(gate)
	c2, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: dir, Quota: 1 << 30}}, BlockSize: cachetest.Block, loadGate: gate})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	done := make(chan struct{})
	go func() {
		c2.Dataset("ds", p).ForgetTree("d")
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("ForgetTree waited for the index to load")
	}
}
