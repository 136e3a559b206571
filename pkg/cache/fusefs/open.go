package fusefs

import (
	"context"
	"io"
	"os"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

var (
	_ gofs.NodeOpener  = (*node)(nil)
	_ gofs.NodeReader  = (*node)(nil)
	_ gofs.NodeFlusher = (*node)(nil)
)

const writeFlags = syscall.O_WRONLY | syscall.O_RDWR | syscall.O_TRUNC | syscall.O_APPEND

// Open implements gofs.NodeOpener.
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	o := n.fsys.opts
	n.touch()
	if o.ReadOnly && flags&writeFlags != 0 {
		return nil, 0, syscall.EROFS
	}
	if o.ReadOnly && o.SmallFiles {
		// No-open mode: the kernel stops sending OPEN, FLUSH and
		// RELEASE for the whole mount and reads through the inode.
		return nil, 0, syscall.ENOSYS
	}
	if !o.ReadOnly {
		return n.fsys.w.open(ctx, n, flags)
	}
	a, err := n.currentAttr(ctx)
	if err != nil {
		return nil, 0, source.Errno(err)
	}
	n.mu.Lock()
	cached, pt := n.cachedOpens, n.passthroughOpens
	n.mu.Unlock()
	// The kernel refuses a passthrough open while the inode is open
	// through its page cache: a complete file opens in passthrough only
	// when no cached handle is open (the count lags behind close(2), so
	// this errs on the safe side).
	if o.Passthrough && cached == 0 && n.fsys.passthroughAllowed(n.StableAttr().Ino) {
		f := n.fsys.eng.CompleteFile(n.rel(), a)
		fromSource := false
		if f == nil {
			// Not (all) cached: a file of a POSIX source is read by
			// the kernel from the source itself, at the source's
			// speed, and cached in the background once closed.
			f, fromSource = n.sourceFile(ctx, a), true
		}
		if f != nil {
			flags := uint32(fuse.FOPEN_KEEP_CACHE) // go-fuse's server registers the backing file
			if s := n.fsys.sess; s != nil {
				// A session's reply carries a backing file registered here.
				if err := s.PendBacking(n.StableAttr().Ino, f); err != nil {
					f.Close()
					return n.cachedOpen(a)
				}
				flags = fuse.FOPEN_PASSTHROUGH
			}
			n.fsys.Passthrough.Add(1)
			n.mu.Lock()
			n.passthroughOpens++
			n.mu.Unlock()
			h := &passthroughHandle{f: f, n: n}
			if fromSource {
				n.fsys.SourcePassthrough.Add(1)
				h.fill = &a
			}
			return h, flags, 0
		}
		if pt > 0 {
			// Complete a moment ago and now evicted: the open
			// passthrough handles keep the kernel in passthrough
			// mode, so a cached open would fail.
			return nil, 0, syscall.EAGAIN
		}
	}
	return n.cachedOpen(a)
}

// cachedOpen opens a file of a read-only dataset through the page cache.
func (n *node) cachedOpen(a source.Attr) (gofs.FileHandle, uint32, syscall.Errno) {
	n.mu.Lock()
	n.cachedOpens++
	n.mu.Unlock()
	n.fsys.CachedOpen.Add(1)
	// Another version than the pages the kernel holds (a rewrite may keep
	// size and modification time, which is all the kernel compares):
	// open without FOPEN_KEEP_CACHE, and the kernel drops them.
	if !n.reopened(version(a)) {
		return &handle{n: n, counted: true}, 0, 0
	}
	return &handle{n: n, counted: true}, fuse.FOPEN_KEEP_CACHE, 0
}

// Flush implements gofs.NodeFlusher. A handle without a flusher has
// nothing buffered and answers ENOSYS: the kernel then stops sending FLUSH
// on every close, one round trip less per file.
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
		return nil, source.Errno(err)
	}
	if off >= a.Size {
		return fuse.ReadResultData(nil), 0
	}
	got, err := n.fsys.eng.ReadAt(ctx, n.rel(), a, dest, off)
	if err != nil && err != io.EOF {
		n.fsys.log.V(2).Info("Read failed", "path", n.rel(), "offset", off, "error", err.Error())
		return nil, source.Errno(err)
	}
	return fuse.ReadResultData(dest[:got]), 0
}

// handle is an open file served by the daemon; writes go to the mount's
// write strategy.
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

// Write implements gofs.FileWriter.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return h.n.fsys.w.write(ctx, h.n, data, off)
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

// passthroughHandle is a file the kernel reads directly: a fully cached
// one, or the source's own file.
type passthroughHandle struct {
	f    *os.File
	n    *node
	fill *source.Attr // a source file: the version to cache once released
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
		return nil, source.Errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *passthroughHandle) Release(context.Context) syscall.Errno {
	if s := h.n.fsys.sess; s != nil {
		s.ReleaseBacking(h.n.StableAttr().Ino)
	}
	h.f.Close()
	h.n.mu.Lock()
	h.n.passthroughOpens--
	h.n.mu.Unlock()
	if h.fill != nil {
		h.n.fsys.eng.Fill(h.n.rel(), *h.fill)
	}
	return 0
}

// sourceFile opens the source's own file of n for the kernel to read in
// passthrough, if the source is a POSIX tree and the file is still the
// version a describes; else nil (the daemon serves the open).
func (n *node) sourceFile(ctx context.Context, a source.Attr) *os.File {
	w, ok := n.fsys.src.(source.Writable)
	if !ok || a.Ino == 0 {
		return nil
	}
	f, err := w.OpenFile(ctx, n.rel(), syscall.O_RDONLY)
	if err != nil {
		return nil
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || st.Ino != a.Ino || st.Dev != a.Dev || st.Size != a.Size {
		// Replaced or changed since a was read: the daemon's path
		// checks versions, the kernel's would not.
		f.Close()
		return nil
	}
	return f
}
