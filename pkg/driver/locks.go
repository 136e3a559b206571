package driver

import (
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
