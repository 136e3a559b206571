package cache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/fusefs"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// TestSequentialReadFetchesOnce: a cold sequential read through the mount,
// with the kernel's and the cache's read-ahead both at work, reads every
// byte from the source exactly once.
func TestSequentialReadFetchesOnce(t *testing.T) {
	root := t.TempDir()
	size := 12*(4<<20) + 21
	cachetest.WriteRandom(t, filepath.Join(root, "f"), size, 8)
	p, _ := posix.New(root)
	src := newCounting(p)
	c, err := New(Options{Tiers: []TierOptions{{Name: "mem", Dir: t.TempDir(), Quota: 256 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mnt := mountFS(t, c.Dataset("ds", src), fusefs.Options{ReadOnly: true, MetaCache: time.Hour, Passthrough: true})
	if _, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil {
		t.Fatal(err)
	}
	for k, n := range src.reads {
		if n != 1 {
			t.Errorf("block %s read %d times", k, n)
		}
	}
	if s := c.Stats(); s.SourceBytes != int64(size) {
		t.Fatalf("source bytes = %d, want %d", s.SourceBytes, size)
	}
	checkInvariants(t, c)
}

// TestShortSequentialReadStaysShort: a reader of the first 16 MiB of a
// 64 MiB file does not pull the whole file. Served by the daemon, the
// read-ahead window grows block by block and counts from the reader's
// position (it once counted only missing blocks and ran ahead of the
// reader to the end of the file); read from a POSIX source's own file
// (passthrough), the fill after close copies the blocks the reader read.
func TestShortSequentialReadStaysShort(t *testing.T) {
	for _, tc := range []struct {
		name string
		wrap func(source.Source) source.Source
	}{
		{"read-ahead", func(s source.Source) source.Source { return cachetest.Opaque{Source: s} }},
		{"fill", func(s source.Source) source.Source { return s }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			cachetest.WriteRandom(t, filepath.Join(root, "f"), 64<<20, 9)
			// Read from the disk, not the page cache the writer
			// left: what the node's page cache holds of a
			// source's file is what a fill copies.
			cachetest.DropPageCache(t, filepath.Join(root, "f"))
			p, _ := posix.New(root)
			c, err := New(Options{Tiers: []TierOptions{{Name: "mem", Dir: t.TempDir(), Quota: 256 << 20}}, BlockSize: 4 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			mnt := mountFS(t, c.Dataset("ds", tc.wrap(p)), fusefs.Options{ReadOnly: true, MetaCache: time.Hour, Passthrough: true})
			f, err := os.Open(filepath.Join(mnt, "f"))
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			for off := int64(0); off < 16<<20; off += 1 << 20 {
				if _, err := f.ReadAt(buf, off); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()
			// Let read-ahead fetches in flight, or the fill after
			// close, land.
			for last := int64(-1); c.Stats().SourceBytes != last || c.Filling() > 0; time.Sleep(300 * time.Millisecond) {
				last = c.Stats().SourceBytes
			}
			// 16 MiB read + at most one read-ahead window (4
			// blocks) + the kernel's own read-ahead into the next
			// block.
			if got := c.Stats().SourceBytes; got > 36<<20 || got < 16<<20 {
				t.Errorf("reading 16 MiB cached %d MiB from the source, want 16 to 36", got>>20)
			}
			checkInvariants(t, c)
		})
	}
}

// blockingSource holds every read past the first block until release is
// closed, and counts the held reads.
type blockingSource struct {
	source.Source
	release  chan struct{}
	inflight atomic.Int32
	peak     atomic.Int32
}

func (s *blockingSource) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	if off < cachetest.Block {
		return s.Source.ReadAt(ctx, name, p, off)
	}
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for old := s.peak.Load(); n > old && !s.peak.CompareAndSwap(old, n); old = s.peak.Load() {
	}
	select {
	case <-s.release:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return s.Source.ReadAt(ctx, name, p, off)
}

// TestReadAheadTakesHalfTheRoom: however many sequential readers ask for
// read-ahead, speculative fetches hold at most half of the fetch slots and
// half of the bytes in flight, so a reader's own block always finds room.
func TestReadAheadTakesHalfTheRoom(t *testing.T) {
	for _, tc := range []struct {
		name       string
		slots      int
		bytes      int64
		wantAtMost int32
	}{
		{"slots", 8, 0, 4},                    // 16 blocks' bytes: the slots bind
		{"bytes", 64, 4 * cachetest.Block, 2}, // 4 blocks' bytes: the bytes bind
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for i := range 8 {
				cachetest.WriteRandom(t, filepath.Join(root, fmt.Sprintf("f%d", i)), 8*cachetest.Block, uint64(i))
			}
			p, _ := posix.New(root)
			src := &blockingSource{Source: p, release: make(chan struct{})}
			c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}}, BlockSize: cachetest.Block,
				MaxFetches: tc.slots, MaxFetchBytes: tc.bytes, ReadAhead: 4})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			defer close(src.release)
			ctx := context.Background()
			// Each reader's first block is served at once; its
			// read-ahead then asks for the next blocks, which the
			// source holds.
			for i := range 8 {
				name := fmt.Sprintf("f%d", i)
				a, err := p.Stat(ctx, name)
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 4096)
				if _, err := c.Dataset("ds", src).ReadAt(ctx, name, a, buf, 0); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(200 * time.Millisecond) // read-ahead goroutines take their room
			if got := src.peak.Load(); got == 0 || got > tc.wantAtMost {
				t.Errorf("%d speculative fetches in flight at once, want 1 to %d", got, tc.wantAtMost)
			}
		})
	}
}

// TestReadAheadSurvivesReorderedReads: the kernel's read-ahead sends
// several READs of a sequential reader at once and they arrive in any
// order; the read-ahead window still grows to its full size (it once
// restarted at every READ that did not begin exactly where the last ended,
// and a single reader of a cold object got a third of the link).
func TestReadAheadSurvivesReorderedReads(t *testing.T) {
	root := t.TempDir()
	const bs = cachetest.Block
	cachetest.WriteRandom(t, filepath.Join(root, "f"), 16*bs, 3)
	p, _ := posix.New(root)
	c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}}, BlockSize: bs, ReadAhead: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	a, err := p.Stat(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	ds := c.Dataset("ds", p)
	buf := make([]byte, bs/4)
	for b := int64(0); b < 4; b++ {
		for _, q := range []int64{0, 2, 1, 3} { // quarters, two of them swapped
			if _, err := ds.ReadAt(ctx, "f", a, buf, b*bs+q*bs/4); err != nil {
				t.Fatal(err)
			}
		}
	}
	for last := int64(-1); c.Stats().SourceBytes != last; time.Sleep(200 * time.Millisecond) {
		last = c.Stats().SourceBytes
	}
	// Blocks 0-3 read, and a window of 4 ahead of the reader: 8 blocks.
	if got := c.Stats().SourceBytes / bs; got < 8 {
		t.Errorf("%d blocks fetched after reading 4 in reordered pieces, want 8 (the read-ahead window shrank)", got)
	}
}

// TestReadAheadIsQueuedOnce: a block waiting for read-ahead room is asked
// for once, however many READs of the reader arrive meanwhile (each READ
// once queued another read-ahead of it, and the copies held the room the
// next blocks needed: one reader of a cold object got a fifth of the link).
func TestReadAheadIsQueuedOnce(t *testing.T) {
	root := t.TempDir()
	const bs = cachetest.Block
	cachetest.WriteRandom(t, filepath.Join(root, "f"), 16*bs, 5)
	cachetest.WriteRandom(t, filepath.Join(root, "g"), 16*bs, 6)
	p, _ := posix.New(root)
	src := &blockingSource{Source: p, release: make(chan struct{})}
	// One read-ahead slot.
	c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}}, BlockSize: bs, MaxFetches: 2, ReadAhead: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer close(src.release)
	ctx := context.Background()
	ds := c.Dataset("ds", src)
	buf := make([]byte, bs/64)
	read := func(name string, n int) {
		a, err := p.Stat(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n { // READs within block 0
			if _, err := ds.ReadAt(ctx, name, a, buf, int64(i*len(buf))); err != nil {
				t.Fatal(err)
			}
		}
	}
	// g's read-ahead of block 1 holds the only slot (the source holds it).
	read("g", 1)
	time.Sleep(100 * time.Millisecond)
	before := c.env.fetch.running.Load()
	read("f", 64)
	time.Sleep(100 * time.Millisecond)
	// 64 READs within block 0 grow the window to half of ReadAhead
	// (blocks 1 and 2): one goroutine for each, however many READs.
	if n := c.env.fetch.running.Load() - before; n != 2 {
		t.Fatalf("%d read-ahead goroutines for blocks 1 and 2 of f after 64 READs of its block 0, want 2", n)
	}
}

// TestReadAheadWindowGrowsWithTheRun: a sequential reader's window doubles
// at each quarter block up to half of ReadAhead, and grows beyond that
// only as its run does (a block per block read): a reader that stops early
// pulled at most as much again as it read, one that goes on gets the whole
// window (with the window at 4 blocks, one reader of a cold object read
// at 0.80-0.86 of the link; at 8, 0.90-0.93).
func TestReadAheadWindowGrowsWithTheRun(t *testing.T) {
	root := t.TempDir()
	const bs = cachetest.Block
	cachetest.WriteRandom(t, filepath.Join(root, "f"), 64*bs, 8)
	p, _ := posix.New(root)
	c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}}, BlockSize: bs, ReadAhead: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	ds := c.Dataset("ds", p)
	a, err := p.Stat(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, bs/4)
	pos := int64(0)
	// readTo reads on from where the run stopped, in quarter blocks, and
	// returns the window.
	readTo := func(end int64) int {
		t.Helper()
		for ; pos < end; pos += int64(len(buf)) {
			if _, err := ds.ReadAt(ctx, "f", a, buf, pos); err != nil {
				t.Fatal(err)
			}
		}
		it := cachedItem(t, c, p, "f")
		it.mu.Lock()
		defer it.mu.Unlock()
		return it.raWindow
	}
	for _, step := range []struct {
		end  int64
		want int
	}{
		{bs / 4, 1},  // the first read
		{bs, 4},      // quarter blocks: 1, 2, 4, then half of ReadAhead
		{6 * bs, 6},  // a block per block of the run
		{20 * bs, 8}, // ReadAhead
	} {
		if got := readTo(step.end); got != step.want {
			t.Errorf("window after %d KiB of a run = %d blocks, want %d", step.end>>10, got, step.want)
		}
	}
	settle(t, c)
}
