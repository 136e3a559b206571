package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source"
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
	data, _ := it.pathsLocked()
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

// gatedSource fails every read of one name, once the gate opens, and says
// when the first such read has started.
type gatedSource struct {
	source.Source
	name    string
	started chan struct{}
	once    sync.Once
	gate    chan struct{}
}

func (s *gatedSource) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	if name == s.name {
		s.once.Do(func() { close(s.started) })
		<-s.gate
		return 0, syscall.EIO
	}
	return s.Source.ReadAt(ctx, name, p, off)
}

// TestJoinedFetchUnderAnotherName: a reader that joins a block's fetch
// started under another name of the same file (a hard link, or a name
// renamed within one tick of the clock that stamps ctime) does not inherit
// that fetch's failure: it fetches under its own name. It used to get the
// other name's error (seen as "open f: no such file or directory" for a
// reader of the renamed file).
func TestJoinedFetchUnderAnotherName(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 2*cachetest.Block, 63)
	if err := os.Link(filepath.Join(root, "f"), filepath.Join(root, "g")); err != nil {
		t.Fatal(err)
	}
	p, _ := posix.New(root)
	src := &gatedSource{Source: p, name: "f", started: make(chan struct{}), gate: make(chan struct{})}
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	ds := c.Dataset("ds", src)
	ctx := context.Background()
	af, _ := src.Stat(ctx, "f")
	ag, _ := src.Stat(ctx, "g")
	errF := make(chan error, 1)
	go func() {
		_, err := ds.ReadAt(ctx, "f", af, make([]byte, 100), 0)
		errF <- err
	}()
	<-src.started
	got := make(chan error, 1)
	buf := make([]byte, 100)
	go func() {
		_, err := ds.ReadAt(ctx, "g", ag, buf, 0)
		got <- err
	}()
	// Let g's reader join f's fetch, then fail that fetch.
	time.Sleep(50 * time.Millisecond)
	close(src.gate)
	if err := <-errF; !errors.Is(err, syscall.EIO) {
		t.Errorf("the reader of f: %v, want its own fetch's EIO", err)
	}
	if err := <-got; err != nil || !bytes.Equal(buf, want[:100]) {
		t.Fatalf("the reader of g that joined f's fetch: %v (bytes equal: %t)", err, bytes.Equal(buf, want[:100]))
	}
}

// stallSource reads the first block of name at once, then holds the answer
// until gate opens: a fetch of the version it read, still in flight.
type stallSource struct {
	source.Source
	name    string
	started chan struct{}
	gate    chan struct{}
	once    sync.Once
}

func (s *stallSource) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	n, err := s.Source.ReadAt(ctx, name, p, off)
	first := false
	if name == s.name && off == 0 {
		s.once.Do(func() { first = true })
	}
	if first {
		close(s.started)
		<-s.gate
	}
	return n, err
}

// TestNewVersionDoesNotJoinAnOldFetch: a reader of a file's new version
// does not take the bytes of a fetch of the old version still in flight.
// It joined it (the reset kept the fetches in flight) and read the old
// version's bytes.
func TestNewVersionDoesNotJoinAnOldFetch(t *testing.T) {
	root := t.TempDir()
	name := filepath.Join(root, "f")
	cachetest.WriteRandom(t, name, 2*cachetest.Block, 71)
	p, _ := posix.New(root)
	src := &stallSource{Source: p, name: "f", started: make(chan struct{}), gate: make(chan struct{})}
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	ds := c.Dataset("ds", src)
	ctx := context.Background()
	a1, _ := src.Stat(ctx, "f")
	old := make(chan error, 1)
	go func() {
		_, err := ds.ReadAt(ctx, "f", a1, make([]byte, 100), 0)
		old <- err
	}()
	<-src.started
	v2 := cachetest.WriteRandom(t, name, 2*cachetest.Block, 72)
	if err := os.Chtimes(name, time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	a2, _ := src.Stat(ctx, "f")
	if a2.Fingerprint() == a1.Fingerprint() {
		t.Fatal("the rewrite kept the fingerprint")
	}
	got := make(chan error, 1)
	buf := make([]byte, 100)
	go func() {
		_, err := ds.ReadAt(ctx, "f", a2, buf, 0)
		got <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it join the old fetch, were it to
	close(src.gate)
	if err := <-old; err != nil {
		t.Errorf("the reader of the old version: %v", err)
	}
	if err := <-got; err != nil || !bytes.Equal(buf, v2[:100]) {
		t.Fatalf("the reader of the new version: %v; got the new version's bytes: %t", err, bytes.Equal(buf, v2[:100]))
	}
	settle(t, c)
	checkInvariants(t, c)
}
