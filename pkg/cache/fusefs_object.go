package cache

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Writes to a read-write dataset on an object store (see ObjectSource for
// the semantics). A file being written lives in an unlinked spool file on
// the node until close uploads it; nothing of it is visible in the store
// before then.

// uploadHandle is a file open for writing on an object store.
type uploadHandle struct {
	n *node

	mu     sync.Mutex
	spool  *os.File // guarded by mu; the bytes written so far
	size   int64    // guarded by mu
	dirty  bool     // guarded by mu; the object must be stored on flush
	locked bool     // guarded by mu; an existing object: no write may change it
	gone   bool     // guarded by mu; unlinked while open: never stored
}

var (
	_ gofs.FileReader    = (*uploadHandle)(nil)
	_ gofs.FileWriter    = (*uploadHandle)(nil)
	_ gofs.FileFlusher   = (*uploadHandle)(nil)
	_ gofs.FileFsyncer   = (*uploadHandle)(nil)
	_ gofs.FileReleaser  = (*uploadHandle)(nil)
	_ gofs.FileGetattrer = (*uploadHandle)(nil)
)

// spoolFile returns an anonymous file in dir (O_TMPFILE: a crash leaves
// nothing behind).
func spoolFile(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir+"/(upload)"), nil
	}
	f, err := os.CreateTemp(dir, "upload-*")
	if err != nil {
		return nil, err
	}
	_ = os.Remove(f.Name())
	return f, nil
}

// newUpload opens a write handle on n. fresh is a new or truncated file
// (stored on close even if nothing is written); otherwise the handle may
// only write an existing object that is empty.
func (n *node) newUpload(fresh bool, existing int64) (*uploadHandle, syscall.Errno) {
	f, err := spoolFile(n.fsys.opts.SpoolDir)
	if err != nil {
		klog.ErrorS(err, "Cannot open an upload spool file", "dir", n.fsys.opts.SpoolDir)
		return nil, syscall.EIO
	}
	h := &uploadHandle{n: n, spool: f, dirty: fresh, locked: !fresh && existing > 0}
	n.mu.Lock()
	n.upload = h
	n.mu.Unlock()
	return h, 0
}

func (h *uploadHandle) refuse(why string, kv ...any) syscall.Errno {
	klog.InfoS("Write refused on an object-store dataset: "+why, append([]any{"dataset", h.n.fsys.opts.Dataset, "path", h.n.rel()}, kv...)...)
	return syscall.EOPNOTSUPP
}

// Write appends data to the spool; only sequential writes are accepted.
func (h *uploadHandle) Write(_ context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.locked {
		return 0, h.refuse("objects cannot be changed in place; open with O_TRUNC to replace the whole file", "offset", off)
	}
	if off != h.size {
		return 0, h.refuse("files are written sequentially and uploaded on close; random writes are not supported", "offset", off, "written", h.size)
	}
	w, err := h.spool.WriteAt(data, off)
	h.size += int64(w)
	h.dirty = true
	if err != nil {
		return uint32(w), Errno(err)
	}
	return uint32(w), 0
}

// Read serves what this handle wrote (O_RDWR), else the stored object.
func (h *uploadHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	if h.dirty || h.size > 0 {
		defer h.mu.Unlock()
		k, err := h.spool.ReadAt(dest, off)
		if err != nil && err != io.EOF {
			return nil, Errno(err)
		}
		return fuse.ReadResultData(dest[:k]), 0
	}
	h.mu.Unlock()
	return h.n.read(ctx, dest, off)
}

// Getattr reports the size written so far.
func (h *uploadHandle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	h.mu.Lock()
	pending, size := h.dirty, h.size
	h.mu.Unlock()
	if !pending {
		return h.n.Getattr(ctx, nil, out)
	}
	h.n.fill(Attr{Mode: 0o644, Size: size, Mtime: time.Now()}, &out.Attr)
	return 0
}

// Flush uploads the file: close(2) returns only after the store accepted
// it, and fails (EIO) if it did not.
func (h *uploadHandle) Flush(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.storeLocked(ctx)
}

// Fsync uploads the file as Flush does.
func (h *uploadHandle) Fsync(ctx context.Context, _ uint32) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.storeLocked(ctx)
}

func (h *uploadHandle) storeLocked(ctx context.Context) syscall.Errno {
	if !h.dirty || h.gone {
		return 0
	}
	n := h.n
	name := n.rel()
	start := time.Now()
	a, err := n.fsys.osrc.Upload(ctx, name, h.spool, h.size)
	n.fsys.cache.Evict(n.fsys.opts.Dataset, name)
	if err != nil {
		klog.ErrorS(err, "Upload failed; close reports the error and the store keeps its previous state", "dataset", n.fsys.opts.Dataset, "path", name, "bytes", h.size)
		errno := Errno(err)
		if errno == syscall.ENOENT || errno == syscall.EINTR {
			errno = syscall.EIO
		}
		return errno
	}
	h.dirty = false
	n.setAttr(a)
	klog.V(2).InfoS("Uploaded", "dataset", n.fsys.opts.Dataset, "path", name, "bytes", h.size, "took", time.Since(start))
	return 0
}

// truncate handles a size change through this handle.
func (h *uploadHandle) truncate(size int64) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case size == h.size && !h.locked:
		return 0
	case size == 0:
		if err := h.spool.Truncate(0); err != nil {
			return Errno(err)
		}
		h.size, h.dirty, h.locked = 0, true, false
		return 0
	}
	return h.refuse("a file on an object store can only be truncated to 0 or kept whole", "size", size)
}

// Release drops the spool. Bytes never stored were never acknowledged: the
// close that should have stored them failed.
func (h *uploadHandle) Release(context.Context) syscall.Errno {
	h.mu.Lock()
	if h.dirty && !h.gone {
		klog.InfoS("A file closed without a successful upload was discarded", "dataset", h.n.fsys.opts.Dataset, "path", h.n.rel(), "bytes", h.size)
	}
	h.spool.Close()
	h.dirty = false
	h.mu.Unlock()
	n := h.n
	n.mu.Lock()
	if n.upload == h {
		n.upload = nil
	}
	n.mu.Unlock()
	return 0
}

// unlinkPending marks the write handles of a file being written as
// unlinked (their bytes are never stored, as a removed file's data goes
// with its last close) and reports whether there was one.
func (n *node) unlinkPending() bool {
	n.mu.Lock()
	h := n.upload
	n.upload = nil
	n.mu.Unlock()
	if h == nil {
		return false
	}
	h.mu.Lock()
	h.gone = true
	h.mu.Unlock()
	return true
}

// pendingAttr returns the attributes of a file being written that the
// store does not have yet.
func (n *node) pendingAttr() (Attr, bool) {
	n.mu.Lock()
	h := n.upload
	n.mu.Unlock()
	if h == nil {
		return Attr{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.dirty {
		return Attr{}, false
	}
	return Attr{Mode: 0o644, Size: h.size, Mtime: time.Now()}, true
}

// objectCreate creates a file: nothing reaches the store before close.
func (n *node) objectCreate(ctx context.Context, name string, flags uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	p := n.child(name)
	if flags&syscall.O_EXCL != 0 {
		if _, err := n.fsys.src.Stat(ctx, p); err == nil {
			return nil, nil, 0, syscall.EEXIST
		} else if !errors.Is(err, fs.ErrNotExist) && Errno(err) != syscall.ENOENT {
			return nil, nil, 0, Errno(err)
		}
	}
	a := Attr{Mode: 0o644, Mtime: time.Now()}
	c := &node{fsys: n.fsys, attr: a}
	in := n.NewInode(ctx, c, stableAttr(p, a))
	c = in.Operations().(*node) // an inode of this name may exist already
	h, errno := c.newUpload(true, 0)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	n.fill(a, &out.Attr)
	return in, h, fuse.FOPEN_DIRECT_IO, 0
}

// objectOpenWrite opens an existing file for writing.
func (n *node) objectOpenWrite(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	a, err := n.currentAttr(ctx)
	if err != nil {
		return nil, 0, Errno(err)
	}
	h, errno := n.newUpload(flags&syscall.O_TRUNC != 0, a.Size)
	if errno != 0 {
		return nil, 0, errno
	}
	return h, fuse.FOPEN_DIRECT_IO, 0
}

// objectSetattr changes a file's size: to 0 (an empty object replaces it)
// or to its current size.
func (n *node) objectSetattr(ctx context.Context, fh gofs.FileHandle, size int64) syscall.Errno {
	if h, ok := fh.(*uploadHandle); ok {
		return h.truncate(size)
	}
	n.mu.Lock()
	h := n.upload
	n.mu.Unlock()
	if h != nil {
		return h.truncate(size)
	}
	a, err := n.fsys.src.Stat(ctx, n.rel())
	if err != nil {
		return Errno(err)
	}
	switch {
	case a.Mode.IsDir():
		return syscall.EISDIR
	case size == a.Size:
		return 0
	case size != 0:
		klog.InfoS("Truncate refused on an object-store dataset: a file can only be truncated to 0", "dataset", n.fsys.opts.Dataset, "path", n.rel(), "size", size)
		return syscall.EOPNOTSUPP
	}
	f, err := spoolFile(n.fsys.opts.SpoolDir)
	if err != nil {
		return syscall.EIO
	}
	defer f.Close()
	na, err := n.fsys.osrc.Upload(ctx, n.rel(), f, 0)
	n.fsys.cache.Evict(n.fsys.opts.Dataset, n.rel())
	if err != nil {
		return Errno(err)
	}
	n.setAttr(na)
	return 0
}

// objectRename renames a file by copy and delete; a directory is EXDEV.
func (n *node) objectRename(ctx context.Context, name string, np *node, newName string) syscall.Errno {
	from, to := n.child(name), np.child(newName)
	a, err := n.fsys.src.Stat(ctx, from)
	if err != nil {
		return Errno(err)
	}
	if a.Mode.IsDir() {
		klog.InfoS("Rename of a directory refused on an object-store dataset (it would copy every object); mv copies instead", "dataset", n.fsys.opts.Dataset, "from", from, "to", to)
		return syscall.EXDEV
	}
	if ta, err := n.fsys.src.Stat(ctx, to); err == nil && ta.Mode.IsDir() {
		return syscall.EISDIR
	}
	err = n.fsys.osrc.RenameFile(ctx, from, to, a)
	n.fsys.cache.Evict(n.fsys.opts.Dataset, from)
	n.fsys.cache.Evict(n.fsys.opts.Dataset, to)
	return Errno(err)
}
