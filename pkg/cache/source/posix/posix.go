package posix

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Source serves a directory tree. A symbolic link inside the dataset is
// shown as a link and never followed by the daemon.
type Source struct {
	root SourceRoot
}

var _ source.Writable = (*Source)(nil)

// ErrSymlinkInRoot is returned for a source root reached through a
// symbolic link.
var ErrSymlinkInRoot = errors.New("a component of the path is a symbolic link")

// New returns a source for the directory root, which must be a directory
// reached with no symbolic link on its path.
func New(root string) (*Source, error) {
	r := SourceRoot(root)
	fd, err := r.OpenRoot()
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("posix source %s: %w; name the real directory", root, ErrSymlinkInRoot)
	}
	if err != nil {
		return nil, fmt.Errorf("posix source: %w", err)
	}
	unix.Close(fd)
	return &Source{root: r}, nil
}

// parent opens the directory holding name and returns it with the base name.
func (p *Source) parent(name string) (*os.File, string, error) {
	if name == "" {
		return nil, "", fmt.Errorf("the root has no parent: %w", fs.ErrInvalid)
	}
	if err := source.CheckName(name); err != nil {
		return nil, "", &fs.PathError{Op: "open", Path: name, Err: err}
	}
	dir, base := path.Split(name)
	f, err := p.root.OpenDir(strings.TrimSuffix(dir, "/"))
	return f, base, err
}

// parentOrRoot is parent, and the root itself for "".
func (p *Source) parentOrRoot(name string) (*os.File, string, error) {
	if name == "" {
		f, err := p.root.OpenDir("")
		return f, "", err
	}
	return p.parent(name)
}

func attrOf(st *unix.Stat_t) source.Attr {
	return source.StatAttr(st)
}

// Stat implements source.Source.
func (p *Source) Stat(_ context.Context, name string) (source.Attr, error) {
	pf, base, err := p.parentOrRoot(name)
	if err != nil {
		return source.Attr{}, err
	}
	defer pf.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(pf.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH); err != nil {
		return source.Attr{}, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	// A link's target is read by Readlink only: reading it here would
	// change the link's access time at every lookup.
	return attrOf(&st), nil
}

// Readlink implements source.Readlinker.
func (p *Source) Readlink(_ context.Context, name string) (string, error) {
	pf, base, err := p.parent(name)
	if err != nil {
		return "", err
	}
	defer pf.Close()
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(int(pf.Fd()), base, buf)
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
	}
	return string(buf[:n]), nil
}

// List implements source.Source.
func (p *Source) List(ctx context.Context, dir string) ([]source.Entry, error) {
	f, err := p.root.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	out := make([]source.Entry, 0, len(names))
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(int(f.Fd()), n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed meanwhile
			}
			return nil, &fs.PathError{Op: "stat", Path: path.Join(dir, n), Err: err}
		}
		out = append(out, source.Entry{Name: n, Attr: attrOf(&st)})
	}
	return out, nil
}

// ReadAt implements source.Source.
func (p *Source) ReadAt(_ context.Context, name string, b []byte, off int64) (int, error) {
	f, err := p.openRegular(name, unix.O_RDONLY)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(b, off)
}

// openRegular opens name beneath the root without following a final
// symbolic link, and only if it is a regular file (see regularFile).
func (p *Source) openRegular(name string, flags int) (*os.File, error) {
	f, err := p.root.Open(name, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	return regularFile(f, name, flags)
}

// regularFile returns f, opened with O_NONBLOCK, if it is a regular file,
// with O_NONBLOCK cleared; else it closes f. O_NONBLOCK keeps an open of a
// FIFO put in the place of a file from waiting for a writer forever.
func regularFile(f *os.File, name string, flags int) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG {
		f.Close()
		errno := unix.EINVAL
		if t == unix.S_IFDIR {
			errno = unix.EISDIR
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: errno}
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFL, flags&(unix.O_APPEND|unix.O_DIRECT)); err != nil {
		f.Close()
		return nil, &fs.PathError{Op: "fcntl", Path: name, Err: err}
	}
	return f, nil
}

// Truncate implements source.Writable.
func (p *Source) Truncate(_ context.Context, name string, size int64) error {
	f, err := p.openRegular(name, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

// StatFS implements source.StatFSer: the figures of the file system the
// tree lives on.
func (p *Source) StatFS(context.Context) (source.FSStats, error) {
	fd, err := p.root.OpenRoot()
	if err != nil {
		return source.FSStats{}, err
	}
	defer unix.Close(fd)
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return source.FSStats{}, &fs.PathError{Op: "statfs", Path: string(p.root), Err: err}
	}
	return source.FSStats{Bsize: uint32(st.Bsize), Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail,
		Files: st.Files, Ffree: st.Ffree, NameLen: uint32(st.Namelen)}, nil
}

// SetAttr implements source.Writable. The file is opened beneath the root
// without following links (O_PATH), and changed through that descriptor.
func (p *Source) SetAttr(_ context.Context, name string, c source.AttrChange) error {
	f, err := p.root.Open(name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	link := st.Mode&unix.S_IFMT == unix.S_IFLNK
	// An O_PATH descriptor is changed through its /proc link, which
	// names exactly the opened file.
	proc := fmt.Sprintf("/proc/self/fd/%d", fd)
	if c.UID != nil || c.GID != nil {
		uid, gid := -1, -1
		if c.UID != nil {
			uid = int(*c.UID)
		}
		if c.GID != nil {
			gid = int(*c.GID)
		}
		if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &fs.PathError{Op: "chown", Path: name, Err: err}
		}
	}
	if c.Mode != nil {
		if link {
			return &fs.PathError{Op: "chmod", Path: name, Err: unix.EOPNOTSUPP}
		}
		if err := unix.Chmod(proc, source.UnixMode(*c.Mode)&0o7777); err != nil {
			return &fs.PathError{Op: "chmod", Path: name, Err: err}
		}
	}
	if c.Atime != nil || c.Mtime != nil {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if c.Atime != nil {
			ts[0] = unix.NsecToTimespec(c.Atime.UnixNano())
		}
		if c.Mtime != nil {
			ts[1] = unix.NsecToTimespec(c.Mtime.UnixNano())
		}
		flags := 0
		target := proc
		if link {
			// utimensat cannot follow /proc to a link: set the link's
			// times by name in its (checked) parent.
			pf, base, err := p.parent(name)
			if err != nil {
				return err
			}
			defer pf.Close()
			return utimes(int(pf.Fd()), base, ts, unix.AT_SYMLINK_NOFOLLOW, name)
		}
		return utimes(unix.AT_FDCWD, target, ts, flags, name)
	}
	return nil
}

func utimes(dirfd int, path string, ts []unix.Timespec, flags int, name string) error {
	if err := unix.UtimesNanoAt(dirfd, path, ts, flags); err != nil {
		return &fs.PathError{Op: "utimes", Path: name, Err: err}
	}
	return nil
}

// Mkdir implements source.Writable.
func (p *Source) Mkdir(_ context.Context, name string, mode fs.FileMode, o source.Owner) error {
	pf, base, err := p.parent(name)
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := unix.Mkdirat(int(pf.Fd()), base, 0); err != nil {
		return &fs.PathError{Op: "mkdir", Path: name, Err: err}
	}
	fd, err := openMade(pf, base, name, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return own(pf, fd, name, mode|fs.ModeDir, o)
}

// Remove implements source.Writable: a file or a link (Rmdir removes a
// directory).
func (p *Source) Remove(_ context.Context, name string) error {
	// Never as a directory: a directory put in the place of the file
	// behind the kernel's back is left alone (EISDIR); Rmdir removes one.
	return p.unlink(name, "remove", 0)
}

// unlink runs unlinkat(2) with flags on name in its parent.
func (p *Source) unlink(name, op string, flags int) error {
	pf, base, err := p.parent(name)
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := unix.Unlinkat(int(pf.Fd()), base, flags); err != nil {
		return &fs.PathError{Op: op, Path: name, Err: err}
	}
	return nil
}

// Rmdir implements source.Writable: it removes the directory name and
// nothing else; a file put in its place behind the kernel's back is left
// alone (ENOTDIR).
func (p *Source) Rmdir(_ context.Context, name string) error {
	return p.unlink(name, "rmdir", unix.AT_REMOVEDIR)
}

// twoNames runs fn with the parent directories and base names of from
// and to (renameat2, linkat), naming an error as op of name.
func (p *Source) twoNames(from, to, op, name string, fn func(ffd int, fb string, tfd int, tb string) error) error {
	ff, fb, err := p.parent(from)
	if err != nil {
		return err
	}
	defer ff.Close()
	tf, tb, err := p.parent(to)
	if err != nil {
		return err
	}
	defer tf.Close()
	if err := fn(int(ff.Fd()), fb, int(tf.Fd()), tb); err != nil {
		return &fs.PathError{Op: op, Path: name, Err: err}
	}
	return nil
}

// Rename implements source.Writable.
func (p *Source) Rename(_ context.Context, from, to string, flags uint32) error {
	// RENAME_WHITEOUT would leave a character device behind, which the
	// daemon (root) must not make for a pod.
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		return &fs.PathError{Op: "rename", Path: from, Err: unix.EINVAL}
	}
	return p.twoNames(from, to, "rename", from, func(ffd int, fb string, tfd int, tb string) error {
		return unix.Renameat2(ffd, fb, tfd, tb, uint(flags))
	})
}

// OpenFile implements source.Writable: the file is opened beneath the root,
// never through a symbolic link.
func (p *Source) OpenFile(_ context.Context, name string, flags int) (*os.File, error) {
	flags &= unix.O_ACCMODE | unix.O_APPEND | unix.O_TRUNC | unix.O_SYNC | unix.O_DSYNC
	return p.openRegular(name, flags)
}

// Fsync implements source.Writable.
func (p *Source) Fsync(_ context.Context, name string, datasync bool) error {
	f, err := p.root.Open(name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if datasync {
		err = unix.Fdatasync(int(f.Fd()))
	} else {
		err = unix.Fsync(int(f.Fd()))
	}
	if err != nil {
		return &fs.PathError{Op: "fsync", Path: name, Err: err}
	}
	return nil
}

// Symlink implements source.Writable.
func (p *Source) Symlink(_ context.Context, target, name string, o source.Owner) error {
	pf, base, err := p.parent(name)
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := unix.Symlinkat(target, int(pf.Fd()), base); err != nil {
		return &fs.PathError{Op: "symlink", Path: name, Err: err}
	}
	fd, err := openMade(pf, base, name, unix.O_PATH, unix.S_IFLNK)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	gid := o.GID
	var pst unix.Stat_t
	if err := unix.Fstat(int(pf.Fd()), &pst); err == nil && pst.Mode&unix.S_ISGID != 0 {
		gid = pst.Gid
	}
	if err := unix.Fchownat(fd, "", int(o.UID), int(gid), unix.AT_EMPTY_PATH); err != nil {
		return &fs.PathError{Op: "chown", Path: name, Err: err}
	}
	return nil
}

// Link implements source.Writable: neither name is followed through a
// link; a link to a directory is refused by the kernel.
func (p *Source) Link(_ context.Context, from, to string) error {
	return p.twoNames(from, to, "link", to, func(ffd int, fb string, tfd int, tb string) error {
		return unix.Linkat(ffd, fb, tfd, tb, 0)
	})
}

// Mknod implements source.Writable: FIFOs and sockets. Device nodes are
// refused (EPERM): a tenant's device node on a shared dataset would be a
// door to the node's devices wherever the dataset is mounted without nodev
// (Cistern's mounts are nodev, other clients of a share may not be).
func (p *Source) Mknod(_ context.Context, name string, mode fs.FileMode, o source.Owner) error {
	var typ uint32
	switch {
	case mode&fs.ModeNamedPipe != 0:
		typ = unix.S_IFIFO
	case mode&fs.ModeSocket != 0:
		typ = unix.S_IFSOCK
	default:
		return &fs.PathError{Op: "mknod", Path: name, Err: unix.EPERM}
	}
	pf, base, err := p.parent(name)
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := unix.Mknodat(int(pf.Fd()), base, typ, 0); err != nil {
		return &fs.PathError{Op: "mknod", Path: name, Err: err}
	}
	fd, err := openMade(pf, base, name, unix.O_PATH, typ)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return own(pf, fd, name, mode, o)
}
