package fusefs

import (
	"context"
	"io"
	"io/fs"
	"os"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

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

func (w posixWriter) open(ctx context.Context, n *node, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	h, a, errno := w.openHandle(ctx, n, n.rel(), flags&^syscall.O_TRUNC)
	if errno != 0 {
		return nil, 0, errno
	}
	// The name may hold another file than the kernel's inode by now
	// (renamed over on another node): ESTALE has the kernel look the
	// name up again and open the file it now names.
	if n.fsys.inodes.number(n.rel(), h.id) != n.StableAttr().Ino {
		h.f.Close()
		return nil, 0, syscall.ESTALE
	}
	if flags&syscall.O_TRUNC != 0 {
		if err := truncateOpen(h.f, int(flags)&syscall.O_ACCMODE); err != nil {
			h.f.Close()
			return nil, 0, source.Errno(err)
		}
		h.evict()
		a = source.Attr{} // another version than the open's
	}
	if h.appendOnly {
		// The kernel writes through its page cache at the end it
		// believes in, which another node's append may have moved:
		// an appender's writes and reads go to the daemon.
		return h, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
	}
	return h, n.pageCacheFlags(a), 0
}

// pageCacheFlags are the open flags of a file of a read-write POSIX
// dataset whose descriptor shows version a (zero: unknown). Its reads and
// writes go through the kernel's page cache (writes through it to the
// daemon, which writes the source before answering). The kernel keeps the
// pages it holds only if they are of a's version; else it drops them, and
// its attributes are invalidated as well: a file grown on another node
// within the metacache period would be read to its old size. An open thus
// sees every change closed before it on any node (close-to-open), as NFS
// gives.
//
// FLUSH is not asked for: writes are on the source before they are
// answered, and record locks are released with the open file.
func (n *node) pageCacheFlags(a source.Attr) uint32 {
	var v uint64
	if a.Ino != 0 {
		v = version(a)
	}
	if v != 0 && n.reopened(v) {
		return fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH
	}
	if v == 0 {
		n.reopened(0)
	}
	n.fsys.invalidateAttr(n)
	return fuse.FOPEN_NOFLUSH
}

// openHandle opens n in the source for a handle: writes, fsync and
// fallocate go through that descriptor, which follows the file through
// renames.
// (p is n's path: a node being created is not in the tree yet.)
func (w posixWriter) openHandle(ctx context.Context, n *node, p string, flags uint32) (*posixHandle, source.Attr, syscall.Errno) {
	f, err := w.src.OpenFile(ctx, p, int(flags))
	if err != nil {
		return nil, source.Attr{}, source.Errno(err)
	}
	acc := int(flags) & syscall.O_ACCMODE
	h, a, err := newPosixHandle(n, f, acc != syscall.O_RDONLY, flags&syscall.O_APPEND != 0)
	return h, a, source.Errno(err)
}

// newPosixHandle makes a handle of the open file f (closed on error) and
// returns the file's attributes as it was opened.
func newPosixHandle(n *node, f *os.File, writable, appendOnly bool) (*posixHandle, source.Attr, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, source.Attr{}, err
	}
	a := source.StatAttr(&st)
	return &posixHandle{handle: handle{n: n}, f: f, writable: writable, appendOnly: appendOnly,
		id: source.Attr{Dev: a.Dev, Ino: a.Ino}}, a, nil
}

// write is only called for handles that are not posixHandles.
func (w posixWriter) write(ctx context.Context, n *node, data []byte, off int64) (uint32, syscall.Errno) {
	return 0, syscall.EBADF
}

// posixHandle is a file of a read-write POSIX dataset open through the
// mount, with a source descriptor opened with it: it follows the file
// through renames and outlives an unlink, as POSIX wants of an open file.
// Writes, fsync and fallocate go through it, and so do the reads of a
// handle open for writing; a read-only handle reads through the cache, and
// through the descriptor once the file has no name.
type posixHandle struct {
	handle
	f          *os.File
	writable   bool        // opened for writing
	appendOnly bool        // O_APPEND: every write at the end, as the source has it
	id         source.Attr // the file's device and inode: what its cached copy is known by

	ownersMu sync.Mutex
	owners   []uint64 // guarded by ownersMu; lock owners that took record locks through it
}

var (
	_ gofs.FileReader    = (*posixHandle)(nil)
	_ gofs.FileGetattrer = (*posixHandle)(nil)
)

// Getattr answers fstat(2) from the handle's own descriptor: an open file
// that was renamed or unlinked still has attributes (nlink 0).
func (h *posixHandle) Getattr(_ context.Context, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(int(h.f.Fd()), &st); err != nil {
		return source.Errno(err)
	}
	a := source.StatAttr(&st)
	h.n.fill(a, &out.Attr)
	if a.Nlink == 0 {
		out.Nlink = 0 // fill shows at least 1 for a named file
	}
	return 0
}

// Read implements gofs.FileReader.
func (h *posixHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if !h.writable {
		r, errno := h.n.read(ctx, dest, off)
		if errno != syscall.ENOENT {
			return r, errno
		}
	}
	k, err := h.f.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, source.Errno(err)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

var (
	_ gofs.FileWriter    = (*posixHandle)(nil)
	_ gofs.FileFsyncer   = (*posixHandle)(nil)
	_ gofs.FileAllocater = (*posixHandle)(nil)
	_ gofs.FileReleaser  = (*posixHandle)(nil)
)

// Write writes through to the source; the cached copy is dropped.
func (h *posixHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if !h.writable {
		return 0, syscall.EBADF
	}
	// Its listed attributes are old (listing.go).
	h.n.fsys.listed.forgetAll()
	defer h.n.fsys.listed.forgetAll()
	// Before the write, as the kernel does: a write that cannot drop
	// the bits writes nothing, and one that did is never refused after
	// its data landed.
	if caller(ctx).UID != 0 {
		if err := killPrivileges(h.f); err != nil {
			return 0, source.Errno(err)
		}
	}
	var k int
	var err error
	if h.appendOnly {
		k, err = h.f.Write(data)
	} else {
		k, err = h.f.WriteAt(data, off)
	}
	h.evict()
	if k > 0 {
		err = nil // a short write reports what it wrote
	}
	return uint32(k), source.Errno(err)
}

// killPrivileges clears the setuid bit, and the setgid bit of a group
// executable file, after a write by anyone but root, as the kernel does
// for a write of its own file systems (the daemon writes as root, which
// keeps them).
func killPrivileges(f *os.File) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	mode := st.Mode & 0o7777
	kill := uint32(syscall.S_ISUID)
	if mode&0o010 != 0 {
		kill |= syscall.S_ISGID
	}
	if mode&kill == 0 {
		return nil
	}
	return syscall.Fchmod(int(f.Fd()), mode&^kill)
}

// Fsync makes the file durable in the source before it returns.
func (h *posixHandle) Fsync(_ context.Context, flags uint32) syscall.Errno {
	var err error
	if flags&1 != 0 {
		err = syscall.Fdatasync(int(h.f.Fd()))
	} else {
		err = h.f.Sync()
	}
	return source.Errno(err)
}

// Allocate implements fallocate(2) on the source file.
func (h *posixHandle) Allocate(_ context.Context, off, size uint64, mode uint32) syscall.Errno {
	if !h.writable {
		return syscall.EBADF
	}
	h.n.fsys.listed.forgetAll()
	defer h.n.fsys.listed.forgetAll()
	err := syscall.Fallocate(int(h.f.Fd()), mode, int64(off), int64(size))
	h.evict()
	return source.Errno(err)
}

// evict drops the cached copy of the file the handle has open, known by
// its device and inode whatever its name is now.
func (h *posixHandle) evict() { h.n.fsys.eng.EvictFile(h.n.rel(), h.id) }

// Release closes the source descriptor.
func (h *posixHandle) Release(ctx context.Context) syscall.Errno {
	h.releaseOwners()
	h.f.Close()
	return h.handle.Release(ctx)
}

// create creates a file owned by the caller with the mode it asked for
// (the kernel applied its umask) and opens it: the handle has the
// descriptor the source created the file with, or opened the file
// another node made meanwhile with (checked against the caller's rights
// and truncated through that descriptor). No name is looked up twice, so
// a file swapped in between is never the one opened.
func (w posixWriter) create(ctx context.Context, parent *node, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	p := parent.child(name)
	f, created, err := w.src.CreateFile(ctx, p, source.FileMode(mode), int(flags), flags&syscall.O_EXCL != 0, caller(ctx))
	if err != nil {
		return nil, nil, 0, source.Errno(err)
	}
	acc := int(flags) & syscall.O_ACCMODE
	if !created {
		// Made behind the kernel's back (it believed the name free):
		// opened as open(2) opens an existing file, with the caller's
		// rights, not a creator's.
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			return nil, nil, 0, source.Errno(err)
		}
		a := source.StatAttr(&st)
		if !mayOpen(a, caller(ctx), int(flags)) {
			f.Close()
			return nil, nil, 0, syscall.EACCES
		}
		if flags&syscall.O_TRUNC != 0 {
			if err := truncateOpen(f, acc); err != nil {
				f.Close()
				return nil, nil, 0, source.Errno(err)
			}
		}
		parent.fsys.eng.EvictFile(p, a)
	}
	in, c, errno := parent.newChild(ctx, name, out)
	if errno != 0 {
		f.Close()
		return nil, nil, 0, errno
	}
	h, a, err := newPosixHandle(c, f, created || acc != syscall.O_RDONLY, flags&syscall.O_APPEND != 0)
	if err != nil {
		return nil, nil, 0, source.Errno(err)
	}
	if h.appendOnly {
		return in, h, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0 // see open
	}
	return in, h, c.pageCacheFlags(a), 0
}

// truncateOpen empties the open file f, also when it is open read-only
// (O_RDONLY|O_TRUNC truncates on Linux): then through a writable
// descriptor of the same file, reopened through /proc.
func truncateOpen(f *os.File, acc int) error {
	if acc != syscall.O_RDONLY {
		return f.Truncate(0)
	}
	w, err := os.OpenFile(procFD(f), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer w.Close()
	return w.Truncate(0)
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
	// Nothing to evict: a POSIX file's cached copy is its inode's, which
	// losing a name does not change (the cleaner drops it once unused).
	return source.Errno(w.src.Remove(ctx, p))
}

// rmdir removes an empty directory, never a file that took its name
// behind the kernel's back.
func (w posixWriter) rmdir(ctx context.Context, parent *node, name string) syscall.Errno {
	return source.Errno(w.src.Rmdir(ctx, parent.child(name)))
}

func (w posixWriter) rename(ctx context.Context, parent *node, name string, np *node, newName string, flags uint32) syscall.Errno {
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
	err := w.src.Rename(ctx, from, to, flags)
	for _, e := range []struct {
		path string
		dir  bool
	}{{from, fromDir}, {to, toDir}} {
		if e.dir {
			parent.fsys.eng.ForgetTree(e.path)
		} else {
			parent.fsys.eng.EvictFile(e.path, source.Attr{})
		}
	}
	return source.Errno(err)
}

func (w posixWriter) setSize(ctx context.Context, n *node, fh gofs.FileHandle, size int64) syscall.Errno {
	var err error
	if h, ok := fh.(*posixHandle); ok && h.writable {
		err = h.f.Truncate(size) // ftruncate: the file this handle has open
	} else {
		err = w.src.Truncate(ctx, n.rel(), size)
	}
	if err != nil {
		return source.Errno(err)
	}
	n.evict()
	return 0
}

func (w posixWriter) setAttr(ctx context.Context, n *node, c source.AttrChange) syscall.Errno {
	if err := w.src.SetAttr(ctx, n.rel(), c); err != nil {
		return source.Errno(err)
	}
	if c.Mtime != nil {
		n.evict() // the fingerprint changed
	}
	return 0
}

func (w posixWriter) symlink(ctx context.Context, parent *node, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if err := w.src.Symlink(ctx, target, parent.child(name), caller(ctx)); err != nil {
		return nil, source.Errno(err)
	}
	in, _, errno := parent.newChild(ctx, name, out)
	return in, errno
}

// link makes another name of target; the inode table knows a POSIX file
// by device and inode, so both names are one inode to the kernel.
func (w posixWriter) link(ctx context.Context, target *node, parent *node, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if err := w.src.Link(ctx, target.rel(), parent.child(name)); err != nil {
		return nil, source.Errno(err)
	}
	target.evict() // its ctime changed
	in, _, errno := parent.newChild(ctx, name, out)
	return in, errno
}

func (w posixWriter) mknod(ctx context.Context, parent *node, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	fm := source.FileMode(mode)
	switch mode & syscall.S_IFMT {
	case syscall.S_IFIFO:
		fm |= fs.ModeNamedPipe
	case syscall.S_IFSOCK:
		fm |= fs.ModeSocket
	case syscall.S_IFREG, 0:
		// mknod of a regular file: create it.
		f, _, err := w.src.CreateFile(ctx, parent.child(name), fm, syscall.O_WRONLY, true, caller(ctx))
		if err != nil {
			return nil, source.Errno(err)
		}
		f.Close()
		in, _, errno := parent.newChild(ctx, name, out)
		return in, errno
	default:
		return nil, syscall.EPERM // device nodes: refused by policy
	}
	if err := w.src.Mknod(ctx, parent.child(name), fm, caller(ctx)); err != nil {
		return nil, source.Errno(err)
	}
	in, _, errno := parent.newChild(ctx, name, out)
	return in, errno
}

func (w posixWriter) fsync(ctx context.Context, n *node, datasync bool) syscall.Errno {
	return source.Errno(w.src.Fsync(ctx, n.rel(), datasync))
}

// mayOpen reports whether the caller may open the existing file a with
// flags' access mode, by its owner, group and mode bits (the caller's
// supplementary groups are not known here: a member by one of them is
// refused, never a stranger let in).
func mayOpen(a source.Attr, c source.Owner, flags int) bool {
	if c.UID == 0 {
		return true
	}
	perm := uint32(a.Mode.Perm())
	var bits uint32
	switch {
	case a.UID == c.UID:
		bits = perm >> 6 & 7
	case a.GID == c.GID:
		bits = perm >> 3 & 7
	default:
		bits = perm & 7
	}
	var need uint32
	switch flags & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		need = 4
	case syscall.O_WRONLY:
		need = 2
	default:
		need = 6
	}
	if flags&syscall.O_TRUNC != 0 {
		need |= 2
	}
	return bits&need == need
}
