// Package source defines what the cache reads datasets from: file
// attributes, directory entries, the source interfaces (read-only,
// write-through POSIX, whole-object stores), the errno a file-system caller
// sees for a source error, and the one rule for a path inside a dataset.
// One package beneath it per kind of source (posix, s3).
package source

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// Attr describes a file or directory of a source.
type Attr struct {
	Mode fs.FileMode // type bits, permissions, setuid, setgid and sticky bits
	// UID and GID own the file: a POSIX source's real owners, an object
	// store's configured ones. The kernel checks permissions against them.
	UID, GID uint32
	Size     int64
	Mtime    time.Time
	// Atime is a POSIX file's access time (zero for an object store).
	Atime time.Time
	// Nlink is the number of names of a POSIX file (1 elsewhere).
	Nlink uint32
	// Ctime, Dev and Ino are a POSIX file's change time, device and inode
	// number (zero for an object store): a file rewritten with its old
	// size and modification time still changes them, and Dev and Ino name
	// the file whatever its path.
	Ctime    time.Time
	Dev, Ino uint64
	// ETag is the object store's version tag; empty for POSIX sources.
	ETag string
	// Target is a symbolic link's target, where the source says it with
	// the attributes (see Readlinker).
	Target string
}

// Fingerprint identifies a version of a file's content: the ETag when the
// source has one, else size, modification and change times and inode
// number. A cached item whose fingerprint differs from the source's is
// stale.
func (a Attr) Fingerprint() string {
	if a.ETag != "" {
		return "etag:" + a.ETag
	}
	return fmt.Sprintf("smci:%d:%d:%d:%d", a.Size, a.Mtime.UnixNano(), a.Ctime.UnixNano(), a.Ino)
}

// Entry is one name in a directory listing.
type Entry struct {
	Name string
	Attr Attr
}

// Source is where a dataset's bytes come from. Paths are clean, relative,
// '/'-separated names inside the dataset ("" is its root; see CheckName).
// Errors wrap the errno a file system caller should see (fs.ErrNotExist for
// a missing name).
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

// AttrChange is what a chmod, chown or utimes changes; nil fields stay.
type AttrChange struct {
	Mode         *fs.FileMode // permission and special bits
	UID, GID     *uint32
	Atime, Mtime *time.Time
}

// Owner is who creates a file: the uid and gid of the calling process.
type Owner struct {
	UID, GID uint32
}

// Writable is a source that a read-write dataset changes in place (a
// POSIX tree): every change reaches the source before the call returns.
type Writable interface {
	Source
	// CreateFile creates the regular file name with exactly mode (the
	// caller's umask is already applied), owned by o (the group is the
	// parent's when the parent directory is setgid), and returns it open
	// for reading and writing. An existing file is EEXIST when excl;
	// otherwise it is returned open with flags' access mode, unchanged,
	// and created is false (the caller checks the opener's rights on the
	// descriptor's attributes).
	CreateFile(ctx context.Context, name string, mode fs.FileMode, flags int, excl bool, o Owner) (f *os.File, created bool, err error)
	// OpenFile opens the existing file name (flags as open(2): access
	// mode, O_APPEND, O_TRUNC) for a handle to write, sync and allocate
	// through; the handle follows the file through renames.
	OpenFile(ctx context.Context, name string, flags int) (*os.File, error)
	// Fsync makes name (a file or a directory) durable.
	Fsync(ctx context.Context, name string, datasync bool) error
	// Symlink creates the symbolic link name to target, owned by o.
	Symlink(ctx context.Context, target, name string, o Owner) error
	// Link makes to another name of the file from.
	Link(ctx context.Context, from, to string) error
	// Mknod creates a FIFO or a socket (devices are refused), owned by o.
	Mknod(ctx context.Context, name string, mode fs.FileMode, o Owner) error
	Truncate(ctx context.Context, name string, size int64) error
	// SetAttr changes the mode, owners or times of name (never through a
	// symbolic link: a link's own owners change, its mode cannot).
	SetAttr(ctx context.Context, name string, c AttrChange) error
	// Mkdir creates directory name with exactly mode, owned by o (as
	// CreateFile).
	Mkdir(ctx context.Context, name string, mode fs.FileMode, o Owner) error
	// Remove removes the file or link name, never a directory (EISDIR).
	Remove(ctx context.Context, name string) error
	// Rmdir removes the empty directory name, never a file (ENOTDIR).
	Rmdir(ctx context.Context, name string) error
	// Rename moves from to to; flags are renameat2(2)'s (RENAME_NOREPLACE,
	// RENAME_EXCHANGE).
	Rename(ctx context.Context, from, to string, flags uint32) error
}

// FSStats are a source's file-system figures, as statfs(2) has them.
type FSStats struct {
	Bsize                 uint32
	Blocks, Bfree, Bavail uint64
	Files, Ffree          uint64
	NameLen               uint32
}

// Readlinker is a source that reads a symbolic link's target apart from
// its attributes (a POSIX tree: reading it is an access of the link).
type Readlinker interface {
	Readlink(ctx context.Context, name string) (string, error)
}

// StatFSer is a source that knows its file system's size and use (a POSIX
// tree does; an object store does not).
type StatFSer interface {
	StatFS(ctx context.Context) (FSStats, error)
}

// Versioned reads one version of a file: a store that can make a read
// conditional (S3 If-Match on the ETag) implements it, so a block of a newer
// version is never stored under an older one's index. A read of a version
// that is gone fails with an error wrapping syscall.ESTALE.
//
// progress, if not nil, is called as bytes arrive with how many of p are
// final, so waiters for the beginning of a block need not wait for its end.
type Versioned interface {
	ReadAtVersion(ctx context.Context, name, fingerprint string, p []byte, off int64, progress func(n int)) (int, error)
}

// Objects is a writable source whose files are whole objects (S3). Its
// semantics, like mountpoint-s3's:
//   - a new file is written sequentially and stored when it is closed (or
//     fsynced); close returns only after the store accepted it, and a failed
//     upload leaves nothing behind;
//   - opening a file with O_TRUNC and writing it whole replaces the object;
//   - a write anywhere else in an existing object fails with EOPNOTSUPP;
//   - a file renames by a server-side copy; a directory does not rename
//     (EXDEV, so mv(1) copies it instead).
type Objects interface {
	Source
	// NewFile is the attributes of a file created now (mode, owners),
	// before the store has it.
	NewFile() Attr
	// Upload stores size bytes of f as name, replacing any object.
	Upload(ctx context.Context, name string, f *os.File, size int64) (Attr, error)
	// MkdirMarker writes a directory marker.
	MkdirMarker(ctx context.Context, name string) error
	// RemoveFile deletes a file; RemoveDir an empty directory.
	RemoveFile(ctx context.Context, name string) error
	RemoveDir(ctx context.Context, name string) error
	// RenameFile moves a file.
	RenameFile(ctx context.Context, from, to string, a Attr) error
}
