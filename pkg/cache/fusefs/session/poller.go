package session

import (
	"sync"

	"golang.org/x/sys/unix"
)

// poller waits for requests on every session's device in one thread of
// its own (an epoll instance), so an idle session holds no thread: a
// reader blocked in poll(2) pins an OS thread, about 90 KiB of memory,
// which is most of what a mounted dataset costs a node serving a
// thousand. Go's own poller is not used (see Start).
//
// A session has at most one reader waiting (maxIdle): it arms its device
// (one-shot) after a read found nothing, and the poller wakes it.
type poller struct {
	once sync.Once
	err  error
	epfd int

	mu       sync.Mutex
	sessions map[int32]*Session // guarded by mu; by device descriptor
}

var devPoller poller

// add registers s's device, not armed yet.
func (p *poller) add(s *Session) error {
	p.once.Do(func() {
		p.epfd, p.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if p.err == nil {
			p.sessions = map[int32]*Session{}
			go p.run()
		}
	})
	if p.err != nil {
		return p.err
	}
	p.mu.Lock()
	p.sessions[int32(s.fd)] = s
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLONESHOT, Fd: int32(s.fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
		p.mu.Lock()
		delete(p.sessions, int32(s.fd))
		p.mu.Unlock()
		return err
	}
	return nil
}

// arm has the poller wake s's reader once its device has a request (at
// once if it has one now).
func (p *poller) arm(s *Session) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(s.fd)}
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, s.fd, &ev)
}

// remove forgets s's device; it must be called before the descriptor is
// closed (epoll keeps watching a description another descriptor shares).
func (p *poller) remove(s *Session) {
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	p.mu.Lock()
	delete(p.sessions, int32(s.fd))
	p.mu.Unlock()
}

func (p *poller) run() {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			continue // EINTR
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			if s := p.sessions[ev.Fd]; s != nil {
				select {
				case s.ready <- struct{}{}:
				default:
				}
			}
		}
		p.mu.Unlock()
	}
}
