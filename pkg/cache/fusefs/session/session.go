// Package session serves a FUSE connection with go-fuse's request layer
// (fuse.ProtocolServer) and a loop of its own, so that a connection can
// outlive the process that served it: a new server takes the /dev/fuse
// descriptor over, replays the INIT the kernel negotiated once, asks the
// kernel to resend what was read but never answered (FUSE_NOTIFY_RESEND),
// resolves node IDs it never handed out (a LOOKUP of "." the file system
// answers from its persistent inode table), reopens file handles an
// earlier server issued, and keeps the lookup counts it forwards within
// what it knows the file system holds.
package session

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Conn is a FUSE connection: its device descriptor and what a new server
// needs to take it over.
type Conn struct {
	// Dev is a /dev/fuse descriptor of the connection.
	Dev *os.File
	// Init is the kernel's INIT request (header and body) as it was
	// first sent; nil for a connection not initialised yet.
	Init []byte
	// Epoch counts the servers that have served the connection; file
	// handles carry the epoch that issued them.
	Epoch uint16
}

// Options configure a session.
type Options struct {
	// ReopenWrites lets a handle of an earlier server that was opened
	// for writing be reopened; false (an object store, whose upload died
	// with that server) answers its writes EIO.
	ReopenWrites bool
	// BackingLog is a file where the session logs the passthrough
	// backing IDs in use, for a server that takes the connection over
	// ("" = none: after a takeover, a file open in passthrough opens
	// again only once those opens are closed).
	BackingLog string
	Logger     klog.Logger
	// Serving, if set, is called with the session before it serves any
	// request but a taken-over connection's replayed INIT: the file
	// system may keep it, and use it while serving, without a race.
	Serving func(*Session)
}

// Stats count what a taken-over session had to do.
type Stats struct {
	Revived, Reopened, Resent atomic.Int64
	// ResendRefused is set when the kernel refused FUSE_NOTIFY_RESEND
	// (older than Linux 6.9): requests lost with the earlier server
	// stay unanswered.
	ResendRefused atomic.Bool
}

// Session serves one connection.
type Session struct {
	conn  Conn
	ps    *fuse.ProtocolServer
	opts  Options
	log   klog.Logger
	Stats Stats

	mu           sync.Mutex
	counts       map[uint64]uint64      // lookup counts the file system holds, as forwarded
	stale        map[uint64]uint64      // an earlier epoch's handle -> this session's reopened one
	failed       map[uint64]bool        // earlier write handles refused (object stores)
	backing      map[uint64]*backingRef // backing IDs of passthrough opens, by node
	backingLog   *os.File               // guarded by mu; see logBacking
	backingLines int                    // guarded by mu; lines in backingLog
	stopped      bool
	quit         atomic.Bool    // Stop or Drain: the reader stops reading
	inflight     sync.WaitGroup // requests being served
	fd           int            // the session's duplicate of the device, non-blocking
	fdMu         sync.RWMutex   // held (read) by writes from outside a request; taken to close fd
	fdClosed     bool           // guarded by fdMu
	ready        chan struct{}  // the poller: the device has a request (or had one)
	stopCh       chan struct{}  // closed by Stop or Drain: the reader stops waiting
	stopOnce     sync.Once
	initMu       sync.Mutex
	next         atomic.Uint64 // uniques of the session's own requests (odd)
	done         chan error
	drained      chan struct{} // closed when reading has stopped

	rmu       sync.Mutex    // guards the readers' state below
	reading   int           // readers reading or waiting for a request
	endErr    error         // why reading ended (nil: it goes on)
	ended     chan struct{} // closed once endErr is set and no reader reads
	endClosed bool
	bufs      sync.Pool
}

const fhShift = 48

// maxRequest bounds a request: the largest WRITE (1 MiB) and its headers.
const maxRequest = 1<<20 + 64<<10

// Start serves fs on conn. A connection whose Init is nil is new: the
// kernel's INIT is read from it, answered and kept. Otherwise the session
// takes it over: the kept INIT is replayed to the new server (the kernel
// is not asked again) and the kernel resends what was in flight.
func Start(conn Conn, fs fuse.RawFileSystem, mo *fuse.MountOptions, opts Options) (*Session, error) {
	if opts.Logger.GetSink() == nil {
		opts.Logger = klog.Background()
	}
	// The session reads a duplicate, non-blocking, waiting for the
	// sessions' own epoll thread (poller.go) when there is nothing to
	// read; never in Go's poller: its thread would also wait for the poll
	// of a file of this very mount (FUSE files are pollable), which only
	// this loop can answer.
	fd, err := Dup(conn.Dev)
	if err != nil {
		return nil, err
	}
	dev := os.NewFile(uintptr(fd), conn.Dev.Name()) // blocking here: not in Go's poller
	if err := unix.SetNonblock(fd, true); err != nil {
		dev.Close()
		return nil, err
	}
	s := &Session{
		conn: conn, ps: fuse.NewProtocolServer(fs, mo), opts: opts, log: opts.Logger,
		counts: map[uint64]uint64{}, stale: map[uint64]uint64{}, failed: map[uint64]bool{}, backing: map[uint64]*backingRef{},
		done: make(chan error, 1), drained: make(chan struct{}), ended: make(chan struct{}), fd: fd,
		ready: make(chan struct{}, 1), stopCh: make(chan struct{}),
	}
	s.conn.Dev = dev
	if err := s.openBackingLog(opts.BackingLog, conn.Init != nil); err != nil {
		s.log.Error(err, "Backing-file log unavailable")
	}
	s.bufs.New = func() any { b := make([]byte, maxRequest); return &b }
	s.next.Store(1)
	if conn.Init != nil {
		s.conn.Epoch++
		out := make([]byte, 4096)
		if _, st := s.ps.HandleRequest([][]byte{conn.Init}, [][]byte{out}); !st.Ok() {
			dev.Close()
			return nil, fmt.Errorf("replaying INIT: %v", st)
		}
	}
	if err := devPoller.add(s); err != nil {
		dev.Close()
		return nil, fmt.Errorf("waiting for requests: %w", err)
	}
	if opts.Serving != nil {
		opts.Serving(s)
	}
	go s.loop()
	if conn.Init != nil {
		// Requests the earlier server read and never answered.
		if _, err := unix.Write(fd, errorReply(0, notifyResend)); err != nil {
			s.Stats.ResendRefused.Store(true)
			s.log.Info("The kernel refused FUSE_NOTIFY_RESEND: requests in flight when the earlier server stopped stay unanswered", "err", err)
		}
	}
	return s, nil
}

// Conn returns the connection as a later server takes it over (Init is
// there once the kernel's INIT has been answered).
func (s *Session) Conn() Conn {
	s.initMu.Lock()
	defer s.initMu.Unlock()
	return s.conn
}

// Wait returns when the connection ends (nil: unmounted) or the session
// is stopped (also nil).
func (s *Session) Wait() error {
	err := <-s.done
	s.done <- err // for another Wait
	if errors.Is(err, errStopped) || errors.Is(err, errUnmounted) {
		return nil
	}
	return err
}

var errStopped = errors.New("session stopped")

// Stop stops serving without answering what is in flight, as a crash
// would, and closes this session's descriptor; the connection lives on
// in others' (Conn().Dev must have been duplicated before).
func (s *Session) Stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.stopReading()
}

// stopReading makes every reader stop reading (Stop, Drain).
func (s *Session) stopReading() {
	s.quit.Store(true)
	s.stopOnce.Do(func() { close(s.stopCh) })
	s.rmu.Lock()
	s.endReadingLocked(nil) // no reader may be reading
	s.rmu.Unlock()
}

// Drain stops reading, answers the requests already read, and returns:
// the connection is left for a new server, nothing lost (an upgrade).
func (s *Session) Drain() {
	s.stopReading()
	<-s.drained
	s.inflight.Wait()
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

func (s *Session) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// maxIdle is how many readers may wait for requests at once; the others
// serve one and exit. One: the poller wakes one reader per arming, and an
// idle session costs a goroutine, no thread.
const maxIdle = 1

// loop runs the readers until reading ends, then closes the session. A
// reader serves the request it read itself (no hand-off to another
// thread, which costs a wake-up per request), after starting another
// reader if none is left waiting, as go-fuse's server does.
func (s *Session) loop() {
	go s.reader()
	<-s.ended
	close(s.drained)
	closeDev := func() {
		// Handlers write to the descriptor: it closes after them.
		s.inflight.Wait()
		devPoller.remove(s)
		s.fdMu.Lock()
		s.fdClosed = true
		s.conn.Dev.Close()
		s.fdMu.Unlock()
	}
	if s.isStopped() {
		go closeDev() // a crash: nothing waits for what is in flight
	} else {
		closeDev()
	}
	s.mu.Lock()
	if s.backingLog != nil {
		s.backingLog.Close()
		s.backingLog = nil
	}
	s.mu.Unlock()
	s.done <- s.endErr
}

// reader reads and serves requests until reading ends or enough other
// readers wait.
func (s *Session) reader() {
	for {
		s.rmu.Lock()
		if s.endErr != nil || s.quit.Load() || s.reading >= maxIdle {
			s.endReadingLocked(nil)
			s.rmu.Unlock()
			return
		}
		s.reading++
		s.rmu.Unlock()
		bp, n, err := s.read()
		s.rmu.Lock()
		s.reading--
		if err != nil {
			s.endReadingLocked(err)
			s.rmu.Unlock()
			return
		}
		if s.reading == 0 {
			go s.reader()
		}
		// Counted before reading can be seen ended (see Drain).
		s.inflight.Add(1)
		s.rmu.Unlock()
		s.serve(bp, n)
	}
}

// endReadingLocked records why reading ended (err, or Stop and Drain) and
// closes ended once no reader reads. s.rmu is held.
func (s *Session) endReadingLocked(err error) {
	if err != nil && s.endErr == nil {
		s.endErr = err
	}
	if s.quit.Load() && s.endErr == nil {
		s.endErr = errStopped
	}
	if s.endErr != nil && s.reading == 0 && !s.endClosed {
		s.endClosed = true
		close(s.ended)
	}
}

// errUnmounted ends reading when the connection is gone (Wait returns nil).
var errUnmounted = errors.New("unmounted")

// read reads one request, waiting for the poller only when none is there. It
// returns errStopped after Stop or Drain, errUnmounted when the
// connection ends.
func (s *Session) read() (*[]byte, int, error) {
	for {
		if s.quit.Load() {
			return nil, 0, errStopped
		}
		bp := s.bufs.Get().(*[]byte)
		n, err := unix.Read(s.fd, *bp)
		switch err {
		case nil:
			return bp, n, nil
		case unix.EINTR, unix.ENOENT: // a signal, an interrupted request
			s.bufs.Put(bp)
			continue
		case unix.EAGAIN: // none yet: wait for one, or for Stop
			s.bufs.Put(bp)
			if err := devPoller.arm(s); err != nil {
				return nil, 0, err
			}
			select {
			case <-s.ready:
			case <-s.stopCh:
			}
			continue
		case unix.ENODEV: // unmounted
			s.bufs.Put(bp)
			return nil, 0, errUnmounted
		}
		s.bufs.Put(bp)
		return nil, 0, err
	}
}

// serve answers one request.
func (s *Session) serve(bp *[]byte, n int) {
	defer s.inflight.Done()
	defer s.bufs.Put(bp)
	req := (*bp)[:n]
	h, ok := parseHeader(req)
	if !ok {
		return
	}
	if h.opcode == opInit {
		s.initMu.Lock()
		s.conn.Init = append([]byte(nil), req...)
		s.initMu.Unlock()
	}
	if h.unique&uniqueResend != 0 {
		s.Stats.Resent.Add(1)
	}
	reply := s.handle(h, req)
	if h.opcode == opOpen && len(reply) >= outHeaderSize+16 && le.Uint32(reply[4:]) == 0 {
		s.passthroughReply(h.nodeid, reply[outHeaderSize:])
	}
	if reply == nil || s.isStopped() {
		return
	}
	if _, err := unix.Write(s.fd, reply); err != nil && !errors.Is(err, syscall.ENOENT) {
		s.log.V(2).Info("FUSE reply not delivered", "opcode", h.opcode, "err", err)
	}
}

// handle translates a request for the file system, runs it, and returns
// the reply for the kernel (nil: none).
func (s *Session) handle(h header, req []byte) []byte {
	body := req[inHeaderSize:]
	switch h.opcode {
	case opForget:
		if len(body) >= 8 {
			if n := s.forget(h.nodeid, le.Uint64(body)); n > 0 {
				le.PutUint64(body, n)
				s.call(req)
			}
		}
		return nil
	case opBatchForget:
		if b := s.batchForget(h, body); b != nil {
			s.call(b)
		}
		return nil
	case opInit, opDestroy, opInterrupt:
		return s.call(req)
	}
	if errno := s.revive(h.nodeid); errno != 0 {
		return errorReply(h.unique, -int32(errno))
	}
	for _, off := range bodyNodeIDs(h.opcode, body) {
		if errno := s.revive(le.Uint64(body[off:])); errno != 0 {
			return errorReply(h.unique, -int32(errno))
		}
	}
	if off := fhOffset(h.opcode, body); off >= 0 {
		kernelFH := le.Uint64(body[off:])
		fh, reply := s.translateFH(h, body, kernelFH)
		h.fhStale = kernelFH != 0 && kernelFH != pollHackID && uint16(kernelFH>>fhShift) != s.conn.Epoch
		h.staleFH = kernelFH
		if reply != nil {
			return reply
		}
		le.PutUint64(body[off:], fh)
		if h.opcode == opCopyFileRange {
			fh2, reply := s.translateFH(h, body, le.Uint64(body[24:]))
			if reply != nil {
				return reply
			}
			le.PutUint64(body[24:], fh2)
		}
	}
	out := s.call(req)
	if len(out) < outHeaderSize || int32(le.Uint32(out[4:])) != 0 {
		return s.resent(h, req, out)
	}
	entryNodeIDs(h.opcode, out[outHeaderSize:], func(id uint64) { s.counted(id, 1) })
	if off := replyFHOffset(h.opcode); off >= 0 && len(out) >= outHeaderSize+off+8 {
		fh := le.Uint64(out[outHeaderSize+off:])
		le.PutUint64(out[outHeaderSize+off:], uint64(s.conn.Epoch)<<fhShift|fh)
	}
	if (h.opcode == opRelease || h.opcode == opReleasedir) && h.fhStale {
		s.mu.Lock()
		delete(s.stale, h.staleFH)
		s.mu.Unlock()
	}
	return out
}

// call runs a request through the file system and returns its reply (nil:
// none, as for FORGET).
func (s *Session) call(req []byte) []byte {
	h, _ := parseHeader(req)
	size := 8 << 10
	body := req[inHeaderSize:]
	switch h.opcode {
	case opRead, opReaddir, opReaddirplus:
		if len(body) >= 20 {
			size = outHeaderSize + int(le.Uint32(body[16:]))
		}
	case 22, 23: // GETXATTR, LISTXATTR: fuse_getxattr_in.size
		if len(body) >= 4 {
			size = outHeaderSize + 8 + int(le.Uint32(body))
		}
	case opIoctl:
		size = outHeaderSize + 64<<10
	}
	size = max(size, 8<<10)
	var out []byte
	if size > 64<<10 {
		bp := s.bufs.Get().(*[]byte)
		defer s.bufs.Put(bp)
		out = (*bp)[:min(size, maxRequest)]
	} else {
		out = make([]byte, size)
	}
	n, st := s.ps.HandleRequest([][]byte{req}, [][]byte{out})
	if !st.Ok() {
		return errorReply(h.unique, -int32(syscall.EIO))
	}
	if n == 0 {
		return nil
	}
	return append([]byte(nil), out[:n]...)
}

// own runs a request of the session's own for nodeid and returns the reply
// body, or the errno.
func (s *Session) own(op uint32, nodeid uint64, body []byte) ([]byte, syscall.Errno) {
	unique := s.next.Add(2) | 1
	out := s.call(request(op, unique, nodeid, body))
	if len(out) < outHeaderSize {
		return nil, syscall.EIO
	}
	if e := int32(le.Uint32(out[4:])); e != 0 {
		return nil, syscall.Errno(-e)
	}
	return out[outHeaderSize:], 0
}

// Dup returns a duplicate of f's descriptor. (f.Fd would put the open
// file, which duplicates share, into blocking mode under the poller's
// readers.)
func Dup(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := rc.Control(func(raw uintptr) { fd, err = unix.Dup(int(raw)) })
	if cerr != nil {
		return -1, cerr
	}
	return fd, err
}
