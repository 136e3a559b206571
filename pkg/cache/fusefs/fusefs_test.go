package fusefs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
	"github.com/hanwen/go-fuse/v2/posixtest"
	"k8s.io/klog/v2"
)

func newTestCache(t *testing.T, dir string, quota int64) *cache.Cache {
	t.Helper()
	c, err := cache.New(cache.Options{Tiers: []cache.TierOptions{{Name: "disk", Dir: dir, Quota: quota}}, BlockSize: cachetest.Block})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testMount is how mountTest mounts: go-fuse's server, or a session.
var testMount = Mount

// mountTest serves src through c at a temporary directory (the dataset key
// is opts.Name, "ds" if empty), unmounted when the test ends.
func mountTest(t *testing.T, src source.Source, c *cache.Cache, opts Options) (*FS, string) {
	t.Helper()
	cachetest.RequireFUSE(t)
	mnt := t.TempDir()
	if opts.Name == "" {
		opts.Name = "ds"
	}
	f, err := testMount(mnt, c.Dataset(opts.Name, src), opts)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	cachetest.UnmountAtCleanup(t, mnt, f.Unmount)
	return f, mnt
}

func TestFSReadOnlyIsAFileSystem(t *testing.T) {
	root := t.TempDir()
	files := cachetest.MakeTree(t, root)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	for _, mode := range []Options{
		{ReadOnly: true, MetaCache: time.Hour},
		{ReadOnly: true, MetaCache: time.Hour, Passthrough: true},
		{ReadOnly: true, MetaCache: time.Hour, SmallFiles: true},
	} {
		t.Run(fmt.Sprintf("passthrough=%t,smallFiles=%t", mode.Passthrough, mode.SmallFiles), func(t *testing.T) {
			_, mnt := mountTest(t, p, c, mode)
			if err := fstest.TestFS(os.DirFS(mnt), files...); err != nil {
				t.Fatal(err)
			}
			for _, f := range files {
				got, err := os.ReadFile(filepath.Join(mnt, f))
				want, _ := os.ReadFile(filepath.Join(root, f))
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s through the mount differs (err %v)", f, err)
				}
			}
			if l, err := os.Readlink(filepath.Join(mnt, "link")); err != nil || l != "big.bin" {
				t.Fatalf("readlink = %q, %v", l, err)
			}
			err := os.WriteFile(filepath.Join(mnt, "new"), []byte("x"), 0o644)
			if !errors.Is(err, syscall.EROFS) {
				t.Fatalf("write into a read-only dataset: %v, want EROFS", err)
			}
		})
	}
}

// TestPassthroughTakesEffect: a file of a POSIX source not cached yet is
// read by the kernel from the source's own file (passthrough), cached in
// the background once closed, and its next open hands the cached copy to
// the kernel; no READ reaches the daemon on either path.
func TestPassthroughTakesEffect(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 3*cachetest.Block+5, 7)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	fsys, mnt := mountTest(t, p, c, Options{ReadOnly: true, MetaCache: time.Hour, Passthrough: true})
	if got, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("cold read: %v", err)
	}
	if n := fsys.SourcePassthrough.Load(); n != 1 {
		t.Fatalf("%d opens read the source's file in passthrough, want 1", n)
	}
	if n := fsys.Reads.Load(); n != 0 {
		t.Fatalf("%d READ requests reached the daemon on the cold path, want 0", n)
	}
	// The file is cached after its release (RELEASE arrives after
	// close(2) returned).
	ds := c.Dataset("ds", p)
	for deadline := time.Now().Add(5 * time.Second); ds.Stats().SourceBytes < int64(len(want)) || c.Filling() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("5s after close, %d of %d bytes were cached (%d files filling)", ds.Stats().SourceBytes, len(want), c.Filling())
		}
	}
	cf := ds.CompleteFile("f", statAttr(t, p, "f"))
	if cf == nil {
		t.Fatal("the file is not complete in the cache after the fill")
	}
	cf.Close()
	// Drop the kernel's page cache of the file so the next read must go
	// somewhere: to the backing file (passthrough) or to the daemon.
	cachetest.DropPageCache(t, filepath.Join(mnt, "f"))
	before := fsys.Passthrough.Load()
	f, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	f.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("warm read: %v", err)
	}
	if fsys.Passthrough.Load() == before {
		t.Fatal("the complete file was not opened with passthrough")
	}
	if n := fsys.SourcePassthrough.Load(); n != 1 {
		t.Fatalf("the warm open read the source's file, not the cache's (%d source opens)", n)
	}
	if n := fsys.Reads.Load(); n != 0 {
		t.Fatalf("%d READ requests reached the daemon through a passthrough file, want 0", n)
	}
	if d := ds.Stats().SourceBytes; d != int64(len(want)) {
		t.Fatalf("%d bytes read from the source, want %d (the fill only)", d, len(want))
	}
}

// TestSourcePassthroughChecksTheVersion: a file replaced in the source
// after the kernel looked it up is not handed to the kernel as the
// source's file (the daemon, which checks versions, serves the open).
func TestSourcePassthroughChecksTheVersion(t *testing.T) {
	root := t.TempDir()
	cachetest.WriteRandom(t, filepath.Join(root, "f"), cachetest.Block, 1)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	fsys, mnt := mountTest(t, p, c, Options{ReadOnly: true, MetaCache: time.Hour, Passthrough: true})
	if _, err := os.Stat(filepath.Join(mnt, "f")); err != nil {
		t.Fatal(err)
	}
	cachetest.WriteRandom(t, filepath.Join(root, "f.new"), cachetest.Block, 2)
	if err := os.Rename(filepath.Join(root, "f.new"), filepath.Join(root, "f")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil {
		t.Fatal(err)
	}
	if n := fsys.SourcePassthrough.Load(); n != 0 {
		t.Fatalf("a replaced file was opened in passthrough as the source's file (%d opens)", n)
	}
}

// statAttr is the source's attributes of name.
func statAttr(t *testing.T, src source.Source, name string) source.Attr {
	t.Helper()
	a, err := src.Stat(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestFSReadWrite(t *testing.T) {
	root := t.TempDir()
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	opts := Options{MetaCache: time.Second}
	_, mnt := mountTest(t, p, c, opts)
	_, mnt2 := mountTest(t, p, c, Options{Name: "ds", MetaCache: 0})

	// go-fuse's POSIX cases that apply to a write-through dataset without
	// hard links, xattrs, locks or open-unlinked files.
	for _, name := range []string{
		"FileBasic", "TruncateFile", "TruncateNoFile", "FdLeak", "MkdirRmdir",
		"RenameOverwriteDestNoExist", "RenameOverwriteDestExist", "ReadDirBasic",
		"ReadDirConsistency", "AppendWrite", "ParallelFileOpen", "DirectIO", "FileLarge",
	} {
		fn := posixtest.All[name]
		if fn == nil {
			t.Fatalf("posixtest has no case %s", name)
		}
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(mnt, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			fn(t, dir)
		})
	}

	// Write, read back through a second mount, overwrite, rename, unlink.
	data := bytes.Repeat([]byte("cistern"), 100_000)
	if err := os.WriteFile(filepath.Join(mnt, "out.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt2, "out.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("second mount reads %d bytes, %v", len(got), err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "out.bin")); !bytes.Equal(got, data) {
		t.Fatal("the write did not reach the source")
	}
	data2 := []byte("rewritten")
	if err := os.WriteFile(filepath.Join(mnt, "out.bin"), data2, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt2, "out.bin")); err != nil || !bytes.Equal(got, data2) {
		t.Fatalf("after overwrite the second mount reads %q, %v", got, err)
	}
	if err := os.Rename(filepath.Join(mnt, "out.bin"), filepath.Join(mnt, "moved.bin")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "moved.bin")); err != nil {
		t.Fatalf("rename did not reach the source: %v", err)
	}
	if err := os.Remove(filepath.Join(mnt, "moved.bin")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "moved.bin")); !os.IsNotExist(err) {
		t.Fatalf("unlink did not reach the source: %v", err)
	}
}

// TestOpenWhileCachedHandleOpen: a file that becomes complete while a
// handle reading it through the page cache is still open opens again
// without error (the kernel answers EIO to a passthrough open of an inode
// open in cached mode, so the second open must not ask for passthrough).
func TestOpenWhileCachedHandleOpen(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 2*cachetest.Block+3, 11)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	// Served by the daemon while cold: a source the kernel cannot read.
	fsys, mnt := mountTest(t, cachetest.Opaque{Source: p}, c, Options{ReadOnly: true, MetaCache: time.Hour, Passthrough: true})
	first, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if got, err := io.ReadAll(first); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("cold read: %v", err) // the file is complete in the cache now
	}
	for i := range 3 {
		got, err := os.ReadFile(filepath.Join(mnt, "f"))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("open %d while a cached handle is open: %v", i, err)
		}
	}
	if n := fsys.Passthrough.Load(); n != 0 {
		t.Errorf("%d passthrough opens while a cached handle was open", n)
	}
}

// TestChangedFileIsReadAnew: a read-only mount whose attributes the kernel
// revalidates (metacache 0) reads a file rewritten in the source anew even
// when it keeps its size and modification time: the fingerprint of a POSIX
// file includes its change time and inode number.
func TestChangedFileIsReadAnew(t *testing.T) {
	root := t.TempDir()
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	_, mnt := mountTest(t, p, c, Options{ReadOnly: true, MetaCache: 0})
	name := filepath.Join(root, "f")
	v1 := cachetest.WriteRandom(t, name, 2*cachetest.Block, 31)
	if got, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("first read: %v", err)
	}
	st, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	v2 := cachetest.WriteRandom(t, name, len(v1), 32)
	if err := os.Chtimes(name, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("a version of the same size and mtime: read %d bytes, %v; the old version was served", len(got), err)
	}
}

// TestLookupRefreshesAttributes: when the kernel's entry for a file
// expires it looks the file up again and takes the attributes of the reply
// (it sends no GETATTR); the file system must read with those too. It threw
// them away and read with the old size and version.
func TestLookupRefreshesAttributes(t *testing.T) {
	root := t.TempDir()
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	const metacache = 100 * time.Millisecond
	_, mnt := mountTest(t, p, c, Options{ReadOnly: true, MetaCache: metacache})
	name := filepath.Join(root, "f")
	v1 := cachetest.WriteRandom(t, name, 2*cachetest.Block, 33)
	if got, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("first read: %v", err)
	}
	v2 := cachetest.WriteRandom(t, name, 3*cachetest.Block+5, 34)
	// The behaviour under test is what happens once the kernel's cached
	// entry has expired: wait out its lifetime.
	time.Sleep(metacache + 50*time.Millisecond)
	if got, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("after the entry expired: read %d bytes, %v; want the new version (%d bytes)", len(got), err, len(v2))
	}
}

// TestInodeNumbersNeverCollide: a file keeps its inode number through a
// rename and a new file at its old name gets another, so an open handle of
// the renamed file keeps reading and writing it. Numbers were a hash of
// the path: after "mv a b" and a new "a", the kernel merged the new "a"
// into the inode of b and the handle of b read a's bytes.
func TestInodeNumbersNeverCollide(t *testing.T) {
	root := t.TempDir()
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	table := filepath.Join(t.TempDir(), "inodes")
	_, mnt := mountTest(t, p, c, Options{MetaCache: 0, InodeTable: table})
	if err := os.WriteFile(filepath.Join(mnt, "a"), []byte("first a"), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := os.OpenFile(filepath.Join(mnt, "a"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := os.Rename(filepath.Join(mnt, "a"), filepath.Join(mnt, "b")); err != nil {
		t.Fatal(err)
	}
	// A new "a" arrives behind the mount's back (another node, say).
	if err := os.WriteFile(filepath.Join(root, "a"), []byte("second a"), 0o644); err != nil {
		t.Fatal(err)
	}
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(filepath.Join(mnt, "a"), &sa); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(filepath.Join(mnt, "b"), &sb); err != nil {
		t.Fatal(err)
	}
	if sa.Ino == sb.Ino {
		t.Fatalf("the new a and the renamed b share inode %d", sa.Ino)
	}
	buf := make([]byte, 64)
	n, err := h.ReadAt(buf, 0)
	if (err != nil && err != io.EOF) || string(buf[:n]) != "first a" {
		t.Fatalf("the handle of the renamed file reads %q (%v), want %q", buf[:n], err, "first a")
	}
	if _, err := h.WriteAt([]byte("FIRST"), 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "b")); string(got) != "FIRST a" {
		t.Errorf("b in the source is %q after a write through its handle", got)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "a")); string(got) != "second a" {
		t.Errorf("the new a in the source is %q: the write went to the wrong file", got)
	}
	// The numbers are kept: a table reopened gives them again.
	tab, err := openInodes(table, klog.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tab.close()
	stA, _ := p.Stat(context.Background(), "a")
	if got := tab.number("a", stA); got != sa.Ino {
		t.Errorf("reopened table numbers a %d, the mount showed %d", got, sa.Ino)
	}
}

// TestHiddenRootNames: Cistern's own tree at a dataset's root (.cistern:
// volume records, archives, trash of deleted volumes) is invisible
// through the mount - a shared volume of the root showed it - and cannot
// be created or renamed into; the same name deeper down is an ordinary
// name.
func TestHiddenRootNames(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{".cistern/trash/old-volume", "team-a/.cistern"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	_, mnt := mountTest(t, p, c, Options{MetaCache: 0, Hidden: []string{".cistern"}})
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == ".cistern" {
			t.Error("the root lists .cistern")
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, ".cistern/trash")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat of .cistern/trash through the mount: %v, want not found", err)
	}
	if err := os.Mkdir(filepath.Join(mnt, ".cistern"), 0o755); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("mkdir .cistern: %v, want permission denied", err)
	}
	if err := os.Rename(filepath.Join(mnt, "team-a"), filepath.Join(mnt, ".cistern")); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("rename onto .cistern: %v, want permission denied", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "team-a/.cistern")); err != nil {
		t.Errorf("a .cistern below the root is hidden too: %v", err)
	}
}

// TestStatfsIsTheSource: the mount of a POSIX dataset reports the source's
// own file-system figures (NodeGetVolumeStats reads them); it reported a
// constant 1 PiB free and nothing used.
func TestStatfsIsTheSource(t *testing.T) {
	root := t.TempDir()
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	_, mnt := mountTest(t, p, c, Options{ReadOnly: true, MetaCache: time.Hour})
	var want, got syscall.Statfs_t
	if err := syscall.Statfs(root, &want); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Statfs(mnt, &got); err != nil {
		t.Fatal(err)
	}
	if got.Blocks != want.Blocks || got.Bsize != want.Bsize || got.Files != want.Files {
		t.Errorf("the mount reports %d blocks of %d, %d inodes; the source has %d of %d, %d", got.Blocks, got.Bsize, got.Files, want.Blocks, want.Bsize, want.Files)
	}
	if used := got.Blocks - got.Bfree; want.Blocks-want.Bfree > 0 && used == 0 {
		t.Error("the mount reports nothing used")
	}
}

// gatedSource holds every ReadAt until want of them wait at once (or 5s
// pass), and records the most that waited at once.
type gatedSource struct {
	source.Source
	want    int32
	waiting atomic.Int32
	peak    atomic.Int32
	open    chan struct{}
	once    sync.Once
}

func (g *gatedSource) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	n := g.waiting.Add(1)
	for old := g.peak.Load(); n > old && !g.peak.CompareAndSwap(old, n); old = g.peak.Load() {
	}
	if n >= g.want {
		g.once.Do(func() { close(g.open) })
	}
	select {
	case <-g.open:
	case <-time.After(5 * time.Second):
	}
	g.waiting.Add(-1)
	return g.Source.ReadAt(ctx, name, p, off)
}

// TestManyColdReadersReachTheDaemon: 32 readers of 32 cold files served
// by the daemon all have their READ at the daemon at once. The kernel
// sends read-ahead READs in the background, and caps them per mount at the
// max_background the daemon negotiated (go-fuse's default, 12, made a
// hundred readers waiting on a remote store queue in the kernel).
func TestManyColdReadersReachTheDaemon(t *testing.T) {
	const readers = 32
	root := t.TempDir()
	for i := range readers {
		cachetest.WriteRandom(t, filepath.Join(root, fmt.Sprintf("f%d", i)), 64<<10, uint64(i))
	}
	p, _ := posix.New(root)
	src := &gatedSource{Source: cachetest.Opaque{Source: p}, want: readers, open: make(chan struct{})}
	// Room for every reader's fetch in the engine: what is measured is
	// what the kernel lets through.
	c, err := cache.New(cache.Options{Tiers: []cache.TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}},
		BlockSize: cachetest.Block, MaxFetchBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, mnt := mountTest(t, src, c, Options{ReadOnly: true, MetaCache: time.Hour, Passthrough: true})
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for i := range readers {
		wg.Go(func() {
			if _, err := os.ReadFile(filepath.Join(mnt, fmt.Sprintf("f%d", i))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := src.peak.Load(); got < readers {
		t.Fatalf("at most %d of %d readers' source reads were in flight at once", got, readers)
	}
}
