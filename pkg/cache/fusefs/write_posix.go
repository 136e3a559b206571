package fusefs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// posixWriter writes through to a POSIX tree: every change reaches the
// source before the call returns and drops the cached copy of what it
// touched.
type posixWriter struct {
	src source.Writable
}

func (posixWriter) pending(*node) (source.Attr, bool) { return source.Attr{}, false }
func (posixWriter) pendingChild(*node, string) (*gofs.Inode, source.Attr, bool) {
	return nil, source.Attr{}, false
}

func (w posixWriter) open(ctx context.Context, n *node, _ source.Attr, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_TRUNC != 0 {
		if err := w.src.Truncate(ctx, n.rel(), 0); err != nil {
			return nil, 0, source.Errno(err)
		}
		n.fsys.eng.EvictFile(n.rel())
	}
	return &handle{n: n}, fuse.FOPEN_DIRECT_IO, 0
}

// write writes through to the source; the cached copy is dropped.
func (w posixWriter) write(ctx context.Context, n *node, data []byte, off int64) (uint32, syscall.Errno) {
	k, err := w.src.WriteAt(ctx, n.rel(), data, off)
	n.fsys.eng.EvictFile(n.rel())
	return uint32(k), source.Errno(err)
}

// create creates a file owned by the caller with the mode it asked for
// (the kernel applied its umask).
func (w posixWriter) create(ctx context.Context, parent *node, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	p := parent.child(name)
	created, err := w.src.Create(ctx, p, source.FileMode(mode), flags&syscall.O_EXCL != 0, caller(ctx))
	if err != nil {
		return nil, nil, 0, source.Errno(err)
	}
	if !created && flags&syscall.O_TRUNC != 0 {
		if err := w.src.Truncate(ctx, p, 0); err != nil {
			return nil, nil, 0, source.Errno(err)
		}
	}
	parent.fsys.eng.EvictFile(p)
	in, c, errno := parent.newChild(ctx, name, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return in, &handle{n: c}, fuse.FOPEN_DIRECT_IO, 0
}

func (w posixWriter) mkdir(ctx context.Context, parent *node, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if err := w.src.Mkdir(ctx, parent.child(name), source.FileMode(mode), caller(ctx)); err != nil {
		return nil, source.Errno(err)
	}
	in, _, errno := parent.newChild(ctx, name, out)
	return in, errno
}

func (w posixWriter) unlink(ctx context.Context, parent *node, name string) syscall.Errno {
	p := parent.child(name)
	err := w.src.Remove(ctx, p)
	parent.fsys.eng.EvictFile(p)
	return source.Errno(err)
}

// rmdir removes an empty directory (Remove takes both).
func (w posixWriter) rmdir(ctx context.Context, parent *node, name string) syscall.Errno {
	return w.unlink(ctx, parent, name)
}

func (w posixWriter) rename(ctx context.Context, parent *node, name string, np *node, newName string) syscall.Errno {
	from, to := parent.child(name), np.child(newName)
	// A directory's cached files are found by a scan; a file's (the
	// common case: write, then rename over) at once.
	// (A name the kernel does not know has nothing cached that a read
	// would trust: a cached file's fingerprint is checked on every read.)
	isDir := func(dir *node, name string) bool {
		in := dir.GetChild(name)
		return in != nil && in.StableAttr().Mode&syscall.S_IFMT == syscall.S_IFDIR
	}
	fromDir, toDir := isDir(parent, name), isDir(np, newName)
	err := w.src.Rename(ctx, from, to)
	for _, e := range []struct {
		path string
		dir  bool
	}{{from, fromDir}, {to, toDir}} {
		if e.dir {
			parent.fsys.eng.EvictTree(e.path)
		} else {
			parent.fsys.eng.EvictFile(e.path)
		}
	}
	return source.Errno(err)
}

func (w posixWriter) setSize(ctx context.Context, n *node, _ gofs.FileHandle, size int64) syscall.Errno {
	if err := w.src.Truncate(ctx, n.rel(), size); err != nil {
		return source.Errno(err)
	}
	n.fsys.eng.EvictFile(n.rel())
	return 0
}

func (w posixWriter) setAttr(ctx context.Context, n *node, c source.AttrChange) syscall.Errno {
	if err := w.src.SetAttr(ctx, n.rel(), c); err != nil {
		return source.Errno(err)
	}
	if c.Mtime != nil {
		n.fsys.eng.EvictFile(n.rel()) // the fingerprint changed
	}
	return 0
}
