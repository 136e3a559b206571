package cache

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"

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
	loaded, asleep := len(c2.items), len(c2.dormant)
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
