package cache

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// countingSource wraps a real source and counts reads per (file, offset).
type countingSource struct {
	source.Source
	mu    sync.Mutex
	reads map[string]int
	total atomic.Int64
	delay time.Duration
}

func newCounting(s source.Source) *countingSource {
	return &countingSource{Source: s, reads: map[string]int{}}
}

func (s *countingSource) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	s.mu.Lock()
	s.reads[fmt.Sprintf("%s@%d", name, off)]++
	s.mu.Unlock()
	s.total.Add(1)
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	return s.Source.ReadAt(ctx, name, p, off)
}

func newTestCache(t *testing.T, dir string, quota int64) *Cache {
	t.Helper()
	c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: dir, Quota: quota}}, BlockSize: cachetest.Block})
	if err != nil {
		t.Fatal(err)
	}
	c.waitLoaded()
	return c
}

// newTestCacheNoWait is newTestCache without waiting for the index to load.
func newTestCacheNoWait(t *testing.T, dir string, quota int64) *Cache {
	t.Helper()
	c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: dir, Quota: quota}}, BlockSize: cachetest.Block})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readAll(t *testing.T, c *Cache, src source.Source, name string) []byte {
	t.Helper()
	a, err := src.Stat(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, a.Size)
	// Odd-sized reads cross block boundaries.
	for off := 0; off < len(out); off += 100_003 {
		end := min(off+100_003, len(out))
		n, err := c.Dataset("ds", src).ReadAt(context.Background(), name, a, out[off:end], int64(off))
		if n != end-off || (err != nil && end != len(out)) {
			t.Fatalf("ReadAt(%s, %d) = %d, %v", name, off, n, err)
		}
	}
	return out
}

func TestSingleFlight(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "big"), 40*cachetest.Block+123, 1)
	p, _ := posix.New(root)
	src := newCounting(p)
	src.delay = 2 * time.Millisecond // widen the race window
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, _ := src.Stat(context.Background(), "big")
			buf := make([]byte, a.Size)
			// Each reader starts somewhere else and wraps around.
			start := (int64(g) * 7 % 40) * cachetest.Block
			for i := int64(0); i < a.Size; i += 50_000 {
				off := (start + i) % a.Size
				n := min(50_000, a.Size-off)
				if _, err := c.Dataset("ds", src).ReadAt(context.Background(), "big", a, buf[off:off+n], off); err != nil && off+n != a.Size {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := readAll(t, c, src, "big"); !bytes.Equal(got, want) {
		t.Fatal("cached bytes differ from the source")
	}
	for k, n := range src.reads {
		if n != 1 {
			t.Errorf("block %s read %d times from the source, want 1", k, n)
		}
	}
	if len(src.reads) != 41 {
		t.Errorf("source served %d blocks, want 41", len(src.reads))
	}
	checkInvariants(t, c)
}

func TestRestartKeepsCacheWarm(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "a/b/file"), 10*cachetest.Block+7, 2)
	p, _ := posix.New(root)
	c := newTestCache(t, dir, 1<<30)
	readAll(t, c, p, "a/b/file")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	src := newCounting(p)
	c2 := newTestCache(t, dir, 1<<30)
	defer c2.Close()
	if got := readAll(t, c2, src, "a/b/file"); !bytes.Equal(got, want) {
		t.Fatal("bytes after restart differ")
	}
	if n := src.total.Load(); n != 0 {
		t.Fatalf("a restarted cache read the source %d times, want 0", n)
	}
	if s := c2.Stats(); s.Hits == 0 || s.TierBytes["disk"] != int64(len(want)) {
		t.Fatalf("stats after restart = %+v", s)
	}
	checkInvariants(t, c2)
}

func TestCorruptBlockIsRefetched(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 8*cachetest.Block, 3)
	p, _ := posix.New(root)
	c := newTestCache(t, dir, 1<<30)
	readAll(t, c, p, "f")
	c.Close()

	data, _ := filepath.Glob(filepath.Join(dir, "*", "*.data"))
	if len(data) != 1 {
		t.Fatalf("data files: %v", data)
	}
	f, err := os.OpenFile(data[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	flip := int64(5*cachetest.Block + 1234)
	b := []byte{0}
	f.ReadAt(b, flip)
	b[0] ^= 0xff
	f.WriteAt(b, flip)
	f.Close()

	src := newCounting(p)
	c2 := newTestCache(t, dir, 1<<30)
	defer c2.Close()
	if got := readAll(t, c2, src, "f"); !bytes.Equal(got, want) {
		t.Fatal("a corrupt block was served")
	}
	if s := c2.Stats(); s.Corrupt != 1 {
		t.Fatalf("corrupt blocks = %d, want 1", s.Corrupt)
	}
	if n := src.reads[fmt.Sprintf("f@%d", 5*cachetest.Block)]; n != 1 || src.total.Load() != 1 {
		t.Fatalf("source reads %v, want only block 5 once", src.reads)
	}
	checkInvariants(t, c2)
}

func TestChangedSourceInvalidates(t *testing.T) {
	root := t.TempDir()
	cachetest.WriteRandom(t, filepath.Join(root, "f"), 3*cachetest.Block, 4)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	readAll(t, c, p, "f")
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 3*cachetest.Block+10, 5)
	if got := readAll(t, c, p, "f"); !bytes.Equal(got, want) {
		t.Fatal("stale bytes served after the source changed")
	}
	checkInvariants(t, c)
}

func TestEvictionHonoursWatermarks(t *testing.T) {
	root := t.TempDir()
	files := map[string][]byte{}
	for i := range 12 {
		name := fmt.Sprintf("f%02d", i)
		files[name] = cachetest.WriteRandom(t, filepath.Join(root, name), 4*cachetest.Block, uint64(10+i))
	}
	p, _ := posix.New(root)
	quota := int64(16 * cachetest.Block) // room for 4 of the 12 files
	c := newTestCache(t, t.TempDir(), quota)
	defer c.Close()
	for round := range 2 {
		for name, want := range files {
			if got := readAll(t, c, p, name); !bytes.Equal(got, want) {
				t.Fatalf("round %d: %s differs", round, name)
			}
			c.cleanTier(c.tiers[0]) // what the cleaner does on a kick
			if used := c.tiers[0].used.Load(); used > quota {
				t.Fatalf("tier holds %d bytes, over its quota %d", used, quota)
			}
		}
	}
	s := c.Stats()
	if s.Evictions == 0 {
		t.Fatal("nothing was evicted")
	}
	if s.TierBytes["disk"] > int64(float64(quota)*0.8)+4*cachetest.Block {
		t.Fatalf("tier at %d bytes after cleaning, want near the low watermark %d", s.TierBytes["disk"], int64(float64(quota)*0.8))
	}
	checkInvariants(t, c)
}

func TestFullTierReadsThrough(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 6*cachetest.Block, 6)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), cachetest.Block/2) // smaller than one block
	defer c.Close()
	for range 2 {
		if got := readAll(t, c, p, "f"); !bytes.Equal(got, want) {
			t.Fatal("read through a full tier returned wrong bytes")
		}
	}
	if s := c.Stats(); s.ReadThrough == 0 || s.TierBytes["disk"] != 0 {
		t.Fatalf("stats = %+v, want read-through and nothing stored", s)
	}
	checkInvariants(t, c)
}

// TestWarmManyBlocks warms a file of more blocks than the fetch limit (a
// warm-up that held the fetch semaphore while waiting would deadlock).
func TestWarmManyBlocks(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 70*cachetest.Block+1, 9)
	p, _ := posix.New(root)
	c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}}, BlockSize: cachetest.Block, MaxFetches: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, _ := p.Stat(context.Background(), "f")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last int64
	if err := c.Dataset("ds", p).Warm(ctx, "f", a, func(d int64) { last = max(last, d) }); err != nil {
		t.Fatal(err)
	}
	src := newCounting(p)
	if got := readAll(t, c, src, "f"); !bytes.Equal(got, want) || src.total.Load() != 0 {
		t.Fatalf("after warm-up: equal=%t, source reads %d", bytes.Equal(got, want), src.total.Load())
	}
	if last != int64(len(want)) {
		t.Fatalf("progress ended at %d, want %d", last, len(want))
	}
	checkInvariants(t, c)
}

// slowVersioned hands out the first half of every read, reports it, and
// holds the rest until release is closed.
type slowVersioned struct {
	source.Source
	release chan struct{}
}

func (s *slowVersioned) ReadAtVersion(ctx context.Context, name, _ string, p []byte, off int64, progress func(int)) (int, error) {
	half := len(p) / 2
	n, err := s.Source.ReadAt(ctx, name, p[:half], off)
	if err != nil {
		return n, err
	}
	progress(n)
	select {
	case <-s.release:
	case <-ctx.Done():
		return n, ctx.Err()
	}
	m, err := s.Source.ReadAt(ctx, name, p[half:], off+int64(half))
	return n + m, err
}

// TestReadServedAsTheBlockArrives: a reader of the beginning of a block
// gets its bytes when they arrive, not when the whole block has.
func TestReadServedAsTheBlockArrives(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 2*cachetest.Block, 5)
	p, _ := posix.New(root)
	src := &slowVersioned{Source: p, release: make(chan struct{})}
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	defer close(src.release)
	a, err := p.Stat(context.Background(), "f")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make([]byte, 4096)
	if n, err := c.Dataset("ds", src).ReadAt(ctx, "f", a, got, 0); err != nil || n != len(got) || !bytes.Equal(got, want[:4096]) {
		t.Fatalf("read of the block's first 4 KiB while its second half is held: %d, %v", n, err)
	}
}

// TestOpenFilesAreBounded: with more cached files than MaxOpenFiles the
// cache closes the least recently used and reopens on demand; concurrent
// readers always get the right bytes (a dataset of a million files must not
// run the daemon out of descriptors: with one open file per cached file it
// once failed reads with EIO at 20,000 files).
func TestOpenFilesAreBounded(t *testing.T) {
	root := t.TempDir()
	want := map[string][]byte{}
	for i := range 60 {
		name := fmt.Sprintf("f%02d", i)
		want[name] = cachetest.WriteRandom(t, filepath.Join(root, name), 3*cachetest.Block/2+i, uint64(i))
	}
	p, _ := posix.New(root)
	c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}}, BlockSize: cachetest.Block, MaxOpenFiles: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fds := func() int {
		ents, _ := os.ReadDir("/proc/self/fd")
		return len(ents)
	}
	before := fds()
	for round := range 2 { // cold, then from the cache
		var wg sync.WaitGroup
		for name, w := range want {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if got := readAll(t, c, p, name); !bytes.Equal(got, w) {
					t.Errorf("round %d: %s: wrong bytes", round, name)
				}
			}()
		}
		wg.Wait()
	}
	if open := fds() - before; open > 4+8 {
		t.Errorf("%d more descriptors open after reading 60 files with MaxOpenFiles=4", open)
	}
	checkInvariants(t, c)
}

// TestItemHashIsStable: an item's files on disk are named by the hash of
// its dataset key and identity; a daemon whose hash changed would orphan
// every file an earlier version cached.
func TestItemHashIsStable(t *testing.T) {
	if got, want := itemHash("ds", "inode:1:2"), "358851caef7e49a7e88cd3ec9bfb367c"; got != want {
		t.Fatalf("itemHash = %s, want %s (the name of files cached by earlier versions)", got, want)
	}
}

// TestRestartReadsEveryIndexNaming: item file names are computed from the
// hash and a generation number, not kept; a restart adopts the names of
// this version (<hash>-<gen>) and of an older one (<hash>), and drops an
// index whose name is neither (its files are not the item's).
func TestRestartReadsEveryIndexNaming(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rename func(base string) string // the new base name from <hash>-<gen>
		warm   bool
	}{
		{"generation", func(base string) string { return base }, true},
		{"older version", func(base string) string { return base[:strings.IndexByte(base, '-')] }, true},
		{"foreign", func(base string) string { return base[:strings.IndexByte(base, '-')] + "-zz" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, dir := t.TempDir(), t.TempDir()
			want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 3*cachetest.Block+5, 7)
			p, _ := posix.New(root)
			c := newTestCache(t, dir, 1<<30)
			readAll(t, c, p, "f")
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			metas, _ := filepath.Glob(filepath.Join(dir, "*", "*.meta"))
			if len(metas) != 1 {
				t.Fatalf("%d indexes after caching one file, want 1", len(metas))
			}
			old := strings.TrimSuffix(metas[0], ".meta")
			renamed := filepath.Join(filepath.Dir(old), tc.rename(filepath.Base(old)))
			for _, ext := range []string{".meta", ".data"} {
				if err := os.Rename(old+ext, renamed+ext); err != nil && old != renamed {
					t.Fatal(err)
				}
			}
			src := newCounting(p)
			c2 := newTestCache(t, dir, 1<<30)
			defer c2.Close()
			if got := readAll(t, c2, src, "f"); !bytes.Equal(got, want) {
				t.Fatal("bytes after restart differ")
			}
			if warm := src.total.Load() == 0; warm != tc.warm {
				t.Errorf("after a restart with the index at %s: %d source reads, want warm=%t", filepath.Base(renamed), src.total.Load(), tc.warm)
			}
			checkInvariants(t, c2)
		})
	}
}
