package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// posixDataset operates on a file:// dataset's tree. Every path it takes is a
// sub-path relative to the root, and every one is resolved with posix.OpenAt
// (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS): no component may be a
// symbolic link (inside the dataset or pointing out) and nothing may resolve
// outside the root. Refusing symlinks inside the dataset too keeps namespaces
// apart: a pod that can write team-a/x cannot plant team-a/x/l -> ../../team-b
// for a later volume to follow.
type posixDataset struct {
	root string
	// source: root is a dataset's source root, whose own path may hold
	// no symbolic link (posix.SourceRoot); otherwise a dataset's mount
	// under the state directory.
	source bool
}

// ErrEscapes is returned when a sub-path crosses a symbolic link or leaves
// the dataset root.
var ErrEscapes = errors.New("sub-path crosses a symbolic link or leaves the dataset root")

// openRoot opens the dataset root as an O_PATH directory.
func (d posixDataset) openRoot() (int, error) {
	open := posix.Root(d.root).OpenRoot
	if d.source {
		open = posix.SourceRoot(d.root).OpenRoot
	}
	fd, err := open()
	if errors.Is(err, unix.ELOOP) {
		return -1, fmt.Errorf("dataset root %s: a component of the path is a symbolic link: %w", d.root, ErrEscapes)
	}
	if err != nil {
		return -1, fmt.Errorf("dataset root %s: %w", d.root, pathErrno(err))
	}
	return fd, nil
}

// openDirAt opens the directory rel beneath dirfd with posix.OpenAt and
// maps its errors to the driver's: ErrEscapes, fs.ErrNotExist or
// ErrInvalidSubPath.
func openDirAt(dirfd int, rel string) (int, error) {
	fd, err := posix.OpenAt(dirfd, rel, unix.O_PATH|unix.O_DIRECTORY, 0)
	switch {
	case err == nil:
		return fd, nil
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return -1, fmt.Errorf("%q: %w", rel, ErrEscapes)
	case errors.Is(err, unix.ENOENT):
		return -1, fmt.Errorf("%q: %w", rel, fs.ErrNotExist)
	case errors.Is(err, unix.ENOTDIR):
		return -1, fmt.Errorf("%q: a component is not a directory: %w", rel, ErrInvalidSubPath)
	case errors.Is(err, source.ErrBadPath):
		return -1, fmt.Errorf("%w: %w", ErrInvalidSubPath, pathErrno(err))
	}
	return -1, fmt.Errorf("open %q: %w", rel, pathErrno(err))
}

// pathErrno is the error inside a *fs.PathError (the errno), or err itself.
func pathErrno(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// OpenDir opens root/sub as an O_PATH directory. "" is the root itself. The
// caller closes the file; binding /proc/<pid>/fd/<n> mounts exactly the
// directory that was checked, whatever happens to the path afterwards.
func (d posixDataset) OpenDir(sub string) (*os.File, error) {
	rfd, err := d.openRoot()
	if err != nil {
		return nil, err
	}
	if sub == "" {
		return os.NewFile(uintptr(rfd), d.root), nil
	}
	defer unix.Close(rfd)
	fd, err := openDirAt(rfd, sub)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(d.root, sub)), nil
}

// Exists reports whether root/sub is a directory reachable under the rules.
func (d posixDataset) Exists(sub string) (bool, error) {
	f, err := d.OpenDir(sub)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	f.Close()
	return true, nil
}

// MkdirAll creates root/sub and its parents, mode 0755, refusing symlinks.
func (d posixDataset) MkdirAll(sub string) error {
	fd, err := d.openRoot()
	if err != nil {
		return err
	}
	for _, seg := range strings.Split(sub, "/") {
		if err := unix.Mkdirat(fd, seg, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(fd)
			return fmt.Errorf("mkdir %q in %s: %w", seg, d.root, err)
		}
		next, err := openDirAt(fd, seg)
		unix.Close(fd)
		if err != nil {
			return err
		}
		fd = next
	}
	unix.Close(fd)
	return nil
}

// moveAway renames root/sub to root/dstDir/dstName, creating dstDir. The
// rename is relative to the already-opened parent, so a path swapped for a
// symlink after the check moves the link, never what it points to.
func (d posixDataset) moveAway(sub, dstDir, dstName string) error {
	parent, base := path.Split(sub)
	pf, err := d.OpenDir(strings.TrimSuffix(parent, "/"))
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := d.MkdirAll(dstDir); err != nil {
		return err
	}
	df, err := d.OpenDir(dstDir)
	if err != nil {
		return err
	}
	defer df.Close()
	if err := unix.Renameat(int(pf.Fd()), base, int(df.Fd()), dstName); err != nil {
		return fmt.Errorf("move %q to %s/%s: %w", sub, dstDir, dstName, err)
	}
	return nil
}

// Trash renames root/sub into .cistern/trash (atomic: the volume disappears
// whole or not at all). The caller removes the trash with EmptyTrash,
// outside its locks.
func (d posixDataset) Trash(sub string) error {
	if sub == "" {
		return fmt.Errorf("refusing to remove the root of dataset %s", d.root)
	}
	name := fmt.Sprintf("%s-%d", NameHash(sub), time.Now().UnixNano())
	return d.moveAway(sub, path.Join(ReservedDir, "trash"), name)
}

// EmptyTrash removes everything in .cistern/trash, including what a crash
// left there. os.RemoveAll never follows symbolic links.
func (d posixDataset) EmptyTrash() error {
	return os.RemoveAll(filepath.Join(d.root, ReservedDir, "trash"))
}

// Archive moves root/sub to .cistern/archive/<sub>-<UTC time> and returns that
// sub-path.
func (d posixDataset) Archive(sub string, now time.Time) (string, error) {
	if sub == "" {
		return "", fmt.Errorf("refusing to archive the root of dataset %s", d.root)
	}
	dstDir, name := archiveDest(sub, now)
	if err := d.moveAway(sub, dstDir, name); err != nil {
		return "", err
	}
	return path.Join(dstDir, name), nil
}
