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
		{"read-ahead", func(s source.Source) source.Source { return opaque{s} }},
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

// opaque hides a POSIX source's write methods: a source whose files the
// kernel cannot read itself (as an object store's), served by the daemon.
type opaque struct{ source.Source }

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

// TestReadAheadTakesAQuarterOfTheSlots: however many sequential readers
// ask for read-ahead, speculative fetches hold at most MaxFetches/4 slots,
// so a reader's own block always finds one.
func TestReadAheadTakesAQuarterOfTheSlots(t *testing.T) {
	root := t.TempDir()
	for i := range 8 {
		cachetest.WriteRandom(t, filepath.Join(root, fmt.Sprintf("f%d", i)), 8*cachetest.Block, uint64(i))
	}
	p, _ := posix.New(root)
	src := &blockingSource{Source: p, release: make(chan struct{})}
	c, err := New(Options{Tiers: []TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}}, BlockSize: cachetest.Block, MaxFetches: 8, ReadAhead: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	// Each reader's first block is served at once; its read-ahead then
	// asks for the next block, which the source holds.
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
	time.Sleep(200 * time.Millisecond) // read-ahead goroutines take their slots
	if got := src.peak.Load(); got == 0 || got > 2 {
		t.Errorf("%d speculative fetches in flight at once with MaxFetches=8, want 1 or 2", got)
	}
	close(src.release)
}
