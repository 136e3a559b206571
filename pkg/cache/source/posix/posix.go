package posix

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Source serves a directory tree. A symbolic link inside the dataset is
// shown as a link and never followed by the daemon.
type Source struct {
	root Root
}

var _ source.Writable = (*Source)(nil)

// New returns a source for the directory root.
func New(root string) (*Source, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("posix source: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("posix source: %s is not a directory", root)
	}
	return &Source{root: Root(root)}, nil
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
	a := source.Attr{
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
	a := attrOf(&st)
	if a.Mode&fs.ModeSymlink != 0 {
		buf := make([]byte, 4096)
		n, err := unix.Readlinkat(int(pf.Fd()), base, buf)
		if err != nil {
			return source.Attr{}, &fs.PathError{Op: "readlink", Path: name, Err: err}
		}
		a.Target = string(buf[:n])
	}
	return a, nil
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
		e := source.Entry{Name: n, Attr: attrOf(&st)}
		if e.Attr.Mode&fs.ModeSymlink != 0 {
			if a, err := p.Stat(ctx, path.Join(dir, n)); err == nil {
				e.Attr = a
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// ReadAt implements source.Source.
func (p *Source) ReadAt(_ context.Context, name string, b []byte, off int64) (int, error) {
	f, err := p.root.Open(name, unix.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(b, off)
}

// WriteAt implements source.Writable.
func (p *Source) WriteAt(_ context.Context, name string, b []byte, off int64, mode fs.FileMode) (int, error) {
	f, err := p.root.Open(name, unix.O_WRONLY|unix.O_CREAT, uint32(mode.Perm()))
	if err != nil {
		return 0, err
	}
	n, werr := f.WriteAt(b, off)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	return n, werr
}

// Truncate implements source.Writable.
func (p *Source) Truncate(_ context.Context, name string, size int64) error {
	f, err := p.root.Open(name, unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

// Mkdir implements source.Writable.
func (p *Source) Mkdir(_ context.Context, name string, mode fs.FileMode) error {
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

// Remove implements source.Writable: a file, a link or an empty directory.
func (p *Source) Remove(_ context.Context, name string) error {
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

// Rename implements source.Writable.
func (p *Source) Rename(_ context.Context, from, to string) error {
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
