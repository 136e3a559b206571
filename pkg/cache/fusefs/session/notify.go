package session

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// notifyInvalInode is FUSE_NOTIFY_INVAL_INODE.
const notifyInvalInode = 2

// InvalidateInode tells the kernel that what it holds of node ID ino is
// stale: its attributes, and its cached pages from off for length bytes
// (length 0: to the end; off < 0: attributes only). It may be called while
// serving a request (the kernel takes no lock a request holds).
func (s *Session) InvalidateInode(ino uint64, off, length int64) error {
	b := errorReply(0, notifyInvalInode)
	b = le.AppendUint64(b, ino)
	b = le.AppendUint64(b, uint64(off))
	b = le.AppendUint64(b, uint64(length))
	le.PutUint32(b, uint32(len(b)))
	return s.notify(b)
}

// notify writes a notification, unless the session's descriptor is closed
// (EBADF): its number may belong to another file by now.
func (s *Session) notify(b []byte) error {
	s.fdMu.RLock()
	defer s.fdMu.RUnlock()
	if s.fdClosed {
		return syscall.EBADF
	}
	_, err := unix.Write(s.fd, b)
	return err
}

// notifyPrune is FUSE_NOTIFY_PRUNE (Linux 6.18, protocol 7.45).
const notifyPrune = 9

// Prune asks the kernel to forget the node IDs ids if nothing uses them
// (it answers FORGET for those it drops).
func (s *Session) Prune(ids []uint64) error {
	b := errorReply(0, notifyPrune)
	b = le.AppendUint32(b, uint32(len(ids)))
	b = le.AppendUint32(b, 0)
	b = le.AppendUint64(b, 0)
	for _, id := range ids {
		b = le.AppendUint64(b, id)
	}
	le.PutUint32(b, uint32(len(b)))
	return s.notify(b)
}
