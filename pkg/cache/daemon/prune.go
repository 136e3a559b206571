package daemon

import (
	"errors"
	"runtime/debug"
	"syscall"
	"time"
)

// pruneEvery is how often the daemon compares the nodes its mounts hold
// for the kernel with --max-inodes.
const pruneEvery = time.Second

// pruneLoop keeps the nodes of all mounts under opts.MaxInodes: the kernel
// holds every file it has looked up (and the daemon a node for each)
// until its own memory runs short. Over the limit, every mount is asked
// to have the kernel forget its least recently used idle files, in
// proportion to what it holds, down to 90% of the limit.
func (d *Daemon) pruneLoop() {
	d.every(pruneEvery, nil, d.pruneOnce)
}

// every calls fn every period, and at once when kick has a value, until
// the daemon stops or fn returns false. The caller has added it to d.wg.
func (d *Daemon) every(period time.Duration, kick <-chan struct{}, fn func() bool) {
	defer d.wg.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
		if !fn() {
			return
		}
	}
}

// pruneOnce prunes if the mounts are over the limit; false when the kernel
// cannot prune (the loop then stops).
func (d *Daemon) pruneOnce() bool {
	if d.freeSoon.Swap(false) {
		debug.FreeOSMemory()
	}
	ms := d.mountedList()
	var total int64
	for _, m := range ms {
		total += m.fs.Nodes()
	}
	limit := int64(d.opts.MaxInodes)
	if limit <= 0 || total <= limit {
		return true
	}
	over := total - limit*9/10
	var asked int
	for _, m := range ms {
		n := m.fs.Nodes()
		k := int((n*over + total - 1) / total)
		sent, err := m.fs.Prune(k)
		asked += sent
		if errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EINVAL) {
			d.log.Info("The kernel cannot forget idle files on request (FUSE_NOTIFY_PRUNE needs Linux 6.18): --max-inodes is not enforced", "err", err)
			return false
		}
		if err != nil && !errors.Is(err, syscall.EBADF) { // EBADF: unmounted meanwhile
			m.log.Error(err, "Pruning idle files failed")
		}
	}
	d.log.V(1).Info("Asked the kernel to forget idle files", "nodes", total, "limit", limit, "asked", asked)
	if asked >= 10000 {
		// The FORGETs free the nodes over the next moments; their
		// memory goes back to the system on the next pass.
		d.freeSoon.Store(true)
	}
	return true
}

// mountedList returns the mounted datasets.
func (d *Daemon) mountedList() []*mounted {
	d.mu.Lock()
	defer d.mu.Unlock()
	ms := make([]*mounted, 0, len(d.datasets))
	for _, m := range d.datasets {
		ms = append(ms, m)
	}
	return ms
}
