package session

import (
	"syscall"
)

// What a session does for the kernel's state it did not make: node IDs and
// file handles of an earlier server, lookup counts beyond what this
// server handed out, requests the kernel resends.

// counted adds n to the lookup count the file system holds for id.
func (s *Session) counted(id, n uint64) {
	s.mu.Lock()
	s.counts[id] += n
	s.mu.Unlock()
}

// forget takes n from id's count and returns how much of it to forward: no
// more than the file system holds (the kernel's count may include lookups
// an earlier server answered). A node whose count reaches zero is revived
// again if the kernel still names it.
func (s *Session) forget(id, n uint64) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	have := s.counts[id]
	n = min(n, have)
	if have-n == 0 {
		delete(s.counts, id)
	} else {
		s.counts[id] = have - n
	}
	return n
}

// batchForget rewrites a BATCH_FORGET to the counts the file system holds
// (nil: nothing to forward).
func (s *Session) batchForget(h header, body []byte) []byte {
	if len(body) < 8 {
		return nil
	}
	count := int(le.Uint32(body))
	var keep []byte
	kept := 0
	for i := 0; i < count && 8+16*(i+1) <= len(body); i++ {
		e := body[8+16*i : 8+16*(i+1)]
		if n := s.forget(le.Uint64(e), le.Uint64(e[8:])); n > 0 {
			one := make([]byte, 16)
			le.PutUint64(one, le.Uint64(e))
			le.PutUint64(one[8:], n)
			keep = append(keep, one...)
			kept++
		}
	}
	if kept == 0 {
		return nil
	}
	nb := make([]byte, 8, 8+len(keep))
	le.PutUint32(nb, uint32(kept))
	return request(opBatchForget, h.unique, h.nodeid, append(nb, keep...))
}

// revive makes sure the file system knows node id: one the kernel holds
// from an earlier server is looked up by ID (a LOOKUP of "." the file
// system answers from its inode table).
func (s *Session) revive(id uint64) syscall.Errno {
	if id <= 1 || id == pollHackID {
		return 0 // none, the root, or go-fuse's poll hack file
	}
	s.mu.Lock()
	known := s.counts[id] > 0
	s.mu.Unlock()
	if known {
		return 0
	}
	if _, errno := s.own(opLookup, id, []byte(".\x00")); errno != 0 {
		return errno
	}
	s.counted(id, 1)
	s.Stats.Revived.Add(1)
	return 0
}

// translateFH returns the file system's handle for the kernel's fh, which
// carries the epoch of the server that issued it. A handle of an earlier
// server is reopened (by node ID and the open flags the request carries),
// once; a release of one never reopened needs nothing. A reply is
// returned instead when the request is answered here.
func (s *Session) translateFH(h header, body []byte, fh uint64) (uint64, []byte) {
	if fh == pollHackID {
		return fh, nil
	}
	if fh == 0 || uint16(fh>>fhShift) == s.conn.Epoch {
		return fh & (1<<fhShift - 1), nil
	}
	s.mu.Lock()
	mine, ok := s.stale[fh]
	failed := s.failed[fh]
	s.mu.Unlock()
	if ok {
		return mine, nil
	}
	switch {
	case h.opcode == opRelease || h.opcode == opReleasedir || h.opcode == opFlush:
		if failed {
			s.mu.Lock()
			delete(s.failed, fh)
			s.mu.Unlock()
			if h.opcode == opFlush {
				return 0, errorReply(h.unique, -int32(syscall.EIO))
			}
		}
		return 0, errorReply(h.unique, 0)
	case failed:
		return 0, errorReply(h.unique, -int32(syscall.EIO))
	}
	flags := openFlags(h.opcode, body, syscall.O_RDONLY)
	if h.opcode == opWrite || h.opcode == opFallocate || h.opcode == opSetattr {
		flags = flags&^syscall.O_ACCMODE | syscall.O_RDWR
	}
	flags &^= syscall.O_CREAT | syscall.O_EXCL | syscall.O_TRUNC
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY && !s.opts.ReopenWrites {
		// What was written through it died with the earlier server.
		s.mu.Lock()
		s.failed[fh] = true
		s.mu.Unlock()
		return 0, errorReply(h.unique, -int32(syscall.EIO))
	}
	op := uint32(opOpen)
	if isDirOp(h.opcode) {
		op = opOpendir
	}
	in := make([]byte, 8)
	le.PutUint32(in, flags)
	out, errno := s.own(op, h.nodeid, in)
	if errno != 0 {
		return 0, errorReply(h.unique, -int32(errno))
	}
	if len(out) < 8 {
		return 0, errorReply(h.unique, -int32(syscall.EIO))
	}
	mine = le.Uint64(out)
	if op == opOpen {
		// The kernel's file keeps the mode it was opened in; the
		// reopened handle's release drops what its open took.
		s.passthroughReply(h.nodeid, out)
	}
	s.mu.Lock()
	if prev, ok := s.stale[fh]; ok { // reopened meanwhile: keep one
		s.mu.Unlock()
		s.releaseOwn(op, h.nodeid, mine)
		return prev, nil
	}
	s.stale[fh] = mine
	s.mu.Unlock()
	s.Stats.Reopened.Add(1)
	return mine, nil
}

// releaseOwn releases a handle the session opened for itself.
func (s *Session) releaseOwn(openOp uint32, nodeid, fh uint64) {
	op := uint32(opRelease)
	if openOp == opOpendir {
		op = opReleasedir
	}
	in := make([]byte, 24)
	le.PutUint64(in, fh)
	_, _ = s.own(op, nodeid, in)
}

// resent answers a failed request the kernel sent again after a takeover:
// the earlier server may have done it already, so an error that says the
// work is done is success (an unlink or rename whose name is gone, a mkdir
// whose directory exists). Other replies pass unchanged.
func (s *Session) resent(h header, req, out []byte) []byte {
	if h.unique&uniqueResend == 0 || len(out) < outHeaderSize {
		return out
	}
	errno := syscall.Errno(-int32(le.Uint32(out[4:])))
	switch {
	case errno == syscall.ENOENT && (h.opcode == opUnlink || h.opcode == opRmdir || h.opcode == opRename || h.opcode == opRename2):
		return errorReply(h.unique, 0)
	case errno == syscall.EEXIST && h.opcode == opMkdir:
		// The directory the earlier server made: its entry.
		name := req[inHeaderSize+8:] // fuse_mkdir_in is 8 bytes, then the name
		lookup := request(opLookup, h.unique, h.nodeid, name)
		if r := s.call(lookup); len(r) >= outHeaderSize && le.Uint32(r[4:]) == 0 {
			entryNodeIDs(opLookup, r[outHeaderSize:], func(id uint64) { s.counted(id, 1) })
			return r
		}
	}
	return out
}
