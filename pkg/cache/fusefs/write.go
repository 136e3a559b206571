package fusefs

import (
	"context"
	"golang.org/x/sys/unix"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// writer is a mount's write strategy, chosen once at mount: readOnly,
// posixWriter (write-through to a POSIX tree) or objectWriter (whole
// objects uploaded on close). The node operations that change the tree
// check what every strategy shares and hand the rest to it.
type writer interface {
	// pending returns the attributes of n while it is being written and
	// the source does not have it yet.
	pending(n *node) (source.Attr, bool)
	// pendingChild returns parent's child name while it is being written.
	pendingChild(parent *node, name string) (*gofs.Inode, source.Attr, bool)
	// open opens n (attributes a) on a read-write dataset.
	open(ctx context.Context, n *node, flags uint32) (gofs.FileHandle, uint32, syscall.Errno)
	// write writes through a handle opened by open.
	write(ctx context.Context, n *node, data []byte, off int64) (uint32, syscall.Errno)
	create(ctx context.Context, parent *node, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno)
	mkdir(ctx context.Context, parent *node, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno)
	unlink(ctx context.Context, parent *node, name string) syscall.Errno
	rmdir(ctx context.Context, parent *node, name string) syscall.Errno
	rename(ctx context.Context, parent *node, name string, newParent *node, newName string, flags uint32) syscall.Errno
	// setSize truncates n, through fh if it is one of the strategy's.
	setSize(ctx context.Context, n *node, fh gofs.FileHandle, size int64) syscall.Errno
	// setAttr changes n's mode, owners or times (the kernel checked the
	// caller may: default_permissions).
	setAttr(ctx context.Context, n *node, c source.AttrChange) syscall.Errno
	symlink(ctx context.Context, parent *node, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno)
	link(ctx context.Context, target *node, parent *node, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno)
	mknod(ctx context.Context, parent *node, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno)
	// fsync makes n durable (a directory, or a file without a handle of
	// the strategy's).
	fsync(ctx context.Context, n *node, datasync bool) syscall.Errno
}

var (
	_ gofs.NodeSymlinker = (*node)(nil)
	_ gofs.NodeLinker    = (*node)(nil)
	_ gofs.NodeMknoder   = (*node)(nil)
	_ gofs.NodeFsyncer   = (*node)(nil)
	_ gofs.NodeCreater   = (*node)(nil)
	_ gofs.NodeMkdirer   = (*node)(nil)
	_ gofs.NodeUnlinker  = (*node)(nil)
	_ gofs.NodeRmdirer   = (*node)(nil)
	_ gofs.NodeRenamer   = (*node)(nil)
	_ gofs.NodeSetattrer = (*node)(nil)
)

// Create implements gofs.NodeCreater.
func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	n.fsys.listed.forget(n.StableAttr().Ino) // a change in n: its listing is old
	defer n.fsys.listed.forget(n.StableAttr().Ino)
	if n.fsys.hidden(n, name) {
		return nil, nil, 0, syscall.EACCES
	}
	return n.fsys.w.create(ctx, n, name, flags, mode, out)
}

// Mkdir implements gofs.NodeMkdirer.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	n.fsys.listed.forget(n.StableAttr().Ino) // a change in n: its listing is old
	defer n.fsys.listed.forget(n.StableAttr().Ino)
	if n.fsys.hidden(n, name) {
		return nil, syscall.EACCES
	}
	return n.fsys.w.mkdir(ctx, n, name, mode, out)
}

// Unlink implements gofs.NodeUnlinker.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	n.fsys.listed.forget(n.StableAttr().Ino) // a change in n: its listing is old
	defer n.fsys.listed.forget(n.StableAttr().Ino)
	if n.fsys.hidden(n, name) {
		return syscall.ENOENT
	}
	return n.fsys.w.unlink(ctx, n, name)
}

// Rmdir implements gofs.NodeRmdirer.
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	n.fsys.listed.forget(n.StableAttr().Ino) // a change in n: its listing is old
	defer n.fsys.listed.forget(n.StableAttr().Ino)
	if n.fsys.hidden(n, name) {
		return syscall.ENOENT
	}
	return n.fsys.w.rmdir(ctx, n, name)
}

// Rename implements gofs.NodeRenamer.
func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	n.fsys.listed.forget(n.StableAttr().Ino) // a change in n: its listing is old
	defer n.fsys.listed.forget(n.StableAttr().Ino)
	if np, ok := newParent.(*node); ok {
		n.fsys.listed.forget(np.StableAttr().Ino)
		defer n.fsys.listed.forget(np.StableAttr().Ino)
	}
	if n.fsys.opts.ReadOnly {
		return syscall.EROFS
	}
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	if n.fsys.hidden(n, name) || n.fsys.hidden(np, newName) {
		return syscall.EACCES
	}
	moved, over := n.GetChild(name), np.GetChild(newName)
	errno := n.fsys.w.rename(ctx, n, name, np, newName, flags)
	if errno == 0 {
		// Where the kernel's inodes are now, for a daemon that takes
		// the connection over.
		if moved != nil {
			n.fsys.inodes.seen(moved.StableAttr().Ino, np.StableAttr().Ino, newName)
		}
		if over != nil && flags&unix.RENAME_EXCHANGE != 0 {
			n.fsys.inodes.seen(over.StableAttr().Ino, n.StableAttr().Ino, name)
		}
	}
	return errno
}

// Symlink implements gofs.NodeSymlinker: the link is the caller's, and
// only ever resolved by the kernel in the caller's view, never by the
// daemon.
func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	n.fsys.listed.forget(n.StableAttr().Ino) // a change in n: its listing is old
	defer n.fsys.listed.forget(n.StableAttr().Ino)
	if n.fsys.hidden(n, name) {
		return nil, syscall.EACCES
	}
	return n.fsys.w.symlink(ctx, n, target, name, out)
}

// Link implements gofs.NodeLinker.
func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	n.fsys.listed.forget(n.StableAttr().Ino) // a change in n: its listing is old
	defer n.fsys.listed.forget(n.StableAttr().Ino)
	tn, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	if n.fsys.hidden(n, name) {
		return nil, syscall.EACCES
	}
	return n.fsys.w.link(ctx, tn, n, name, out)
}

// Mknod implements gofs.NodeMknoder: FIFOs and sockets.
func (n *node) Mknod(ctx context.Context, name string, mode, _ uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	n.fsys.listed.forget(n.StableAttr().Ino) // a change in n: its listing is old
	defer n.fsys.listed.forget(n.StableAttr().Ino)
	if n.fsys.hidden(n, name) {
		return nil, syscall.EACCES
	}
	return n.fsys.w.mknod(ctx, n, name, mode, out)
}

// Fsync implements gofs.NodeFsyncer: through the handle when it has one,
// else (a directory) by name.
func (n *node) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	if f, ok := fh.(gofs.FileFsyncer); ok {
		return f.Fsync(ctx, flags)
	}
	return n.fsys.w.fsync(ctx, n, flags&1 != 0)
}

// Setattr implements gofs.NodeSetattrer: size, then mode, owners and
// times.
func (n *node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	// Its listed attributes are old (under any of its names).
	n.fsys.listed.forgetAll()
	defer n.fsys.listed.forgetAll()
	if sz, ok := in.GetSize(); ok {
		if errno := n.fsys.w.setSize(ctx, n, fh, int64(sz)); errno != 0 {
			return errno
		}
	}
	var c source.AttrChange
	if m, ok := in.GetMode(); ok {
		fm := source.FileMode(m)
		c.Mode = &fm
	}
	if u, ok := in.GetUID(); ok {
		c.UID = &u
	}
	if g, ok := in.GetGID(); ok {
		c.GID = &g
	}
	if a, ok := in.GetATime(); ok {
		c.Atime = &a
	}
	if m, ok := in.GetMTime(); ok {
		c.Mtime = &m
	}
	if c != (source.AttrChange{}) {
		if errno := n.fsys.w.setAttr(ctx, n, c); errno != 0 {
			return errno
		}
	}
	return n.Getattr(ctx, fh, out)
}

// readOnly is the strategy of a read-only dataset: the mount is "ro", so
// the kernel refuses changes before they get here; EROFS in any case.
type readOnly struct{}

func (readOnly) pending(*node) (source.Attr, bool) { return source.Attr{}, false }
func (readOnly) pendingChild(*node, string) (*gofs.Inode, source.Attr, bool) {
	return nil, source.Attr{}, false
}
func (readOnly) open(context.Context, *node, uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, syscall.EROFS
}
func (readOnly) write(context.Context, *node, []byte, int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}
func (readOnly) create(context.Context, *node, string, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}
func (readOnly) mkdir(context.Context, *node, string, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (readOnly) unlink(context.Context, *node, string) syscall.Errno { return syscall.EROFS }
func (readOnly) rmdir(context.Context, *node, string) syscall.Errno  { return syscall.EROFS }
func (readOnly) rename(context.Context, *node, string, *node, string, uint32) syscall.Errno {
	return syscall.EROFS
}
func (readOnly) symlink(context.Context, *node, string, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (readOnly) link(context.Context, *node, *node, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (readOnly) mknod(context.Context, *node, string, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (readOnly) fsync(context.Context, *node, bool) syscall.Errno { return 0 }
func (readOnly) setSize(context.Context, *node, gofs.FileHandle, int64) syscall.Errno {
	return syscall.EROFS
}
func (readOnly) setAttr(context.Context, *node, source.AttrChange) syscall.Errno {
	return syscall.EROFS
}
