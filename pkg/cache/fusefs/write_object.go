package fusefs

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/source"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// objectWriter writes a read-write dataset on an object store (see
// source.Objects for the semantics). A file being written lives in an
// unlinked spool file on the node until close uploads it; nothing of it is
// visible in the store before then.
type objectWriter struct {
	src      source.Objects
	spoolDir string
}

// uploadHandle is a file open for writing on an object store. It is
// uploaded when the process that opened it closes it (its FLUSH, so
// close(2) reports the result), on fsync, or at the last release if that
// process never closed it. A FLUSH from another process - a forked
// data-loader worker closing the descriptor it inherited - uploads
// nothing: it would publish a partial object.
//
// Lock order: upMu, then mu. No upload runs under mu, so a stat of the
// file never waits for one.
type uploadHandle struct {
	n     *node
	src   source.Objects
	owner int // thread group of the process that opened it

	upMu sync.Mutex // serialises uploads and truncations of the spool

	mu      sync.Mutex
	spool   *os.File // the bytes written so far (writes and uploads use positioned I/O)
	size    int64    // guarded by mu
	version uint64   // guarded by mu; bumped by every change of the spool
	dirty   bool     // guarded by mu; the object must be stored
	closed  bool     // guarded by mu; the owner's close ran (and reported any failure)
	locked  bool     // guarded by mu; an existing object: no write may change it
	gone    bool     // guarded by mu; unlinked while open: never stored
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
func (w objectWriter) newUpload(ctx context.Context, n *node, fresh bool, existing int64) (*uploadHandle, syscall.Errno) {
	f, err := spoolFile(w.spoolDir)
	if err != nil {
		n.fsys.log.Error(err, "Cannot open an upload spool file", "dir", w.spoolDir)
		return nil, syscall.EIO
	}
	h := &uploadHandle{n: n, src: w.src, owner: callerProcess(ctx), spool: f, dirty: fresh, locked: !fresh && existing > 0}
	n.mu.Lock()
	n.upload = h
	n.mu.Unlock()
	return h, 0
}

func (h *uploadHandle) refuse(why string, kv ...any) syscall.Errno {
	h.n.fsys.log.Info("Write refused on an object-store dataset", append([]any{"path", h.n.rel(), "reason", why}, kv...)...)
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
	h.version++
	if err != nil {
		return uint32(w), source.Errno(err)
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
			return nil, source.Errno(err)
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
	a := h.src.NewFile()
	a.Size = size
	h.n.fill(a, &out.Attr)
	return 0
}

// Flush uploads the file when the process that opened it closes it:
// close(2) returns only after the store accepted it, and fails (EIO) if it
// did not. Another process's close uploads nothing.
func (h *uploadHandle) Flush(ctx context.Context) syscall.Errno {
	if p := callerProcess(ctx); p != h.owner && h.owner != 0 {
		return 0
	}
	errno := h.store(ctx)
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	return errno
}

// Fsync uploads the file: durable in the store when it returns.
func (h *uploadHandle) Fsync(ctx context.Context, _ uint32) syscall.Errno {
	return h.store(ctx)
}

// store uploads what was written so far unless it is stored already. The
// spool is read outside mu: writes meanwhile (appends past the uploaded
// size) keep the handle dirty for the next store.
func (h *uploadHandle) store(ctx context.Context) syscall.Errno {
	h.upMu.Lock()
	defer h.upMu.Unlock()
	h.mu.Lock()
	if !h.dirty || h.gone {
		h.mu.Unlock()
		return 0
	}
	size, version := h.size, h.version
	h.mu.Unlock()
	n := h.n
	name := n.rel()
	start := time.Now()
	// Not cancelled with the request: the kernel interrupts a request
	// whenever its caller gets a signal (a Go program's preemption
	// signal, a data loader's SIGCHLD), and an upload given up then
	// failed a close or fsync that would have succeeded. The store
	// client's own timeout bounds it.
	a, err := h.src.Upload(context.WithoutCancel(ctx), name, h.spool, size)
	n.fsys.eng.EvictFile(name, source.Attr{})
	if err != nil {
		n.fsys.log.Error(err, "Upload failed; close reports the error and the store keeps its previous state", "path", name, "bytes", size)
		errno := source.Errno(err)
		if errno == syscall.ENOENT || errno == syscall.EINTR {
			errno = syscall.EIO
		}
		return errno
	}
	h.mu.Lock()
	if h.version == version {
		h.dirty = false
	}
	h.mu.Unlock()
	n.setAttr(a)
	n.fsys.log.V(2).Info("Uploaded", "path", name, "bytes", size, "took", time.Since(start))
	return 0
}

// truncate handles a size change through this handle.
func (h *uploadHandle) truncate(size int64) syscall.Errno {
	h.upMu.Lock() // not while an upload reads the spool
	defer h.upMu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case size == h.size && !h.locked:
		return 0
	case size == 0:
		if err := h.spool.Truncate(0); err != nil {
			return source.Errno(err)
		}
		h.size, h.dirty, h.locked = 0, true, false
		h.version++
		return 0
	}
	return h.refuse("a file on an object store can only be truncated to 0 or kept whole", "size", size)
}

// Release uploads a file the owner never closed (only inherited
// descriptors were), then drops the spool. Bytes whose owner's close
// failed to store them were never acknowledged: they are discarded.
func (h *uploadHandle) Release(context.Context) syscall.Errno {
	h.mu.Lock()
	pending := h.dirty && !h.gone && !h.closed
	h.mu.Unlock()
	if pending {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		if errno := h.store(ctx); errno != 0 {
			h.n.fsys.log.Info("A file whose writer never closed it could not be stored; discarded", "path", h.n.rel(), "errno", errno.Error())
		}
		cancel()
	}
	h.mu.Lock()
	if h.dirty && !h.gone {
		h.n.fsys.log.Info("A file closed without a successful upload was discarded", "path", h.n.rel(), "bytes", h.size)
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

// pending implements writer: the attributes of a file being written that
// the store does not have yet.
func (objectWriter) pending(n *node) (source.Attr, bool) {
	n.mu.Lock()
	h := n.upload
	n.mu.Unlock()
	if h == nil {
		return source.Attr{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.dirty {
		return source.Attr{}, false
	}
	a := h.src.NewFile()
	a.Size = h.size
	return a, true
}

// pendingChild implements writer: a file being written is not in the
// store before close.
func (w objectWriter) pendingChild(parent *node, name string) (*gofs.Inode, source.Attr, bool) {
	ch := parent.GetChild(name)
	if ch == nil {
		return nil, source.Attr{}, false
	}
	cn, ok := ch.Operations().(*node)
	if !ok {
		return nil, source.Attr{}, false
	}
	a, ok := w.pending(cn)
	return ch, a, ok
}

// create creates a file: nothing reaches the store before close.
func (w objectWriter) create(ctx context.Context, n *node, name string, flags, _ uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	p := n.child(name)
	if flags&syscall.O_EXCL != 0 {
		if _, err := w.src.Stat(ctx, p); err == nil {
			return nil, nil, 0, syscall.EEXIST
		} else if !errors.Is(err, fs.ErrNotExist) && source.Errno(err) != syscall.ENOENT {
			return nil, nil, 0, source.Errno(err)
		}
	}
	a := w.src.NewFile()
	c := &node{fsys: n.fsys, attr: a}
	c.touch()
	in := n.NewInode(ctx, c, n.fsys.stableAttr(n, name, a))
	n.fsys.counted(in, c)
	c = in.Operations().(*node) // an inode of this name may exist already
	h, errno := w.newUpload(ctx, c, true, 0)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	n.fill(a, &out.Attr)
	return in, h, fuse.FOPEN_DIRECT_IO, 0
}

// open opens an existing file: for reading through the cache, or for
// writing through an upload.
func (w objectWriter) open(ctx context.Context, n *node, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	a, err := n.currentAttr(ctx)
	if err != nil {
		return nil, 0, source.Errno(err)
	}
	if flags&writeFlags == 0 {
		return &handle{n: n}, fuse.FOPEN_DIRECT_IO, 0
	}
	h, errno := w.newUpload(ctx, n, flags&syscall.O_TRUNC != 0, a.Size)
	if errno != 0 {
		return nil, 0, errno
	}
	return h, fuse.FOPEN_DIRECT_IO, 0
}

// setSize changes a file's size: to 0 (an empty object replaces it) or to
// its current size.
func (w objectWriter) setSize(ctx context.Context, n *node, fh gofs.FileHandle, size int64) syscall.Errno {
	if h, ok := fh.(*uploadHandle); ok {
		return h.truncate(size)
	}
	n.mu.Lock()
	h := n.upload
	n.mu.Unlock()
	if h != nil {
		return h.truncate(size)
	}
	a, err := w.src.Stat(ctx, n.rel())
	if err != nil {
		return source.Errno(err)
	}
	switch {
	case a.Mode.IsDir():
		return syscall.EISDIR
	case size == a.Size:
		return 0
	case size != 0:
		n.fsys.log.Info("Truncate refused on an object-store dataset: a file can only be truncated to 0", "path", n.rel(), "size", size)
		return syscall.EOPNOTSUPP
	}
	f, err := spoolFile(w.spoolDir)
	if err != nil {
		return syscall.EIO
	}
	defer f.Close()
	na, err := w.src.Upload(ctx, n.rel(), f, 0)
	n.fsys.eng.EvictFile(n.rel(), source.Attr{})
	if err != nil {
		return source.Errno(err)
	}
	n.setAttr(na)
	return 0
}

// rename renames a file by copy and delete; a directory is EXDEV.
func (w objectWriter) rename(ctx context.Context, n *node, name string, np *node, newName string, flags uint32) syscall.Errno {
	if flags != 0 {
		return syscall.EINVAL // an object store cannot exchange, or refuse to replace, atomically
	}
	from, to := n.child(name), np.child(newName)
	a, err := w.src.Stat(ctx, from)
	if err != nil {
		return source.Errno(err)
	}
	if a.Mode.IsDir() {
		n.fsys.log.Info("Rename of a directory refused on an object-store dataset (it would copy every object); mv copies instead", "from", from, "to", to)
		return syscall.EXDEV
	}
	if ta, err := w.src.Stat(ctx, to); err == nil && ta.Mode.IsDir() {
		return syscall.EISDIR
	}
	err = w.src.RenameFile(ctx, from, to, a)
	n.fsys.eng.EvictFile(from, source.Attr{})
	n.fsys.eng.EvictFile(to, source.Attr{})
	if err == nil {
		n.fsys.inodes.rename(from, to)
	}
	return source.Errno(err)
}

// write is never called: writes go through the upload handle.
func (objectWriter) write(context.Context, *node, []byte, int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

func (w objectWriter) mkdir(ctx context.Context, n *node, name string, _ uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	p := n.child(name)
	if _, err := w.src.Stat(ctx, p); err == nil {
		return nil, syscall.EEXIST
	}
	if err := w.src.MkdirMarker(ctx, p); err != nil {
		return nil, source.Errno(err)
	}
	in, _, errno := n.newChild(ctx, name, out)
	return in, errno
}

// unlink deletes a file; one being written is never stored.
func (w objectWriter) unlink(ctx context.Context, n *node, name string) syscall.Errno {
	p := n.child(name)
	pending := false
	if ch := n.GetChild(name); ch != nil {
		if cn, ok := ch.Operations().(*node); ok {
			pending = cn.unlinkPending()
		}
	}
	if _, err := w.src.Stat(ctx, p); err != nil {
		if pending && source.Errno(err) == syscall.ENOENT {
			return 0 // never stored: nothing to delete
		}
		return source.Errno(err)
	}
	err := w.src.RemoveFile(ctx, p)
	n.fsys.eng.EvictFile(p, source.Attr{})
	return source.Errno(err)
}

func (w objectWriter) rmdir(ctx context.Context, n *node, name string) syscall.Errno {
	return source.Errno(w.src.RemoveDir(ctx, n.child(name)))
}

// setAttr: an object store has no per-file modes, owners or times (the
// dataset's uid, gid, fileMode and dirMode say them); a change is
// accepted and has no effect, as before, so touch(1) and cp -p work.
func (objectWriter) setAttr(context.Context, *node, source.AttrChange) syscall.Errno {
	return 0
}

// symlink, link, mknod: an object store has none of these (EOPNOTSUPP).
func (objectWriter) symlink(context.Context, *node, string, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EOPNOTSUPP
}
func (objectWriter) link(context.Context, *node, *node, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EOPNOTSUPP
}
func (objectWriter) mknod(context.Context, *node, string, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EOPNOTSUPP
}

// fsync of a directory or a file without an upload handle: the store has
// everything it acknowledged.
func (objectWriter) fsync(context.Context, *node, bool) syscall.Errno { return 0 }
