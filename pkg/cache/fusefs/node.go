package fusefs

import (
	"context"
	"hash/fnv"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// node is a file, directory or link of the dataset.
type node struct {
	gofs.Inode
	fsys *FS

	mu     sync.Mutex
	attr   source.Attr   // guarded by mu; last attributes seen
	upload *uploadHandle // guarded by mu; the latest write handle (object uploads only)
	// Open handles of a read-only dataset by kind: the kernel refuses
	// (EIO) a passthrough open while the inode is open through its page
	// cache, and a cached open while it is open in passthrough.
	cachedOpens, passthroughOpens int // guarded by mu
	// openedVersion is the version (see version) last opened through the
	// page cache: the kernel keeps its pages across opens only while the
	// version is the same.
	openedVersion uint64 // guarded by mu
	// used is when the kernel last looked the node up or opened it, in
	// seconds since the mount (see Prune).
	used atomic.Uint32
	// listed is when the directory was last listed into the kernel's
	// page cache, in seconds since the mount (0: never; see dircache.go).
	listed atomic.Uint32
	// forgotten: OnForget has counted the node out (go-fuse may call it
	// again when the tree changes).
	forgotten atomic.Bool
}

// version is a's version as a number (a hash of its fingerprint; 0 is
// never one): what an open compares with the version whose pages the
// kernel may hold.
func version(a source.Attr) uint64 {
	h := fnv.New64a()
	h.Write([]byte(a.Fingerprint()))
	return h.Sum64() | 1
}

// reopened records that the kernel opens n's version v through its page
// cache and reports whether the pages it holds are of v (the open may
// keep them).
func (n *node) reopened(v uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	same := n.openedVersion == v
	n.openedVersion = v
	return same
}

var (
	_ gofs.NodeLookuper    = (*node)(nil)
	_ gofs.NodeGetattrer   = (*node)(nil)
	_ gofs.NodeReadlinker  = (*node)(nil)
	_ gofs.NodeStatfser    = (*node)(nil)
	_ gofs.NodeLookupNoder = (*node)(nil)
)

// stableAttr is the identity go-fuse and the kernel know the child name of
// parent by: its inode number is also its FUSE node ID.
func (f *FS) stableAttr(parent *node, name string, a source.Attr) gofs.StableAttr {
	ino := f.inodes.number(parent.child(name), a)
	f.inodes.seen(ino, parent.StableAttr().Ino, name)
	return gofs.StableAttr{Mode: source.UnixMode(a.Mode) &^ 0o7777, Ino: ino}
}

func (n *node) fill(a source.Attr, out *fuse.Attr) {
	out.Mode = source.UnixMode(a.Mode)
	out.Owner = fuse.Owner{Uid: a.UID, Gid: a.GID}
	out.Size = uint64(a.Size)
	if a.Mode&fs.ModeSymlink != 0 && a.Target != "" {
		out.Size = uint64(len(a.Target))
	}
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 1 << 20
	out.Nlink = max(a.Nlink, 1)
	at, ct := a.Atime, a.Ctime
	if at.IsZero() {
		at = a.Mtime // an object store keeps one time
	}
	if ct.IsZero() {
		ct = a.Mtime
	}
	out.SetTimes(&at, &a.Mtime, &ct)
}

func (n *node) setAttr(a source.Attr) {
	n.mu.Lock()
	n.attr = a
	n.mu.Unlock()
}

// evict drops the cached copy of the file, known by the attributes last
// seen (a POSIX file's device and inode).
func (n *node) evict() {
	n.mu.Lock()
	a := n.attr
	n.mu.Unlock()
	n.fsys.eng.EvictFile(n.rel(), a)
}

// currentAttr returns the attributes to read with: those of a file being
// written, the remembered ones on a read-only dataset (trusted for the
// metacache period by the kernel too), fresh ones on a read-write dataset.
func (n *node) currentAttr(ctx context.Context) (source.Attr, error) {
	if a, ok := n.fsys.w.pending(n); ok {
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

// tgid returns the thread group (process) of the thread pid, which is
// what the kernel names in a request; pid itself if /proc does not say.
func tgid(pid uint32) int {
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					return n
				}
			}
		}
	}
	return int(pid)
}

// callerProcess is the process of the request in ctx (0 if unknown).
func callerProcess(ctx context.Context) int {
	if c, ok := fuse.FromContext(ctx); ok {
		return tgid(c.Pid)
	}
	return 0
}

// caller is who makes the request: the owner of what it creates.
func caller(ctx context.Context) source.Owner {
	if c, ok := fuse.FromContext(ctx); ok {
		return source.Owner{UID: c.Uid, GID: c.Gid}
	}
	return source.Owner{}
}

// newChild looks up name in the source after a change made it and returns
// its inode.
func (n *node) newChild(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, *node, syscall.Errno) {
	a, err := n.fsys.src.Stat(ctx, n.child(name))
	if err != nil {
		return nil, nil, source.Errno(err)
	}
	in, c := n.childOf(ctx, name, a, out)
	return in, c, 0
}

// childOf returns the inode of name, whose attributes are a.
func (n *node) childOf(ctx context.Context, name string, a source.Attr, out *fuse.EntryOut) (*gofs.Inode, *node) {
	n.fill(a, &out.Attr)
	sa := n.fsys.stableAttr(n, name, a)
	if in := n.GetChild(name); in != nil && in.StableAttr() == sa {
		if cur, ok := in.Operations().(*node); ok {
			// A known inode (the kernel revalidating its entry takes
			// the attributes of this reply): the fresh attributes
			// replace the remembered ones, which reads use. Throwing
			// them away served an old version, or ESTALE on an
			// object store.
			cur.setAttr(a)
			cur.touch()
			return in, cur
		}
	}
	c := &node{fsys: n.fsys, attr: a}
	c.touch()
	in := n.NewInode(ctx, c, sa)
	n.fsys.counted(in, c)
	return in, c
}

// Lookup implements gofs.NodeLookuper.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.fsys.hidden(n, name) {
		return nil, syscall.ENOENT
	}
	if in, a, ok := n.fsys.w.pendingChild(n, name); ok {
		n.fill(a, &out.Attr)
		return in, 0
	}
	if a, ok := n.fsys.fromListing(n, name); ok {
		in, _ := n.childOf(ctx, name, a, out)
		return in, 0
	}
	in, _, errno := n.newChild(ctx, name, out)
	return in, errno
}

// Getattr implements gofs.NodeGetattrer.
func (n *node) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if g, ok := fh.(gofs.FileGetattrer); ok {
		return g.Getattr(ctx, out)
	}
	if a, ok := n.fsys.w.pending(n); ok {
		n.fill(a, &out.Attr)
		return 0
	}
	a, err := n.fsys.src.Stat(ctx, n.rel())
	if err != nil {
		if errno := source.Errno(err); errno != syscall.ENOENT {
			return errno
		}
		// The kernel still holds this inode (a bind mount of a removed
		// directory, a process's cwd, a dentry cached before a change
		// behind its back) but its name is gone: the handle is stale.
		// ESTALE, not ENOENT, as NFS answers: the VFS then retries a
		// path lookup once (a stat of a removed name still gets ENOENT),
		// and the kubelet sees a broken mount it must unmount rather than
		// a path that does not exist and whose mount it skips.
		return syscall.ESTALE
	}
	n.setAttr(a)
	n.fill(a, &out.Attr)
	return 0
}

// entries lists the directory n (see dircache.go for its handles).
func (n *node) entries(ctx context.Context) ([]fuse.DirEntry, syscall.Errno) {
	gen := n.fsys.listed.generation()
	ents, err := n.fsys.src.List(ctx, n.rel())
	if err != nil {
		return nil, source.Errno(err)
	}
	if _, posix := n.fsys.src.(source.Writable); posix {
		n.fsys.listed.remember(n.StableAttr().Ino, ents, gen)
	}
	list := make([]fuse.DirEntry, 0, len(ents))
	for _, e := range ents {
		if n.fsys.hidden(n, e.Name) {
			continue
		}
		sa := n.fsys.stableAttr(n, e.Name, e.Attr)
		list = append(list, fuse.DirEntry{Name: e.Name, Mode: sa.Mode, Ino: sa.Ino})
	}
	return list, 0
}

// Readlink implements gofs.NodeReadlinker.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if r, ok := n.fsys.src.(source.Readlinker); ok {
		target, err := r.Readlink(ctx, n.rel())
		if err != nil {
			return nil, source.Errno(err)
		}
		return []byte(target), 0
	}
	a, err := n.fsys.src.Stat(ctx, n.rel())
	if err != nil {
		return nil, source.Errno(err)
	}
	if a.Mode&fs.ModeSymlink == 0 {
		return nil, syscall.EINVAL
	}
	return []byte(a.Target), 0
}

// Statfs implements gofs.NodeStatfser: the source's own figures where it
// has them (a POSIX tree); an object store has no size, and shows a large
// free space so that tools that check before writing do not refuse.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	if s, ok := n.fsys.src.(source.StatFSer); ok {
		st, err := s.StatFS(ctx)
		if err != nil {
			return source.Errno(err)
		}
		out.Bsize, out.Frsize, out.NameLen = st.Bsize, st.Bsize, st.NameLen
		out.Blocks, out.Bfree, out.Bavail = st.Blocks, st.Bfree, st.Bavail
		out.Files, out.Ffree = st.Files, st.Ffree
		return 0
	}
	out.Bsize = 1 << 20
	out.Frsize = 1 << 20
	out.NameLen = 255
	out.Blocks = 1 << 30
	out.Bfree, out.Bavail = out.Blocks, out.Blocks
	return 0
}

// LookupNode implements gofs.NodeLookupNoder (asked of the root): the file
// behind a node ID the kernel holds that this process never handed out (a
// connection taken over from an earlier daemon). The inode table knows
// where the number was last seen; the path is looked up from the root and
// joined to the tree, and must still name the same file.
func (n *node) LookupNode(ctx context.Context, id uint64, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	names, ok := n.fsys.inodes.path(id)
	if !ok {
		return nil, syscall.ESTALE
	}
	cur := n
	var in *gofs.Inode
	for _, name := range names {
		var errno syscall.Errno
		if in, errno = cur.Lookup(ctx, name, out); errno != 0 {
			if errno == syscall.ENOENT {
				errno = syscall.ESTALE
			}
			return nil, errno
		}
		if cur.GetChild(name) != in {
			cur.AddChild(name, in, true)
		}
		next, ok := in.Operations().(*node)
		if !ok {
			return nil, syscall.ESTALE
		}
		cur = next
	}
	if in == nil || in.StableAttr().Ino != id {
		return nil, syscall.ESTALE // the name holds another file now
	}
	return in, 0
}
