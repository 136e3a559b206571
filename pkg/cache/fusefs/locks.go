package fusefs

import (
	"context"
	"math"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Locks of a read-write POSIX dataset are the source's, so pods on every
// node that mounts the share see each other's (a NAS's own locks). flock
// goes to the handle's source descriptor (flock belongs to an open file
// description, as a handle is). A POSIX record lock belongs to its owner
// (the kernel names one per process): each owner's locks of a file are
// open-file-description locks on a descriptor of that owner, so the
// owner's locks never conflict with each other and conflict with
// everyone else's, here and on other nodes. They go when the owner
// unlocks the whole file, or when the handle they were taken through is
// released (go-fuse does not pass FLUSH's lock owner, which a close of any
// of the owner's descriptors would release by).

// lockOwners are the descriptors of the owners holding record locks.
type lockOwners struct {
	mu  sync.Mutex
	fds map[lockOwnerKey]*os.File // guarded by mu
}

type lockOwnerKey struct {
	ino, owner uint64
}

var (
	_ gofs.FileGetlker  = (*posixHandle)(nil)
	_ gofs.FileSetlker  = (*posixHandle)(nil)
	_ gofs.FileSetlkwer = (*posixHandle)(nil)
)

// withOwnerFile calls fn with owner's descriptor of the handle's file,
// opening it first. fn runs under the table's lock, so a concurrent
// unlock of the whole file cannot close the descriptor under it.
func (h *posixHandle) withOwnerFile(owner uint64, fn func(fd uintptr) error) error {
	fsys := h.n.fsys
	key := lockOwnerKey{h.n.StableAttr().Ino, owner}
	fsys.locks.mu.Lock()
	defer fsys.locks.mu.Unlock()
	f := fsys.locks.fds[key]
	if f == nil {
		// Through /proc: the same file the handle has open, whatever its
		// name is now. The descriptor only ever locks, for any of the
		// owner's handles (the kernel checked the lock against the
		// caller's own descriptor's access mode): read-write when the
		// source lets root have it.
		var err error
		if f, err = os.OpenFile(procFD(h.f), os.O_RDWR, 0); err != nil {
			if f, err = os.OpenFile(procFD(h.f), os.O_RDONLY, 0); err != nil {
				return err
			}
		}
		fsys.locks.fds[key] = f
		h.ownersMu.Lock()
		if !slices.Contains(h.owners, owner) {
			h.owners = append(h.owners, owner)
		}
		h.ownersMu.Unlock()
	}
	return fn(f.Fd())
}

// dropOwner closes owner's descriptor of the handle's file (which
// releases whatever it still locks).
func (h *posixHandle) dropOwner(owner uint64) {
	fsys := h.n.fsys
	key := lockOwnerKey{h.n.StableAttr().Ino, owner}
	fsys.locks.mu.Lock()
	defer fsys.locks.mu.Unlock()
	if f := fsys.locks.fds[key]; f != nil {
		delete(fsys.locks.fds, key)
		f.Close()
	}
}

func procFD(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// toEOF reports whether a lock's end is the end of the file (the kernel
// says OFFSET_MAX).
func toEOF(end uint64) bool { return end >= math.MaxInt64 }

func flockT(lk *fuse.FileLock) unix.Flock_t {
	fl := unix.Flock_t{Type: int16(lk.Typ), Whence: 0, Start: int64(lk.Start)}
	if !toEOF(lk.End) {
		fl.Len = int64(lk.End - lk.Start + 1)
	}
	return fl
}

// Getlk implements gofs.FileGetlker.
func (h *posixHandle) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	fl := flockT(lk)
	if err := h.withOwnerFile(owner, func(fd uintptr) error {
		return unix.FcntlFlock(fd, unix.F_OFD_GETLK, &fl)
	}); err != nil {
		return source.Errno(err)
	}
	out.Typ = uint32(fl.Type)
	out.Start = uint64(fl.Start)
	out.End = math.MaxInt64
	if fl.Len != 0 {
		out.End = uint64(fl.Start + fl.Len - 1)
	}
	out.Pid = 0 // a lock of another open file description, maybe of another node
	return 0
}

// Setlk implements gofs.FileSetlker.
func (h *posixHandle) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return h.setlk(ctx, owner, lk, flags, false)
}

// Setlkw implements gofs.FileSetlkwer. It waits by retrying, so that an
// interrupted caller (its context cancelled) stops waiting.
func (h *posixHandle) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return h.setlk(ctx, owner, lk, flags, true)
}

func (h *posixHandle) setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, wait bool) syscall.Errno {
	try := func() error {
		if flags&fuse.FUSE_LK_FLOCK != 0 {
			op := unix.LOCK_UN
			switch lk.Typ {
			case syscall.F_RDLCK:
				op = unix.LOCK_SH
			case syscall.F_WRLCK:
				op = unix.LOCK_EX
			}
			return unix.Flock(int(h.f.Fd()), op|unix.LOCK_NB)
		}
		if lk.Typ == syscall.F_UNLCK && lk.Start == 0 && toEOF(lk.End) {
			h.dropOwner(owner) // the owner let go of the whole file
			return nil
		}
		fl := flockT(lk)
		return h.withOwnerFile(owner, func(fd uintptr) error {
			return unix.FcntlFlock(fd, unix.F_OFD_SETLK, &fl)
		})
	}
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := try()
		if err == nil {
			return 0
		}
		if !wait || (err != unix.EAGAIN && err != unix.EWOULDBLOCK) {
			return source.Errno(err)
		}
		select {
		case <-ctx.Done():
			return syscall.EINTR
		case <-time.After(delay):
		}
	}
}

// releaseOwners drops the record locks taken through the handle.
func (h *posixHandle) releaseOwners() {
	h.ownersMu.Lock()
	owners := h.owners
	h.owners = nil
	h.ownersMu.Unlock()
	for _, o := range owners {
		h.dropOwner(o)
	}
}
