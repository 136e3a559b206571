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
