package session

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// FUSE passthrough on a session: the file system registers the backing
// file of a node before it answers an OPEN with FOPEN_PASSTHROUGH, and the
// session puts the backing ID in that reply. The kernel takes one backing
// file per inode while any passthrough open of it lasts, so a node keeps
// one ID, counted by its opens, until the last of them is released.

const (
	iocBackingOpen  = 0x4010e501 // FUSE_DEV_IOC_BACKING_OPEN
	iocBackingClose = 0x4004e502 // FUSE_DEV_IOC_BACKING_CLOSE
)

// backingMap is struct fuse_backing_map.
type backingMap struct {
	fd      int32
	flags   uint32
	padding uint64
}

// backingRef is a node's backing ID and the opens that use it.
type backingRef struct {
	id      int32
	pinned  bool // an earlier server's: kept for the connection's life
	refs    int  // opens that hold it (released by ReleaseBacking)
	pending int  // of them, opens whose reply has not taken it yet
}

// PendBacking makes f the backing file of the next passthrough open of
// node nodeid (the file system answers that OPEN with FOPEN_PASSTHROUGH
// and calls ReleaseBacking when the handle is released). An error means no
// passthrough (an older kernel, or no CAP_SYS_ADMIN).
func (s *Session) PendBacking(nodeid uint64, f *os.File) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ref := s.backing[nodeid]; ref != nil {
		ref.refs++
		ref.pending++
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var id uintptr
	var errno syscall.Errno
	if cerr := rc.Control(func(fd uintptr) {
		m := backingMap{fd: int32(fd)}
		id, _, errno = syscall.Syscall(syscall.SYS_IOCTL, uintptr(s.fd), iocBackingOpen, uintptr(unsafe.Pointer(&m)))
	}); cerr != nil {
		return cerr
	}
	if errno != 0 {
		return errno
	}
	s.backing[nodeid] = &backingRef{id: int32(id), refs: 1, pending: 1}
	s.logBacking(nodeid, int32(id))
	return nil
}

// ReleaseBacking drops an open's hold on nodeid's backing ID.
func (s *Session) ReleaseBacking(nodeid uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ref := s.backing[nodeid]
	if ref == nil {
		return
	}
	if ref.refs--; ref.refs <= 0 && !ref.pinned {
		_, _, _ = syscall.Syscall(syscall.SYS_IOCTL, uintptr(s.fd), iocBackingClose, uintptr(unsafe.Pointer(&ref.id)))
		delete(s.backing, nodeid)
		s.logBacking(nodeid, 0)
	}
}

// An inode an earlier server opened in passthrough keeps that server's
// backing file in the kernel for as long as those opens last, and the
// kernel refuses any other backing file (or a cached open) for it: a new
// server must answer with the same backing ID, which stays registered in
// the connection. The IDs in use are logged (Options.BackingLog) so the
// next server finds them; it keeps them for the connection's life.

// logBacking records that nodeid's backing ID is id (0: closed). Called
// with s.mu held.
func (s *Session) logBacking(nodeid uint64, id int32) {
	if s.backingLog == nil {
		return
	}
	_, err := fmt.Fprintf(s.backingLog, "%d\t%d\n", nodeid, id)
	if s.backingLines++; err == nil && s.backingLines > 2*len(s.backing)+1024 {
		// Every open and release adds a line: rewrite the log with
		// the IDs in use, so it stays as small as they are.
		err = s.compactBackingLog()
	}
	if err != nil {
		s.log.Error(err, "Backing-file log write failed: after a restart, a file open in passthrough may not open again until it is closed")
		s.backingLog.Close()
		s.backingLog = nil
	}
}

// compactBackingLog replaces the log with one line per backing ID in use
// (a new file renamed over the old: a crash leaves one or the other).
// Called with s.mu held.
func (s *Session) compactBackingLog() error {
	path := s.backingLog.Name()
	var b strings.Builder
	for n, ref := range s.backing {
		fmt.Fprintf(&b, "%d\t%d\n", n, ref.id)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	s.backingLog.Close()
	s.backingLog = f
	s.backingLines = len(s.backing)
	return nil
}

// openBackingLog loads the backing IDs an earlier server left (when the
// connection is taken over) and starts the log afresh with them.
func (s *Session) openBackingLog(path string, takeover bool) error {
	if path == "" {
		return nil
	}
	live := map[uint64]int32{}
	if b, err := os.ReadFile(path); err == nil && takeover {
		for _, line := range strings.Split(string(b), "\n") {
			node, id, ok := strings.Cut(line, "\t")
			n, err1 := strconv.ParseUint(node, 10, 64)
			i, err2 := strconv.ParseInt(id, 10, 32)
			if !ok || err1 != nil || err2 != nil {
				continue
			}
			if i == 0 {
				delete(live, n)
			} else {
				live[n] = int32(i)
			}
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	s.backingLog = f
	for n, id := range live {
		s.backing[n] = &backingRef{id: id, pinned: true}
		s.logBacking(n, id)
	}
	return nil
}

// passthroughReply fills the backing ID of an OPEN reply that asks for
// passthrough, or takes the request back when none is pending.
func (s *Session) passthroughReply(nodeid uint64, openOut []byte) {
	if len(openOut) < 16 {
		return
	}
	flags := le.Uint32(openOut[8:])
	if flags&fuse.FOPEN_PASSTHROUGH == 0 {
		return
	}
	s.mu.Lock()
	ref := s.backing[nodeid]
	ok := ref != nil && ref.pending > 0
	if ok {
		ref.pending--
	}
	s.mu.Unlock()
	if !ok {
		le.PutUint32(openOut[8:], flags&^fuse.FOPEN_PASSTHROUGH)
		return
	}
	le.PutUint32(openOut[8:], flags&^fuse.FOPEN_KEEP_CACHE)
	le.PutUint32(openOut[12:], uint32(ref.id))
}

// HasBacking reports whether node nodeid has a backing ID (one an earlier
// server left counts).
func (s *Session) HasBacking(nodeid uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backing[nodeid] != nil
}
