package cache

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// TestIndexWrittenInBatches: a file of many blocks writes its index a few
// times, not once per block (each write rewrites the whole index: that
// was quadratic in the file's size), and a restart still finds every block.
func TestIndexWrittenInBatches(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	const blocks = 300
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), blocks*cachetest.Block, 51)
	p, _ := posix.New(root)
	c := newTestCache(t, dir, 1<<30)
	readAll(t, c, p, "f")
	settle(t, c)
	if n := c.env.total.indexWrites.Load(); n > blocks/saveEvery+2 {
		t.Errorf("%d index writes for a file of %d blocks, want at most %d", n, blocks, blocks/saveEvery+2)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	src := newCounting(p)
	c2 := newTestCache(t, dir, 1<<30)
	defer c2.Close()
	if got := readAll(t, c2, src, "f"); !bytes.Equal(got, want) || src.total.Load() != 0 {
		t.Fatalf("after a restart: equal=%t, %d source reads (want 0)", bytes.Equal(got, want), src.total.Load())
	}
	checkInvariants(t, c2)
}

// fillItems puts n cached items of dataset "ds" in c, without files: the
// per-operation costs below depend on the number of items, not on disk.
func fillItems(b *testing.B, c *Cache, n int) {
	b.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	ct := c.countersLocked("ds")
	for i := range n {
		name := fmt.Sprintf("d%03d/f%07d", i%1000, i)
		it := newItem(c.env, c.tiers[0], "ds", name, name, ct)
		it.resetLocked(source.Attr{Size: 4096})
		c.items[itemKey("ds", name)] = it
		ct.files.Add(1)
	}
}

// BenchmarkPerOperation measures what a write, create, unlink or rename
// costs the cache (evicting one file's cached copy) and what a stats
// scrape costs, with 1k, 100k and 1M files cached: flat is the goal.
//
//	go test -run '^$' -bench PerOperation ./pkg/cache/
func BenchmarkPerOperation(b *testing.B) {
	for _, n := range []int{1_000, 100_000, 1_000_000} {
		c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: b.TempDir(), Quota: 1 << 40}}, BlockSize: cachetest.Block, CleanInterval: -1})
		if err != nil {
			b.Fatal(err)
		}
		fillItems(b, c, n)
		ds := c.Dataset("ds", nil)
		b.Run(fmt.Sprintf("evict-file/items=%d", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				ds.EvictFile(fmt.Sprintf("absent/f%d", i), source.Attr{}) // the write path: a lookup, nothing to remove
			}
		})
		// What every write cost before: a scan of all items.
		b.Run(fmt.Sprintf("evict-tree-scan/items=%d", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				ds.EvictTree(fmt.Sprintf("absent/f%d", i))
			}
		})
		b.Run(fmt.Sprintf("dataset-stats/items=%d", n), func(b *testing.B) {
			for b.Loop() {
				ds.Stats()
			}
		})
		c.Close()
	}
}
