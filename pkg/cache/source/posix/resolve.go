// Package posix serves a dataset from a directory tree on the node (local
// disk, or a NAS/CPFS share the node mounts), and holds the one resolver of
// paths beneath a root that the driver shares: every path is opened with
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), so
// no component may be a symbolic link (inside the tree or pointing out) and
// nothing resolves outside the root, whatever the tree does meanwhile.
package posix

import (
	"io/fs"
	"os"
	"path"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// resolveFlags refuse every symbolic link and every way out of the root.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// OpenAt opens name beneath the directory dirfd under the rules above, with
// flags (O_CLOEXEC is added) and mode. "" is dirfd's directory itself.
// Errors are *fs.PathError wrapping the errno: EXDEV or ELOOP for a path
// that crosses a link or leaves the root, ENOENT, ENOTDIR.
func OpenAt(dirfd int, name string, flags int, mode uint32) (int, error) {
	if err := source.CheckName(name); err != nil {
		return -1, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	if name == "" {
		name = "."
	}
	fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Mode:    uint64(mode),
		Resolve: resolveFlags,
	})
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return fd, nil
}

// Root is a directory tree on the node, opened afresh by path at each call
// (the share behind it may be remounted). Its own path may hold symbolic
// links (a mount point under a state directory, say); see SourceRoot.
type Root string

// OpenRoot opens the root itself as an O_PATH directory.
func (r Root) OpenRoot() (int, error) {
	fd, err := unix.Open(string(r), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: string(r), Err: err}
	}
	return fd, nil
}

// Open opens name beneath the root (see OpenAt).
func (r Root) Open(name string, flags int, mode uint32) (*os.File, error) {
	return openIn(r.OpenRoot, string(r), name, flags, mode)
}

// OpenDir opens name beneath the root as an O_PATH directory. Binding
// /proc/<pid>/fd/<n> of it mounts exactly the directory that was checked.
func (r Root) OpenDir(name string) (*os.File, error) {
	return r.Open(name, unix.O_PATH|unix.O_DIRECTORY, 0)
}

// SourceRoot is a dataset's source root: no component of its own path
// may be a symbolic link either, so a link planted under a directory an
// administrator allowed cannot lead a dataset out of it.
type SourceRoot string

// OpenRoot opens the root itself as an O_PATH directory; a symbolic link
// anywhere in its path fails with ELOOP.
func (r SourceRoot) OpenRoot() (int, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, string(r), &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: string(r), Err: err}
	}
	return fd, nil
}

// Open opens name beneath the root (see OpenAt).
func (r SourceRoot) Open(name string, flags int, mode uint32) (*os.File, error) {
	return openIn(r.OpenRoot, string(r), name, flags, mode)
}

// OpenDir opens name beneath the root as an O_PATH directory.
func (r SourceRoot) OpenDir(name string) (*os.File, error) {
	return r.Open(name, unix.O_PATH|unix.O_DIRECTORY, 0)
}

func openIn(openRoot func() (int, error), root, name string, flags int, mode uint32) (*os.File, error) {
	rfd, err := openRoot()
	if err != nil {
		return nil, err
	}
	defer unix.Close(rfd)
	fd, err := OpenAt(rfd, name, flags, mode)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path.Join(root, name)), nil
}
