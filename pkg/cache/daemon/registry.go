package daemon

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/fusefs"
)

// mounted is one dataset the daemon serves.
type mounted struct {
	// immutable after mountDataset
	key     string
	req     api.MountRequest  // Secrets cleared
	secrets map[string]string // for the keeper (memory only)
	mnt     string
	fs      *fusefs.FS
	ds      *cache.Dataset
	log     klog.Logger
	pattern string // the access pattern served (see pattern.go)
	// groupKey is the dataset's key in the daemon's cache group, or ""
	// (set before the mount is published: immutable after).
	groupKey string

	handMu  sync.Mutex          // orders hand-overs to the keeper
	dropped bool                // guarded by handMu; dropped from the keeper: never handed over again
	holders map[string]bool     // guarded by Daemon.mu
	timer   *time.Timer         // guarded by Daemon.mu; pending release, or nil
	warm    *api.WarmupProgress // guarded by Daemon.mu; the mount-time warm-up
	cancel  context.CancelFunc  // guarded by Daemon.mu; stops the mount-time warm-up
}

// Mount returns the mount of the requested dataset, mounting it on first
// use, and records the holder. The FUSE mount (which touches the source)
// runs outside the daemon's lock: a slow or hung source delays only the
// requests for that dataset, which wait with their own context.
func (d *Daemon) Mount(ctx context.Context, req api.MountRequest) (api.MountResponse, error) {
	if err := req.Validate(); err != nil {
		return api.MountResponse{}, &statusError{http.StatusBadRequest, err}
	}
	key := req.Key(d.salt)
	secrets := req.Secrets
	req.Secrets = nil
	for {
		d.mu.Lock()
		if old, ok := d.holders[req.Holder]; ok && old != key {
			d.mu.Unlock()
			return api.MountResponse{}, &statusError{http.StatusConflict, fmt.Errorf("holder %q already holds another dataset", req.Holder)}
		}
		if m := d.datasets[key]; m != nil {
			resp := d.attachLocked(m, req.Holder)
			d.mu.Unlock()
			d.handOver(m, false)
			return resp, nil
		}
		if busy := d.mounting[key]; busy != nil {
			d.mu.Unlock()
			select {
			case <-busy: // mounted or failed: look again
				continue
			case <-ctx.Done():
				return api.MountResponse{}, ctx.Err()
			}
		}
		busy := make(chan struct{})
		d.mounting[key] = busy
		d.mu.Unlock()

		m, err := d.mountDataset(ctx, key, req, secrets)

		d.mu.Lock()
		delete(d.mounting, key)
		close(busy)
		if err != nil {
			d.mu.Unlock()
			return api.MountResponse{}, err
		}
		d.datasets[key] = m
		if len(req.Warmup) > 0 {
			d.startWarmupLocked(m)
		}
		resp := d.attachLocked(m, req.Holder)
		d.mu.Unlock()
		d.handOver(m, true)
		return resp, nil
	}
}

// attachLocked records holder on m and cancels a pending release.
func (d *Daemon) attachLocked(m *mounted, holder string) api.MountResponse {
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	m.holders[holder] = true
	d.holders[holder] = m.key
	return api.MountResponse{Key: m.key, MountPath: m.mnt}
}

func (d *Daemon) mountDataset(ctx context.Context, key string, req api.MountRequest, secrets map[string]string) (*mounted, error) {
	log := d.log.WithValues("dataset", req.Dataset, "key", key)
	src, err := d.openSource(ctx, req, secrets, true, log)
	if err != nil {
		return nil, err
	}
	// No local user of the node may walk into a dataset's mount: only
	// root reaches <state>/datasets; pods see their volumes through bind
	// mounts elsewhere.
	datasets := filepath.Join(d.opts.StateDir, "datasets")
	if err := os.MkdirAll(datasets, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(datasets, 0o700); err != nil { // made 0755 by older versions
		return nil, err
	}
	mnt := filepath.Join(datasets, key, "mnt")
	_ = unix.Unmount(mnt, unix.MNT_DETACH) // left by a crashed daemon
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	m := &mounted{key: key, req: req, secrets: secrets, mnt: mnt, log: log, holders: map[string]bool{}}
	m.pattern = choosePatternOf(ctx, req, src, log)
	m.ds = d.cache.Dataset(key, src)
	d.joinGroup(m)
	mount := fusefs.Mount
	if d.keeper != nil {
		mount = fusefs.MountSession // a connection the keeper can hold
	}
	if m.fs, err = mount(mnt, m.ds, d.fsOptions(key, req, m)); err != nil {
		d.leaveGroup(m)
		return nil, fmt.Errorf("mount dataset %s: %w", req.Dataset, err)
	}
	log.Info("Dataset mounted", "source", req.Source, "readOnly", req.ReadOnly, "accessPattern", m.pattern, "mountPath", mnt)
	return m, nil
}

// Release drops a holder; the dataset is unmounted a grace period after
// its last holder leaves. Releasing an unknown holder is a no-op.
func (d *Daemon) Release(holder string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key, ok := d.holders[holder]
	if !ok {
		return
	}
	delete(d.holders, holder)
	m := d.datasets[key]
	delete(m.holders, holder)
	if len(m.holders) == 0 && m.timer == nil {
		m.timer = time.AfterFunc(d.opts.Grace, func() { d.expire(m) })
	}
	d.mu.Unlock()
	d.handOver(m, false)
	d.mu.Lock() // for the deferred unlock
}

func (d *Daemon) expire(m *mounted) {
	d.mu.Lock()
	if len(m.holders) > 0 || d.datasets[m.key] != m {
		d.mu.Unlock()
		return
	}
	delete(d.datasets, m.key)
	cancel := m.cancel
	d.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	d.dropFromKeeper(m)
	d.leaveGroup(m)
	if err := m.fs.Unmount(); err != nil {
		m.log.Error(err, "Unmounting a released dataset failed; detaching")
		_ = unix.Unmount(m.mnt, unix.MNT_DETACH)
	}
	m.log.Info("Dataset unmounted after its grace period")
}

// startWarmupLocked prefetches the request's warm-up paths in the
// background; progress shows in stats. It stops when the dataset is
// unmounted or the daemon closes.
func (d *Daemon) startWarmupLocked(m *mounted) {
	ctx, cancel := context.WithCancel(d.ctx)
	m.cancel = cancel
	m.warm = &api.WarmupProgress{}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer cancel()
		err := d.Warmup(ctx, m.key, m.req.Warmup, func(p api.WarmupProgress) {
			d.mu.Lock()
			*m.warm = p
			d.mu.Unlock()
		})
		d.mu.Lock()
		if err != nil {
			m.warm.Error, m.warm.Done = err.Error(), true
		}
		w := *m.warm
		d.mu.Unlock()
		if err != nil {
			m.log.Error(err, "Mount-time warm-up failed")
			return
		}
		m.log.Info("Mount-time warm-up done", "files", w.Files, "bytes", w.DoneBytes)
	}()
}
