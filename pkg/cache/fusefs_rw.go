package cache

import (
	"context"
	"io/fs"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Write-through operations of a read-write dataset. Every change goes to
// the source before the call returns and drops the cached copy of what it
// touched; the mount of a read-only dataset is "ro", so the kernel refuses
// these calls before they get here.

var (
	_ gofs.NodeCreater   = (*node)(nil)
	_ gofs.NodeMkdirer   = (*node)(nil)
	_ gofs.NodeUnlinker  = (*node)(nil)
	_ gofs.NodeRmdirer   = (*node)(nil)
	_ gofs.NodeRenamer   = (*node)(nil)
	_ gofs.NodeSetattrer = (*node)(nil)
)

func (n *node) writable() (WritableSource, syscall.Errno) {
	if n.fsys.wsrc == nil {
		return nil, syscall.EROFS
	}
	return n.fsys.wsrc, 0
}

// objects returns the object store of a read-write object-store dataset.
func (n *node) objects() ObjectSource { return n.fsys.osrc }

func (n *node) newChild(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, *node, syscall.Errno) {
	p := n.child(name)
	a, err := n.fsys.src.Stat(ctx, p)
	if err != nil {
		return nil, nil, Errno(err)
	}
	n.fill(a, &out.Attr)
	c := &node{fsys: n.fsys, attr: a}
	return n.NewInode(ctx, c, stableAttr(p, a)), c, 0
}

// Create implements gofs.NodeCreater.
func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if n.objects() != nil {
		return n.objectCreate(ctx, name, flags, out)
	}
	ws, errno := n.writable()
	if errno != 0 {
		return nil, nil, 0, errno
	}
	p := n.child(name)
	if flags&syscall.O_EXCL != 0 {
		if _, err := ws.Stat(ctx, p); err == nil {
			return nil, nil, 0, syscall.EEXIST
		}
	}
	if _, err := ws.WriteAt(ctx, p, nil, 0, fs.FileMode(mode).Perm()); err != nil {
		return nil, nil, 0, Errno(err)
	}
	if flags&syscall.O_TRUNC != 0 {
		if err := ws.Truncate(ctx, p, 0); err != nil {
			return nil, nil, 0, Errno(err)
		}
	}
	n.fsys.cache.Evict(n.fsys.opts.Dataset, p)
	in, c, errno := n.newChild(ctx, name, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return in, &handle{n: c}, fuse.FOPEN_DIRECT_IO, 0
}

// Mkdir implements gofs.NodeMkdirer.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if ob := n.objects(); ob != nil {
		p := n.child(name)
		if _, err := ob.Stat(ctx, p); err == nil {
			return nil, syscall.EEXIST
		}
		if err := ob.Mkdir(ctx, p); err != nil {
			return nil, Errno(err)
		}
		in, _, errno := n.newChild(ctx, name, out)
		return in, errno
	}
	ws, errno := n.writable()
	if errno != 0 {
		return nil, errno
	}
	if err := ws.Mkdir(ctx, n.child(name), fs.FileMode(mode).Perm()); err != nil {
		return nil, Errno(err)
	}
	in, _, errno := n.newChild(ctx, name, out)
	return in, errno
}

// Unlink implements gofs.NodeUnlinker.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if ob := n.objects(); ob != nil {
		p := n.child(name)
		pending := false
		if ch := n.GetChild(name); ch != nil {
			if cn, ok := ch.Operations().(*node); ok {
				pending = cn.unlinkPending()
			}
		}
		if _, err := ob.Stat(ctx, p); err != nil {
			if pending && Errno(err) == syscall.ENOENT {
				return 0 // never stored: nothing to delete
			}
			return Errno(err)
		}
		err := ob.RemoveFile(ctx, p)
		n.fsys.cache.Evict(n.fsys.opts.Dataset, p)
		return Errno(err)
	}
	ws, errno := n.writable()
	if errno != 0 {
		return errno
	}
	p := n.child(name)
	err := ws.Remove(ctx, p)
	n.fsys.cache.Evict(n.fsys.opts.Dataset, p)
	return Errno(err)
}

// Rmdir implements gofs.NodeRmdirer.
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if ob := n.objects(); ob != nil {
		return Errno(ob.RemoveDir(ctx, n.child(name)))
	}
	return n.Unlink(ctx, name)
}

// Rename implements gofs.NodeRenamer.
func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if n.fsys.wsrc == nil && n.fsys.osrc == nil {
		return syscall.EROFS
	}
	if flags != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE / NOREPLACE are not supported
	}
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	if n.objects() != nil {
		return n.objectRename(ctx, name, np, newName)
	}
	from, to := n.child(name), np.child(newName)
	err := n.fsys.wsrc.Rename(ctx, from, to)
	n.fsys.cache.Evict(n.fsys.opts.Dataset, from)
	n.fsys.cache.Evict(n.fsys.opts.Dataset, to)
	return Errno(err)
}

// Setattr implements gofs.NodeSetattrer: size changes only.
func (n *node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && n.objects() != nil {
		if errno := n.objectSetattr(ctx, fh, int64(sz)); errno != 0 {
			return errno
		}
		return n.Getattr(ctx, fh, out)
	}
	if sz, ok := in.GetSize(); ok {
		ws, errno := n.writable()
		if errno != 0 {
			return errno
		}
		if err := ws.Truncate(ctx, n.rel(), int64(sz)); err != nil {
			return Errno(err)
		}
		n.fsys.cache.Evict(n.fsys.opts.Dataset, n.rel())
	}
	return n.Getattr(ctx, nil, out)
}
