package cache

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSequentialReadFetchesOnce: a cold sequential read through the mount,
// with the kernel's and the cache's read-ahead both at work, reads every
// byte from the source exactly once.
func TestSequentialReadFetchesOnce(t *testing.T) {
	root := t.TempDir()
	size := 12*(4<<20) + 21
	writeRandom(t, filepath.Join(root, "f"), size, 8)
	p, _ := NewPosix(root)
	src := newCounting(p)
	c, err := New(Options{Tiers: []TierOptions{{Name: "mem", Dir: t.TempDir(), Quota: 256 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, mnt := mountTest(t, src, c, FSOptions{ReadOnly: true, MetaCache: time.Hour, Passthrough: true})
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
}

// TestShortSequentialReadStaysShort: a reader of the first 16 MiB of a
// 64 MiB file does not pull the whole file: the read-ahead window grows
// block by block and counts from the reader's position (it once counted
// only missing blocks and ran ahead of the reader to the end of the file).
func TestShortSequentialReadStaysShort(t *testing.T) {
	root := t.TempDir()
	writeRandom(t, filepath.Join(root, "f"), 64<<20, 9)
	p, _ := NewPosix(root)
	c, err := New(Options{Tiers: []TierOptions{{Name: "mem", Dir: t.TempDir(), Quota: 256 << 20}}, BlockSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, mnt := mountTest(t, p, c, FSOptions{ReadOnly: true, MetaCache: time.Hour, Passthrough: true})
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
	// Let read-ahead fetches in flight land.
	for last := int64(-1); c.Stats().SourceBytes != last; time.Sleep(300 * time.Millisecond) {
		last = c.Stats().SourceBytes
	}
	// 16 MiB read + at most one read-ahead window (4 blocks) + the
	// kernel's own read-ahead into the next block.
	if got := c.Stats().SourceBytes; got > 36<<20 {
		t.Errorf("reading 16 MiB fetched %d MiB from the source, want at most 36", got>>20)
	}
}
