package cache

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// TestEvictedItemNeverClobbersItsSuccessor: an eviction takes an item out
// of the map and removes its files later; a reader arriving in between
// makes a new item of the same file. The old item's removal must not touch
// the new one's files: before files were named by generation it unlinked
// them, and once the open-file bound reopened the new item's data file,
// blocks marked present and verified were served as zeros (and passed to
// the kernel as a complete file).
func TestEvictedItemNeverClobbersItsSuccessor(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 3*cachetest.Block+7, 21)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	readAll(t, c, p, "f")
	// The first half of an eviction: out of the map, files not yet gone.
	old := cachedItem(t, c, p, "f")
	c.mu.Lock()
	delete(c.items, itemKey("ds", old.id))
	old.ctr.files.Add(-1)
	c.mu.Unlock()
	// A reader in between makes and fills a new item.
	readAll(t, c, p, "f")
	// The second half of the eviction.
	old.remove()
	cur := cachedItem(t, c, p, "f")
	if err := cur.closeFile(); err != nil { // as the open-file bound does
		t.Fatal(err)
	}
	src := newCounting(p)
	if got := readAll(t, c, src, "f"); !bytes.Equal(got, want) {
		t.Fatal("the new item served wrong bytes after the old one was removed")
	}
	a, _ := p.Stat(context.Background(), "f")
	f := c.Dataset("ds", p).CompleteFile("f", a)
	if f == nil {
		t.Fatal("the new item is not complete")
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the complete file handed to passthrough differs from the source (%v)", err)
	}
	checkInvariants(t, c)
}

// TestReopenReverifies: a data file replaced under the cache (it is
// reopened after the open-file bound closed it) is not trusted: its blocks
// are checked against their checksums again and fetched anew.
func TestReopenReverifies(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 4*cachetest.Block, 22)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	readAll(t, c, p, "f")
	it := cachedItem(t, c, p, "f")
	if err := it.closeFile(); err != nil {
		t.Fatal(err)
	}
	it.mu.Lock()
	data := it.dataPath
	it.mu.Unlock()
	// Another file of the same size, zeros, in its place.
	if err := os.Remove(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(data, make([]byte, len(want)), 0o600); err != nil {
		t.Fatal(err)
	}
	src := newCounting(p)
	if got := readAll(t, c, src, "f"); !bytes.Equal(got, want) {
		t.Fatal("blocks of a replaced data file were served")
	}
	if src.total.Load() == 0 {
		t.Error("nothing was fetched again: the replaced file was trusted")
	}
	checkInvariants(t, c)
}

// TestCachedByInode: a POSIX file is cached by its inode: the second name
// of a hard-linked file reads the blocks the first fetched (it was cached
// by path: fetched again under each name). A rename changes the file's
// ctime, which the fingerprint includes (it is what tells a rewrite that
// kept size and mtime): the renamed file reads right, fetched again.
func TestCachedByInode(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 5*cachetest.Block+3, 61)
	if err := os.Link(filepath.Join(root, "f"), filepath.Join(root, "g")); err != nil {
		t.Fatal(err)
	}
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	readAll(t, c, p, "f")
	src := newCounting(p)
	if got := readAll(t, c, src, "g"); !bytes.Equal(got, want) || src.total.Load() != 0 {
		t.Fatalf("the second name of a hard link: equal=%t, %d source reads (want 0)", bytes.Equal(got, want), src.total.Load())
	}
	if err := os.Rename(filepath.Join(root, "f"), filepath.Join(root, "h")); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, src, "h"); !bytes.Equal(got, want) {
		t.Fatal("a renamed file reads wrong bytes")
	}
	checkInvariants(t, c)
}

// TestEvictFileByInode: EvictFile drops a POSIX file's copy, known by its
// inode, at once under any of its names. It looked for a copy known by
// the path, which a POSIX file never has: a write left the old blocks in
// the cache, trusted while size and times read the same.
func TestEvictFileByInode(t *testing.T) {
	root := t.TempDir()
	cachetest.WriteRandom(t, filepath.Join(root, "f"), 3*cachetest.Block, 62)
	if err := os.Link(filepath.Join(root, "f"), filepath.Join(root, "g")); err != nil {
		t.Fatal(err)
	}
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	readAll(t, c, p, "f")
	ds := c.Dataset("ds", p)
	if got := ds.Stats().Files; got != 1 {
		t.Fatalf("%d files cached after a read, want 1", got)
	}
	a, err := p.Stat(context.Background(), "g")
	if err != nil {
		t.Fatal(err)
	}
	if n := ds.EvictFile("g", a); n != 1 {
		t.Errorf("EvictFile of the other name of a cached file dropped %d copies, want 1", n)
	}
	if got := ds.Stats().Files; got != 0 {
		t.Errorf("%d files cached after EvictFile, want 0", got)
	}
	checkInvariants(t, c)
}
