// Package cache is Cistern's node cache engine: dataset sources, the block
// cache with its tiers and eviction, and the FUSE file system that serves a
// dataset through it.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Attr describes a file or directory of a source.
type Attr struct {
	Mode  fs.FileMode // type bits and permissions
	Size  int64
	Mtime time.Time
	// ETag is the object store's version tag; empty for POSIX sources.
	ETag string
	// Target is a symbolic link's target.
	Target string
}

// Fingerprint identifies a version of a file's content: the ETag when the
// source has one, else size and modification time. A cached item whose
// fingerprint differs from the source's is stale.
func (a Attr) Fingerprint() string {
	if a.ETag != "" {
		return "etag:" + a.ETag
	}
	return "sm:" + strconv.FormatInt(a.Size, 10) + ":" + strconv.FormatInt(a.Mtime.UnixNano(), 10)
}

// Entry is one name in a directory listing.
type Entry struct {
	Name string
	Attr Attr
}

// Source is where a dataset's bytes come from. Paths are clean, relative,
// '/'-separated names inside the dataset ("" is its root). Errors wrap the
// errno a file system caller should see (fs.ErrNotExist for a missing name).
type Source interface {
	// Stat returns the attributes of name, without following a final
	// symbolic link.
	Stat(ctx context.Context, name string) (Attr, error)
	// List returns the entries of directory dir.
	List(ctx context.Context, dir string) ([]Entry, error)
	// ReadAt reads len(p) bytes of name at off; it returns io.EOF with a
	// short count at the end of the file.
	ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error)
}

// WritableSource is a source that a read-write dataset can change.
type WritableSource interface {
	Source
	// WriteAt writes p to name at off, creating the file (mode) if
	// needed.
	WriteAt(ctx context.Context, name string, p []byte, off int64, mode fs.FileMode) (int, error)
	Truncate(ctx context.Context, name string, size int64) error
	Mkdir(ctx context.Context, name string, mode fs.FileMode) error
	Remove(ctx context.Context, name string) error
	Rename(ctx context.Context, from, to string) error
}

// Posix serves a directory tree on the node: local disk, or a NAS/CPFS
// share the node mounts. Every path is opened beneath the root with no
// symbolic link on the way (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), so
// a link inside the dataset is shown as a link and never followed by the
// daemon.
type Posix struct {
	root string
}

// NewPosix returns a source for the directory root.
func NewPosix(root string) (*Posix, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("posix source: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("posix source: %s is not a directory", root)
	}
	return &Posix{root: root}, nil
}

func checkName(name string) error {
	if name == "" {
		return nil
	}
	if path.Clean(name) != name || strings.HasPrefix(name, "/") || name == ".." || strings.HasPrefix(name, "../") || strings.ContainsRune(name, 0) {
		return fmt.Errorf("bad path %q: %w", name, fs.ErrInvalid)
	}
	return nil
}

// open opens root/name beneath the root without following links.
func (p *Posix) open(name string, flags int, mode uint32) (*os.File, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	rfd, err := unix.Open(p.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(rfd)
	if name == "" {
		name = "."
	}
	fd, err := unix.Openat2(rfd, name, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Mode:    uint64(mode),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), path.Join(p.root, name)), nil
}

// parent opens the directory holding name and returns it with the base name.
func (p *Posix) parent(name string) (*os.File, string, error) {
	if name == "" {
		return nil, "", fmt.Errorf("the root has no parent: %w", fs.ErrInvalid)
	}
	dir, base := path.Split(name)
	f, err := p.open(strings.TrimSuffix(dir, "/"), unix.O_PATH|unix.O_DIRECTORY, 0)
	return f, base, err
}

func attrOf(st *unix.Stat_t) Attr {
	a := Attr{
		Mode:  fs.FileMode(st.Mode & 0o777),
		Size:  st.Size,
		Mtime: time.Unix(st.Mtim.Unix()),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		a.Mode |= fs.ModeDir
	case unix.S_IFLNK:
		a.Mode |= fs.ModeSymlink
	case unix.S_IFREG:
	default:
		a.Mode |= fs.ModeIrregular
	}
	return a
}

// Stat implements Source.
func (p *Posix) Stat(_ context.Context, name string) (Attr, error) {
	pf, base, err := p.parentOrRoot(name)
	if err != nil {
		return Attr{}, err
	}
	defer pf.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(pf.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH); err != nil {
		return Attr{}, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	a := attrOf(&st)
	if a.Mode&fs.ModeSymlink != 0 {
		buf := make([]byte, 4096)
		n, err := unix.Readlinkat(int(pf.Fd()), base, buf)
		if err != nil {
			return Attr{}, &fs.PathError{Op: "readlink", Path: name, Err: err}
		}
		a.Target = string(buf[:n])
	}
	return a, nil
}

func (p *Posix) parentOrRoot(name string) (*os.File, string, error) {
	if name == "" {
		f, err := p.open("", unix.O_PATH|unix.O_DIRECTORY, 0)
		return f, "", err
	}
	return p.parent(name)
}

// List implements Source.
func (p *Posix) List(ctx context.Context, dir string) ([]Entry, error) {
	f, err := p.open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(names))
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(int(f.Fd()), n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed meanwhile
			}
			return nil, &fs.PathError{Op: "stat", Path: path.Join(dir, n), Err: err}
		}
		e := Entry{Name: n, Attr: attrOf(&st)}
		if e.Attr.Mode&fs.ModeSymlink != 0 {
			if a, err := p.Stat(ctx, path.Join(dir, n)); err == nil {
				e.Attr = a
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// ReadAt implements Source.
func (p *Posix) ReadAt(_ context.Context, name string, b []byte, off int64) (int, error) {
	f, err := p.open(name, unix.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(b, off)
}

// WriteAt implements WritableSource.
func (p *Posix) WriteAt(_ context.Context, name string, b []byte, off int64, mode fs.FileMode) (int, error) {
	f, err := p.open(name, unix.O_WRONLY|unix.O_CREAT, uint32(mode.Perm()))
	if err != nil {
		return 0, err
	}
	n, werr := f.WriteAt(b, off)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	return n, werr
}

// Truncate implements WritableSource.
func (p *Posix) Truncate(_ context.Context, name string, size int64) error {
	f, err := p.open(name, unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

// Mkdir implements WritableSource.
func (p *Posix) Mkdir(_ context.Context, name string, mode fs.FileMode) error {
	pf, base, err := p.parent(name)
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := unix.Mkdirat(int(pf.Fd()), base, uint32(mode.Perm())); err != nil {
		return &fs.PathError{Op: "mkdir", Path: name, Err: err}
	}
	return nil
}

// Remove implements WritableSource: a file, a link or an empty directory.
func (p *Posix) Remove(_ context.Context, name string) error {
	pf, base, err := p.parent(name)
	if err != nil {
		return err
	}
	defer pf.Close()
	err = unix.Unlinkat(int(pf.Fd()), base, 0)
	if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EPERM) {
		err = unix.Unlinkat(int(pf.Fd()), base, unix.AT_REMOVEDIR)
	}
	if err != nil {
		return &fs.PathError{Op: "remove", Path: name, Err: err}
	}
	return nil
}

// Rename implements WritableSource.
func (p *Posix) Rename(_ context.Context, from, to string) error {
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
	if err := unix.Renameat(int(ff.Fd()), fb, int(tf.Fd()), tb); err != nil {
		return &fs.PathError{Op: "rename", Path: from, Err: err}
	}
	return nil
}

// Errno maps a source error to the errno a FUSE caller sees.
func Errno(err error) syscall.Errno {
	var errno syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, fs.ErrPermission):
		return syscall.EACCES
	case errors.Is(err, fs.ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, io.EOF):
		return 0
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return syscall.EINTR
	}
	return syscall.EIO
}
