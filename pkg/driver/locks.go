package driver

import "sync"

// keyLocks is a set of try-locks by key: an RPC that finds its key busy
// returns Aborted and the CO retries, instead of queueing behind a slow mount.
type keyLocks struct {
	mu   sync.Mutex
	busy map[string]struct{} // guarded by mu
}

func newKeyLocks() *keyLocks { return &keyLocks{busy: map[string]struct{}{}} }

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
