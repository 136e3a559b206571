package cache

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/fusefs"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// mountFS serves a dataset of the engine through FUSE in a temporary
// directory, unmounted when the test ends.
func mountFS(t *testing.T, eng fusefs.Engine, opts fusefs.Options) string {
	t.Helper()
	cachetest.RequireFUSE(t)
	mnt := t.TempDir()
	if opts.Name == "" {
		opts.Name = "ds"
	}
	f, err := fusefs.Mount(mnt, eng, opts)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	cachetest.UnmountAtCleanup(t, mnt, f.Unmount)
	return mnt
}

// reporter is the part of testing.T the checks use (a test of the checks
// records what they report).
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// settle waits until no fetch or read-ahead goroutine runs.
func settle(t reporter, c *Cache) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); c.env.fetch.running.Load() > 0; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d fetches still running after 10s", c.env.fetch.running.Load())
		}
	}
}

// checkInvariants checks the engine's INVARIANT comments on a settled
// cache: every item's block index is consistent (one entry per block, a
// count that matches, verified blocks present, bytes that add up, and the
// bytes on disk match their checksums), no item in the map is removed,
// each tier's used bytes are the sum over its items, and the open-file
// order respects its bound and holds only open files.
func checkInvariants(t reporter, c *Cache) {
	t.Helper()
	settle(t, c)
	used := map[*tier]int64{}
	c.mu.Lock()
	for key, it := range c.items {
		it.mu.Lock()
		bs := it.env.blockSize
		nb := (it.size + bs - 1) / bs
		switch {
		case key != itemKey(it.dataset, it.id):
			t.Errorf("item %s is in the map under another key", it.name)
		case it.removed:
			t.Errorf("item %s is in the map and removed", it.name)
		case int64(len(it.present)) != nb || len(it.sums) != len(it.present) || len(it.verified) != len(it.present):
			t.Errorf("item %s: %d blocks of size %d, index has %d present, %d sums, %d verified", it.name, nb, it.size, len(it.present), len(it.sums), len(it.verified))
		}
		if (it.inflight != nil && len(it.inflight) == 0) || (it.raQueued != nil && len(it.raQueued) == 0) {
			// An empty map keeps its buckets: about 130 bytes per
			// cached file that was ever fetched.
			t.Errorf("item %s keeps an empty map of fetches (%v) or read-aheads (%v)", it.name, it.inflight != nil, it.raQueued != nil)
		}
		var count, bytes int64
		for b, p := range it.present {
			if it.verified[b] && !p {
				t.Errorf("item %s: block %d verified but not present", it.name, b)
			}
			if !p {
				continue
			}
			count++
			bl := min(bs, it.size-int64(b)*bs)
			bytes += bl
			if it.verified[b] {
				buf := make([]byte, bl)
				data, _ := it.pathsLocked()
				if f, err := os.Open(data); err != nil {
					t.Errorf("item %s: %v", it.name, err)
				} else {
					_, err := f.ReadAt(buf, int64(b)*bs)
					f.Close()
					if err != nil || crc32.Checksum(buf, castagnoli) != it.sums[b] {
						t.Errorf("item %s: block %d does not match its checksum (%v)", it.name, b, err)
					}
				}
			}
		}
		if count != it.presentCount {
			t.Errorf("item %s: presentCount %d, %d blocks present", it.name, it.presentCount, count)
		}
		if bytes != it.bytes.Load() {
			t.Errorf("item %s: bytes %d, present blocks hold %d", it.name, it.bytes.Load(), bytes)
		}
		used[it.tier] += it.bytes.Load()
		it.mu.Unlock()
	}
	files := map[*counters]int64{}
	dsBytes := map[*counters][]int64{}
	for _, it := range c.items {
		files[it.ctr]++
		if dsBytes[it.ctr] == nil {
			dsBytes[it.ctr] = make([]int64, len(c.tiers))
		}
		dsBytes[it.ctr][it.tier.index] += it.bytes.Load()
	}
	// Dormant files count as their records say; each has its index and
	// no item in memory, and the count of them is asleep.
	for hk, d := range c.dormant.all() {
		files[d.ctr]++
		if dsBytes[d.ctr] == nil {
			dsBytes[d.ctr] = make([]int64, len(c.tiers))
		}
		dsBytes[d.ctr][d.tier.index] += d.bytes
		used[d.tier] += d.bytes
		_, meta := filePaths(d.tier.Dir, hex.EncodeToString(hk[:]), d.gen)
		if m, err := readIndex(meta); err != nil {
			t.Errorf("dormant %x: %v", hk, err)
		} else if _, ok := c.items[itemKey(m.Dataset, cmp.Or(m.ID, m.Name))]; ok {
			t.Errorf("dormant %x (%s) also has an item in memory", hk, m.Name)
		}
	}
	if got := c.asleep.Load(); got != int64(c.dormant.len()) {
		t.Errorf("asleep counts %d, %d dormant records", got, c.dormant.len())
	}
	for name, ct := range c.perDS {
		if got := ct.files.Load(); got != files[ct] {
			t.Errorf("dataset %s counts %d files, the map holds %d", name, got, files[ct])
		}
		for i, tr := range c.tiers {
			var want int64
			if dsBytes[ct] != nil {
				want = dsBytes[ct][i]
			}
			if got := ct.tierBytes[i].Load(); got != want {
				t.Errorf("dataset %s counts %d bytes in tier %s, its items hold %d", name, got, tr.Name, want)
			}
		}
	}
	c.mu.Unlock()
	for _, tr := range c.tiers {
		if got := tr.used.Load(); got != used[tr] {
			t.Errorf("tier %s reports %d bytes, its items hold %d", tr.Name, got, used[tr])
		}
	}
	o := c.env.files
	o.mu.Lock()
	n := o.order.Len()
	var order []*Item
	for e := o.order.Front(); e != nil; e = e.Next() {
		order = append(order, e.Value.(*Item))
	}
	o.mu.Unlock()
	if n > o.max {
		t.Errorf("%d files in the open-file order, bound %d", n, o.max)
	}
	for _, it := range order {
		it.mu.Lock()
		if it.file == nil {
			t.Errorf("item %s is in the open-file order with no open file", it.name)
		}
		it.mu.Unlock()
	}
}

// recorder is a reporter that keeps what it is told.
type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) { r.Errorf(format, args...) }

// TestCheckInvariantsCatchesDrift: each invariant the checks guard, broken
// on purpose, is reported (a check that cannot fail checks nothing).
func TestCheckInvariantsCatchesDrift(t *testing.T) {
	root := t.TempDir()
	cachetest.WriteRandom(t, filepath.Join(root, "f"), 3*cachetest.Block+5, 1)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	readAll(t, c, p, "f")
	checkInvariants(t, c) // sound before
	it := cachedItem(t, c, p, "f")
	for _, tc := range []struct {
		name         string
		break_, mend func()
		want         string
	}{
		{"tier bytes", func() { c.tiers[0].used.Add(1) }, func() { c.tiers[0].used.Add(-1) }, "reports"},
		{"present count", func() { it.presentCount++ }, func() { it.presentCount-- }, "presentCount"},
		{"item bytes", func() { it.bytes.Add(7); c.tiers[0].used.Add(7) }, func() { it.bytes.Add(-7); c.tiers[0].used.Add(-7) }, "present blocks hold"},
		{"removed in the map", func() { it.removed = true }, func() { it.removed = false }, "removed"},
		{"dataset files", func() { it.ctr.files.Add(1) }, func() { it.ctr.files.Add(-1) }, "counts 2 files"},
		{"dataset bytes", func() { it.ctr.tierBytes[0].Add(3) }, func() { it.ctr.tierBytes[0].Add(-3) }, "bytes in tier"},
		{"verified, not present", func() { it.present[1] = false }, func() { it.present[1] = true }, "verified but not present"},
		{"checksum", func() { it.sums[0]++ }, func() { it.sums[0]-- }, "checksum"},
	} {
		tc.break_()
		var r recorder
		checkInvariants(&r, c)
		tc.mend()
		if !strings.Contains(strings.Join(r.errs, "\n"), tc.want) {
			t.Errorf("%s broken: checks reported %q, want a report containing %q", tc.name, r.errs, tc.want)
		}
	}
	checkInvariants(t, c) // sound after
}

// cachedItem returns the cached item of name of dataset "ds" served from
// src (known by inode for a POSIX source).
func cachedItem(t *testing.T, c *Cache, src source.Source, name string) *Item {
	t.Helper()
	a, err := src.Stat(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	it := c.items[itemKey("ds", itemID(name, a))]
	if it == nil {
		t.Fatalf("%s is not cached", name)
	}
	return it
}
