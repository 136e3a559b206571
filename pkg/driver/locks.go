package driver

import (
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// keyLocks is a set of try-locks by key: an RPC that finds its key busy
// returns Aborted and the CO retries, instead of queueing behind a slow mount.
type keyLocks struct {
	mu   sync.Mutex
	busy map[string]struct{} // guarded by mu
}

func newKeyLocks() *keyLocks { return &keyLocks{busy: map[string]struct{}{}} }

// lock takes key for an RPC: it returns the function that frees it, or an
// Aborted status when another operation holds it.
func (l *keyLocks) lock(key string) (release func(), err error) {
	if !l.TryAcquire(key) {
		return nil, status.Errorf(codes.Aborted, "an operation on %s is already in progress", key)
	}
	return func() { l.Release(key) }, nil
}

// TryAcquire takes key and reports whether it was free.
func (l *keyLocks) TryAcquire(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.busy[key]; ok {
		return false
	}
	l.busy[key] = struct{}{}
	return true
}

// Release frees key.
func (l *keyLocks) Release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.busy, key)
}

// subtreeLocks serialise the controller's record work by subtree: a
// dataset's volumes can overlap only within one first-level directory
// (each namespace's), so one lock per source and first segment orders a
// CreateVolume and a DeleteVolume that could touch the same directory,
// and nothing else. They are held around record reads, writes and the
// creation of a directory, never around removing or archiving one.
type subtreeLocks struct {
	mu    sync.Mutex
	locks map[string]*subtreeLock // guarded by mu
}

type subtreeLock struct {
	mu   sync.Mutex
	refs int // guarded by subtreeLocks.mu
}

func newSubtreeLocks() *subtreeLocks { return &subtreeLocks{locks: map[string]*subtreeLock{}} }

// lock takes the lock of sub's subtree of source and returns its release.
func (s *subtreeLocks) lock(source, sub string) func() {
	first, _, _ := strings.Cut(sub, "/")
	key := source + "\x00" + first
	s.mu.Lock()
	l := s.locks[key]
	if l == nil {
		l = &subtreeLock{}
		s.locks[key] = l
	}
	l.refs++
	s.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.locks, key)
		}
		s.mu.Unlock()
	}
}
