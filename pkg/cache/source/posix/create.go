package posix

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// What this daemon (root) makes for a caller is made private to root,
// held by a descriptor (checked to be what was made, where it was not
// opened in the same step) and only then given to its owner with its
// mode, through that descriptor.

// CreateFile implements source.Writable: it creates the file name owned
// by o with exactly mode and returns it open for reading and writing (the
// creator writes what it created, whatever the mode). created is false
// when the name was taken meanwhile and excl is not set: the existing
// regular file is returned open with flags, for the caller to check the
// opener's rights on (its attributes are the descriptor's). Either way
// the descriptor is opened in the same step as the name is resolved, so
// a file swapped in meanwhile is never the one written.
func (p *Source) CreateFile(_ context.Context, name string, mode fs.FileMode, flags int, excl bool, o source.Owner) (f *os.File, created bool, err error) {
	pf, base, err := p.parent(name)
	if err != nil {
		return nil, false, err
	}
	defer pf.Close()
	keep := flags & (unix.O_APPEND | unix.O_SYNC | unix.O_DSYNC)
	fd, err := OpenAt(int(pf.Fd()), base, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|keep, 0o600)
	if err == nil {
		f := os.NewFile(uintptr(fd), name)
		if err := own(pf, fd, name, mode, o); err != nil {
			f.Close()
			return nil, false, err
		}
		return f, true, nil
	}
	if !errors.Is(err, unix.EEXIST) || excl {
		return nil, false, err
	}
	acc := flags & unix.O_ACCMODE
	fd, err = OpenAt(int(pf.Fd()), base, acc|keep|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, false, err
	}
	f, err = regularFile(os.NewFile(uintptr(fd), name), name, flags)
	return f, false, err
}

// openMade opens base in pf, which this daemon just made of type typ
// with no permission bits, to give it to its owner through the
// descriptor, and checks it is still what was made: another node may
// have put something else in its place meanwhile, which must not be
// given away (ESTALE). Only links, which have no mode, go unchecked but
// for their type.
func openMade(pf *os.File, base, name string, flags int, typ uint32) (int, error) {
	fd, err := OpenAt(int(pf.Fd()), base, flags|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	if st.Mode&unix.S_IFMT != typ || (typ != unix.S_IFLNK && st.Mode&0o777 != 0) {
		unix.Close(fd)
		return -1, &fs.PathError{Op: "create", Path: name, Err: unix.ESTALE}
	}
	return fd, nil
}

// own gives a file or directory this daemon (root) just created to its
// owner o, with exactly mode: the group is the parent's when the parent is
// setgid (and a directory inherits the setgid bit), else o's.
func own(parent *os.File, fd int, name string, mode fs.FileMode, o source.Owner) error {
	var pst unix.Stat_t
	if err := unix.Fstat(int(parent.Fd()), &pst); err != nil {
		return &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	gid := o.GID
	if pst.Mode&unix.S_ISGID != 0 {
		gid = pst.Gid
	}
	// Through the descriptor (an O_PATH one for a FIFO, which an open for
	// reading would wait on): exactly the file just created.
	if err := unix.Fchownat(fd, "", int(o.UID), int(gid), unix.AT_EMPTY_PATH); err != nil {
		return &fs.PathError{Op: "chown", Path: name, Err: err}
	}
	// After chown, which clears setuid and setgid bits.
	um := source.UnixMode(mode) & 0o7777
	if pst.Mode&unix.S_ISGID != 0 && mode.IsDir() {
		um |= unix.S_ISGID
	}
	if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), um); err != nil {
		return &fs.PathError{Op: "chmod", Path: name, Err: err}
	}
	return nil
}
