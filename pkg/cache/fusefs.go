package cache

import (
	"context"
	"errors"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"k8s.io/klog/v2"
)

// FSOptions configure how a dataset is served through FUSE.
type FSOptions struct {
	// Dataset is the cache key of the dataset (it separates the cached
	// files of datasets that share path names).
	Dataset string
	// ReadOnly mounts "ro": the kernel refuses writes with EROFS.
	ReadOnly bool
	// MetaCache is how long the kernel trusts entries and attributes.
	MetaCache time.Duration
	// SmallFiles serves a read-only dataset of many small immutable files
	// in no-open mode: OPEN and FLUSH are answered ENOSYS once and the
	// kernel stops sending them, keeping file data in its page cache.
	SmallFiles bool
	// Passthrough hands fully cached files of a read-only dataset to the
	// kernel (FUSE passthrough): reads then never reach the daemon.
	Passthrough bool
	// SpoolDir holds files being written to an object store until close
	// uploads them (anonymous files: nothing is left after a crash).
	SpoolDir string
	// Debug logs every FUSE request.
	Debug bool
}

// FS serves one dataset through the cache.
type FS struct {
	// immutable after Mount
	opts  FSOptions
	src   Source
	wsrc  WritableSource // a read-write POSIX dataset, else nil
	osrc  ObjectSource   // a read-write object-store dataset, else nil
	cache *Cache
	srv   *fuse.Server
	dir   string

	// Reads counts READ requests that reached the daemon (a passthrough
	// read never does).
	Reads       atomic.Int64
	Passthrough atomic.Int64 // opens served with passthrough
	// CachedOpen counts open handles that read through the page cache
	// (RELEASE arrives after close(2) returns: the count lags).
	CachedOpen atomic.Int64
}

// Mount serves src at dir through cache. The caller calls Unmount.
func Mount(dir string, src Source, c *Cache, opts FSOptions) (*FS, error) {
	f := &FS{opts: opts, src: src, cache: c, dir: dir}
	if !opts.ReadOnly {
		switch s := src.(type) {
		case WritableSource:
			f.wsrc = s
		case ObjectSource:
			if opts.SpoolDir == "" {
				return nil, &fs.PathError{Op: "mount", Path: dir, Err: errors.New("a read-write object-store dataset needs a spool directory")}
			}
			f.osrc = s
		default:
			return nil, &fs.PathError{Op: "mount", Path: dir, Err: syscall.EROFS}
		}
	}
	mc := opts.MetaCache
	neg := min(mc, time.Second)
	mo := fuse.MountOptions{
		FsName:      "cistern:" + opts.Dataset,
		Name:        "cistern",
		AllowOther:  true,
		DirectMount: true,
		// mount(2) only: fusermount is not needed (nor installed) on nodes.
		DirectMountStrict: true,
		// No atime updates: a read never changes the FUSE inode.
		DirectMountFlags: syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOATIME,
		MaxReadAhead:     1 << 20,
		MaxWrite:         1 << 20,
		DisableXAttrs:    true,
		Debug:            opts.Debug,
	}
	if opts.ReadOnly {
		mo.Options = append(mo.Options, "ro")
	}
	root := &node{fsys: f}
	srv, err := gofs.Mount(dir, root, &gofs.Options{
		MountOptions:    mo,
		EntryTimeout:    &mc,
		AttrTimeout:     &mc,
		NegativeTimeout: &neg,
	})
	if err != nil {
		return nil, err
	}
	f.srv = srv
	return f, nil
}

// Unmount unmounts and waits for the server to stop.
func (f *FS) Unmount() error {
	err := f.srv.Unmount()
	if err == nil {
		f.srv.Wait()
	}
	return err
}

// node is a file, directory or link of the dataset.
type node struct {
	gofs.Inode
	fsys *FS

	mu     sync.Mutex
	attr   Attr          // guarded by mu; last attributes seen
	upload *uploadHandle // guarded by mu; the latest write handle (object stores)
	// Open handles of a read-only dataset by kind: the kernel refuses
	// (EIO) a passthrough open while the inode is open through its page
	// cache, and a cached open while it is open in passthrough.
	cachedOpens, passthroughOpens int // guarded by mu
}

var (
	_ gofs.NodeLookuper   = (*node)(nil)
	_ gofs.NodeGetattrer  = (*node)(nil)
	_ gofs.NodeReaddirer  = (*node)(nil)
	_ gofs.NodeOpener     = (*node)(nil)
	_ gofs.NodeReader     = (*node)(nil)
	_ gofs.NodeReadlinker = (*node)(nil)
	_ gofs.NodeStatfser   = (*node)(nil)
	_ gofs.NodeFlusher    = (*node)(nil)
)

func stableAttr(p string, a Attr) gofs.StableAttr {
	h := fnv.New64a()
	h.Write([]byte(p))
	return gofs.StableAttr{Mode: fuseMode(a.Mode) &^ 0o7777, Ino: h.Sum64() | 1}
}

func fuseMode(m fs.FileMode) uint32 {
	mode := uint32(m.Perm())
	switch {
	case m.IsDir():
		mode |= syscall.S_IFDIR
	case m&fs.ModeSymlink != 0:
		mode |= syscall.S_IFLNK
	default:
		mode |= syscall.S_IFREG
	}
	return mode
}

func (n *node) fill(a Attr, out *fuse.Attr) {
	out.Mode = fuseMode(a.Mode)
	out.Size = uint64(a.Size)
	if a.Mode&fs.ModeSymlink != 0 {
		out.Size = uint64(len(a.Target))
	}
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 1 << 20
	out.Nlink = 1
	out.SetTimes(nil, &a.Mtime, &a.Mtime)
}

func (n *node) setAttr(a Attr) {
	n.mu.Lock()
	n.attr = a
	n.mu.Unlock()
}

// currentAttr returns the attributes to read with: the remembered ones on
// a read-only dataset (trusted for the metacache period by the kernel too),
// fresh ones on a read-write dataset.
func (n *node) currentAttr(ctx context.Context) (Attr, error) {
	if a, ok := n.pendingAttr(); ok {
		return a, nil
	}
	n.mu.Lock()
	a := n.attr
	n.mu.Unlock()
	if n.fsys.opts.ReadOnly && a.Mtime != (time.Time{}) {
		return a, nil
	}
	a, err := n.fsys.src.Stat(ctx, n.rel())
	if err == nil {
		n.setAttr(a)
	}
	return a, err
}

// rel is the node's path in the dataset ("" for the root), from go-fuse's
// tree, which follows renames.
func (n *node) rel() string { return n.Path(n.Root()) }

func (n *node) child(name string) string { return path.Join(n.rel(), name) }

// Lookup implements gofs.NodeLookuper.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.fsys.osrc != nil {
		// A file being written is not in the store before close.
		if ch := n.GetChild(name); ch != nil {
			if cn, ok := ch.Operations().(*node); ok {
				if a, ok := cn.pendingAttr(); ok {
					n.fill(a, &out.Attr)
					return ch, 0
				}
			}
		}
	}
	p := n.child(name)
	a, err := n.fsys.src.Stat(ctx, p)
	if err != nil {
		return nil, Errno(err)
	}
	n.fill(a, &out.Attr)
	c := &node{fsys: n.fsys, attr: a}
	return n.NewInode(ctx, c, stableAttr(p, a)), 0
}

// Getattr implements gofs.NodeGetattrer.
func (n *node) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := fh.(*uploadHandle); ok {
		return h.Getattr(ctx, out)
	}
	if a, ok := n.pendingAttr(); ok {
		n.fill(a, &out.Attr)
		return 0
	}
	a, err := n.fsys.src.Stat(ctx, n.rel())
	if err != nil {
		return Errno(err)
	}
	n.setAttr(a)
	n.fill(a, &out.Attr)
	return 0
}

// Readdir implements gofs.NodeReaddirer.
func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ents, err := n.fsys.src.List(ctx, n.rel())
	if err != nil {
		return nil, Errno(err)
	}
	list := make([]fuse.DirEntry, 0, len(ents))
	for _, e := range ents {
		sa := stableAttr(n.child(e.Name), e.Attr)
		list = append(list, fuse.DirEntry{Name: e.Name, Mode: sa.Mode, Ino: sa.Ino})
	}
	return gofs.NewListDirStream(list), 0
}

// Readlink implements gofs.NodeReadlinker.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	a, err := n.fsys.src.Stat(ctx, n.rel())
	if err != nil {
		return nil, Errno(err)
	}
	if a.Mode&fs.ModeSymlink == 0 {
		return nil, syscall.EINVAL
	}
	return []byte(a.Target), 0
}

// Statfs implements gofs.NodeStatfser.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 1 << 20
	out.Frsize = 1 << 20
	out.NameLen = 255
	out.Blocks = 1 << 30
	out.Bfree, out.Bavail = out.Blocks, out.Blocks
	return 0
}

const writeFlags = syscall.O_WRONLY | syscall.O_RDWR | syscall.O_TRUNC | syscall.O_APPEND

// Open implements gofs.NodeOpener.
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	o := n.fsys.opts
	if o.ReadOnly && flags&writeFlags != 0 {
		return nil, 0, syscall.EROFS
	}
	if o.ReadOnly && o.SmallFiles {
		// No-open mode: the kernel stops sending OPEN, FLUSH and
		// RELEASE for the whole mount and reads through the inode.
		return nil, 0, syscall.ENOSYS
	}
	a, err := n.currentAttr(ctx)
	if err != nil {
		return nil, 0, Errno(err)
	}
	if n.fsys.osrc != nil && flags&writeFlags != 0 {
		return n.objectOpenWrite(ctx, flags)
	}
	if !o.ReadOnly {
		if flags&syscall.O_TRUNC != 0 && n.fsys.wsrc != nil {
			if err := n.fsys.wsrc.Truncate(ctx, n.rel(), 0); err != nil {
				return nil, 0, Errno(err)
			}
			n.fsys.cache.Evict(o.Dataset, n.rel())
		}
		return &handle{n: n}, fuse.FOPEN_DIRECT_IO, 0
	}
	n.mu.Lock()
	cached, pt := n.cachedOpens, n.passthroughOpens
	n.mu.Unlock()
	// The kernel refuses a passthrough open while the inode is open
	// through its page cache: a complete file opens in passthrough only
	// when no cached handle is open (the count lags behind close(2), so
	// this errs on the safe side).
	if o.Passthrough && cached == 0 {
		if f := n.fsys.cache.CompleteFile(o.Dataset, n.rel(), a); f != nil {
			n.fsys.Passthrough.Add(1)
			n.mu.Lock()
			n.passthroughOpens++
			n.mu.Unlock()
			return &passthroughHandle{f: f, n: n}, fuse.FOPEN_KEEP_CACHE, 0
		}
		if pt > 0 {
			// Complete a moment ago and now evicted: the open
			// passthrough handles keep the kernel in passthrough
			// mode, so a cached open would fail.
			return nil, 0, syscall.EAGAIN
		}
	}
	n.mu.Lock()
	n.cachedOpens++
	n.mu.Unlock()
	n.fsys.CachedOpen.Add(1)
	return &handle{n: n, counted: true}, fuse.FOPEN_KEEP_CACHE, 0
}

// Flush implements gofs.NodeFlusher. Nothing is buffered (writes reach the
// source before Write returns), so a handle without a flusher answers
// ENOSYS: the kernel then stops sending FLUSH on every close, one round trip
// less per file.
func (n *node) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	if fl, ok := fh.(gofs.FileFlusher); ok {
		return fl.Flush(ctx)
	}
	return syscall.ENOSYS
}

// Read implements gofs.NodeReader; it serves handles and no-open mode.
func (n *node) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if r, ok := fh.(gofs.FileReader); ok {
		return r.Read(ctx, dest, off)
	}
	return n.read(ctx, dest, off)
}

func (n *node) read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n.fsys.Reads.Add(1)
	a, err := n.currentAttr(ctx)
	if err != nil {
		return nil, Errno(err)
	}
	if off >= a.Size {
		return fuse.ReadResultData(nil), 0
	}
	got, err := n.fsys.cache.ReadAt(ctx, n.fsys.src, n.fsys.opts.Dataset, n.rel(), a, dest, off)
	if err != nil && err != io.EOF {
		klog.V(2).InfoS("Read failed", "dataset", n.fsys.opts.Dataset, "path", n.rel(), "offset", off, "err", err)
		return nil, Errno(err)
	}
	return fuse.ReadResultData(dest[:got]), 0
}

// handle is an open file served by the daemon.
type handle struct {
	n       *node
	counted bool // counted in n.cachedOpens
}

var (
	_ gofs.FileReader   = (*handle)(nil)
	_ gofs.FileWriter   = (*handle)(nil)
	_ gofs.FileFlusher  = (*handle)(nil)
	_ gofs.FileReleaser = (*handle)(nil)
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return h.n.read(ctx, dest, off)
}

// Write writes through to the source; the cached copy is dropped.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n := h.n
	if n.fsys.wsrc == nil {
		return 0, syscall.EROFS
	}
	w, err := n.fsys.wsrc.WriteAt(ctx, n.rel(), data, off, 0o644)
	n.fsys.cache.Evict(n.fsys.opts.Dataset, n.rel())
	if err != nil {
		return uint32(w), Errno(err)
	}
	return uint32(w), 0
}

// Flush has nothing buffered: writes reach the source before Write returns.
func (h *handle) Flush(context.Context) syscall.Errno { return 0 }

// Release implements gofs.FileReleaser.
func (h *handle) Release(context.Context) syscall.Errno {
	if h.counted {
		h.n.mu.Lock()
		h.n.cachedOpens--
		h.n.mu.Unlock()
		h.n.fsys.CachedOpen.Add(-1)
	}
	return 0
}

// passthroughHandle is a fully cached file the kernel reads directly.
type passthroughHandle struct {
	f *os.File
	n *node
}

var (
	_ gofs.FilePassthroughFder = (*passthroughHandle)(nil)
	_ gofs.FileReader          = (*passthroughHandle)(nil)
	_ gofs.FileReleaser        = (*passthroughHandle)(nil)
)

func (h *passthroughHandle) PassthroughFd() (int, bool) { return int(h.f.Fd()), true }

// Read serves kernels without passthrough from the complete cache file.
func (h *passthroughHandle) Read(_ context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.n.fsys.Reads.Add(1)
	n, err := h.f.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, Errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *passthroughHandle) Release(context.Context) syscall.Errno {
	h.f.Close()
	h.n.mu.Lock()
	h.n.passthroughOpens--
	h.n.mu.Unlock()
	return 0
}
