package session

import "encoding/binary"

// The parts of the FUSE wire protocol (include/uapi/linux/fuse.h) the
// session rewrites: node IDs and lookup counts, file handles, INIT.

const (
	opLookup        = 1
	opForget        = 2
	opGetattr       = 3
	opSetattr       = 4
	opSymlink       = 6
	opMknod         = 8
	opMkdir         = 9
	opUnlink        = 10
	opRmdir         = 11
	opRename        = 12
	opLink          = 13
	opOpen          = 14
	opRead          = 15
	opWrite         = 16
	opRelease       = 18
	opFsync         = 20
	opFlush         = 25
	opInit          = 26
	opOpendir       = 27
	opReaddir       = 28
	opReleasedir    = 29
	opFsyncdir      = 30
	opGetlk         = 31
	opSetlk         = 32
	opSetlkw        = 33
	opCreate        = 35
	opInterrupt     = 36
	opDestroy       = 38
	opIoctl         = 39
	opPoll          = 40
	opBatchForget   = 42
	opFallocate     = 43
	opReaddirplus   = 44
	opRename2       = 45
	opLseek         = 46
	opCopyFileRange = 47
	opTmpfile       = 51
	opStatx         = 52
)

const (
	inHeaderSize  = 40
	outHeaderSize = 16
	entryOutSize  = 128 // fuse_entry_out
	direntSize    = 24  // fuse_dirent without its name

	getattrFH = 1      // FUSE_GETATTR_FH
	fattrFH   = 1 << 6 // FATTR_FH

	// uniqueResend marks a request the kernel sends again after
	// FUSE_NOTIFY_RESEND (FUSE_UNIQUE_RESEND).
	uniqueResend = 1 << 63
	// notifyResend is FUSE_NOTIFY_RESEND.
	notifyResend = 7
	// pollHackID is the node ID and file handle of go-fuse's poll hack
	// file (see PollHack).
	pollHackID = ^uint64(0)
)

var le = binary.LittleEndian

// header is a request's fuse_in_header.
type header struct {
	len    uint32
	opcode uint32
	unique uint64
	nodeid uint64
	// fhStale: the request's file handle was an earlier server's
	// (staleFH), reopened by this one.
	fhStale bool
	staleFH uint64
}

func parseHeader(b []byte) (header, bool) {
	if len(b) < inHeaderSize {
		return header{}, false
	}
	return header{len: le.Uint32(b), opcode: le.Uint32(b[4:]), unique: le.Uint64(b[8:]), nodeid: le.Uint64(b[16:])}, true
}

// fhOffset is where a request's body holds a file handle (-1: none).
func fhOffset(op uint32, body []byte) int {
	switch op {
	case opRead, opWrite, opRelease, opReleasedir, opFlush, opFsync, opFsyncdir, opReaddir, opReaddirplus,
		opGetlk, opSetlk, opSetlkw, opFallocate, opLseek, opIoctl, opPoll, opCopyFileRange:
		if len(body) >= 8 {
			return 0
		}
	case opGetattr, opStatx:
		if len(body) >= 16 && le.Uint32(body)&getattrFH != 0 {
			return 8
		}
	case opSetattr:
		if len(body) >= 16 && le.Uint32(body)&fattrFH != 0 {
			return 8
		}
	}
	return -1
}

// bodyNodeIDs are where a request's body names other nodes than its
// header's.
func bodyNodeIDs(op uint32, body []byte) []int {
	switch op {
	case opRename, opRename2, opLink:
		if len(body) >= 8 {
			return []int{0}
		}
	case opCopyFileRange:
		if len(body) >= 32 {
			return []int{16}
		}
	}
	return nil
}

// isDirOp reports whether a request's handle is a directory's.
func isDirOp(op uint32) bool {
	return op == opReaddir || op == opReaddirplus || op == opReleasedir || op == opFsyncdir
}

// openFlags are the open(2) flags a request carries for its handle (read
// and write carry the file's; release too), or fallback.
func openFlags(op uint32, body []byte, fallback uint32) uint32 {
	switch op {
	case opRead, opWrite:
		if len(body) >= 36 {
			return le.Uint32(body[32:])
		}
	case opRelease, opReleasedir:
		if len(body) >= 12 {
			return le.Uint32(body[8:])
		}
	}
	return fallback
}

// entryNodeIDs calls f with each node ID a successful reply to op hands
// the kernel a lookup count of (reply is the body after the out header).
func entryNodeIDs(op uint32, reply []byte, f func(uint64)) {
	switch op {
	case opLookup, opMknod, opMkdir, opSymlink, opLink, opCreate, opTmpfile:
		if len(reply) >= 8 {
			if id := le.Uint64(reply); id != 0 {
				f(id)
			}
		}
	case opReaddirplus:
		// fuse_direntplus: an entry_out, then a dirent and its name,
		// padded to 8 bytes. The kernel takes no count for "." and "..".
		for len(reply) >= entryOutSize+direntSize {
			id := le.Uint64(reply)
			namelen := int(le.Uint32(reply[entryOutSize+16:]))
			size := entryOutSize + direntSize + (namelen+7)&^7
			if size > len(reply) {
				return
			}
			name := string(reply[entryOutSize+direntSize : entryOutSize+direntSize+namelen])
			if id != 0 && name != "." && name != ".." {
				f(id)
			}
			reply = reply[size:]
		}
	}
}

// replyFHOffset is where a successful reply to op holds a new file handle
// (-1: none).
func replyFHOffset(op uint32) int {
	switch op {
	case opOpen, opOpendir:
		return 0
	case opCreate, opTmpfile:
		return entryOutSize
	}
	return -1
}

// request builds a request of the session's own: header and body.
func request(op uint32, unique, nodeid uint64, body []byte) []byte {
	b := make([]byte, inHeaderSize+len(body))
	le.PutUint32(b, uint32(len(b)))
	le.PutUint32(b[4:], op)
	le.PutUint64(b[8:], unique)
	le.PutUint64(b[16:], nodeid)
	copy(b[inHeaderSize:], body)
	return b
}

// errorReply is a reply of only a header: errno (0 or negative) for unique.
func errorReply(unique uint64, errno int32) []byte {
	b := make([]byte, outHeaderSize)
	le.PutUint32(b, outHeaderSize)
	le.PutUint32(b[4:], uint32(errno))
	le.PutUint64(b[8:], unique)
	return b
}
