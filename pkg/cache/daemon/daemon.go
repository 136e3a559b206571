// Package daemon is cistern-cache: the registry and lifecycle of the
// datasets a node has mounted (one FUSE mount per dataset, held by the
// volumes that use it and released a grace period after the last one
// leaves), warm-up, the control API on a unix socket, Prometheus metrics,
// and the cache tiers, all over one cache engine.
package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/keeper"
)

// Daemon is cistern-cache: one FUSE mount per dataset, one cache for all.
//
// Lock order: Daemon.mu, then the engine's locks. No mount, unmount or
// source request is made while Daemon.mu is held.
type Daemon struct {
	// immutable after New
	opts     Options
	log      klog.Logger
	cache    *cache.Cache
	memMount string          // the tmpfs of the memory tier, or ""
	salt     []byte          // the node's secret in dataset keys
	ctx      context.Context // cancelled by Close; owns mount-time warm-ups
	stop     context.CancelFunc
	wg       sync.WaitGroup // mount-time warm-ups

	metricsAddr atomic.Value // string: where metrics are served, once listening

	keeper *keeper.Client // holds the FUSE connections across restarts, or nil
	group  *groupMember   // the daemon's cache group, or nil

	// freeSoon: a large prune freed memory the next pass returns to the
	// system (prune.go).
	freeSoon atomic.Bool

	mu       sync.Mutex
	datasets map[string]*mounted      // guarded by mu; by key
	mounting map[string]chan struct{} // guarded by mu; keys being mounted, closed when done
	holders  map[string]string        // guarded by mu; holder -> key
}

// New mounts the memory tier (if any) and opens the cache.
func New(opts Options) (*Daemon, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	memDir := filepath.Join(opts.StateDir, "mem")
	tiers, err := ParseTiers(opts.tiers(), memDir)
	if err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, log: klog.Background(), datasets: map[string]*mounted{}, mounting: map[string]chan struct{}{}, holders: map[string]string{}}
	if d.salt, err = loadSalt(filepath.Join(opts.StateDir, "key-salt")); err != nil {
		return nil, err
	}
	d.ctx, d.stop = context.WithCancel(context.Background())
	for _, t := range tiers {
		if t.Name == "mem" {
			if err := MountTmpfs(memDir, t.Quota); err != nil {
				return nil, err
			}
			d.memMount = memDir
		}
	}
	d.cache, err = cache.New(cache.Options{Tiers: tiers, BlockSize: opts.BlockSize, MaxFetches: opts.MaxFetches, LowWater: opts.LowWater, FreeSpaceRatio: opts.FreeRatio, SleepAfter: opts.SleepAfter,
		Logger: d.log.WithName("cache")})
	if err != nil {
		d.unmountTmpfs()
		return nil, err
	}
	if err := d.startGroup(); err != nil {
		d.stop()
		d.cache.Close()
		d.unmountTmpfs()
		return nil, err
	}
	if err := d.serveGroupDatasets(); err != nil {
		d.opts.GroupDrain = 0 // nothing was served: no drain
		d.stopGroup()
		d.stop()
		d.cache.Close()
		d.unmountTmpfs()
		return nil, err
	}
	if opts.Keeper != "" {
		d.keeper = keeper.NewClient(opts.Keeper)
		d.resumeAll()
		d.wg.Add(1)
		go d.watchKeeper()
	}
	d.wg.Add(2)
	go d.pruneLoop()
	go d.memoryLoop()
	served := map[string]bool{}
	d.mu.Lock()
	for _, m := range d.datasets {
		served[m.mnt] = true
	}
	d.mu.Unlock()
	sweepDeadMounts(filepath.Join(opts.StateDir, "datasets"), served, func(path string, err error) {
		if err != nil {
			d.log.Error(err, "A dead dataset mount of an earlier daemon could not be detached", "path", path)
			return
		}
		d.log.Info("Detached a dead dataset mount of an earlier daemon", "path", path)
	})
	return d, nil
}

// MetricsAddr returns the address metrics are served on ("" until Run
// listens; useful with --metrics-address=127.0.0.1:0).
func (d *Daemon) MetricsAddr() string {
	a, _ := d.metricsAddr.Load().(string)
	return a
}

// Cache returns the daemon's cache (for tests).
func (d *Daemon) Cache() *cache.Cache { return d.cache }

func (d *Daemon) unmountTmpfs() {
	if d.memMount != "" {
		if err := unix.Unmount(d.memMount, unix.MNT_DETACH); err != nil {
			d.log.Error(err, "Unmounting the memory tier failed", "path", d.memMount)
		}
	}
}

// Close unmounts every dataset, closes the cache and the memory tier.
func (d *Daemon) Close() error {
	d.stop()
	d.wg.Wait()
	d.mu.Lock()
	ms := d.datasets
	d.datasets = map[string]*mounted{}
	d.holders = map[string]string{}
	d.mu.Unlock()
	var errs []error
	if d.keeper != nil {
		ms, errs = d.handOverAll(ms)
		d.keeper.Close()
	}
	for _, m := range ms {
		if m.timer != nil {
			m.timer.Stop()
		}
		if err := m.fs.Unmount(); err != nil && slices.Contains(cisternMounts(), m.mnt) {
			// (Not an error when someone else already removed it.)
			errs = append(errs, err)
			_ = unix.Unmount(m.mnt, unix.MNT_DETACH)
		}
	}
	d.stopGroup()
	errs = append(errs, d.cache.Close())
	d.unmountTmpfs()
	return errors.Join(errs...)
}

// Run serves the control API (and metrics) until ctx is cancelled, then
// closes the daemon.
func (d *Daemon) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(d.opts.Socket), 0o755); err != nil {
		return err
	}
	_ = os.Remove(d.opts.Socket)
	// The socket is born 0600 (no window in which another user could
	// connect and send secrets or mount requests).
	old := unix.Umask(0o177)
	lis, err := net.Listen("unix", d.opts.Socket)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", d.opts.Socket, err)
	}
	srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(lis) }()
	var msrv *http.Server
	if d.opts.MetricsAddr != "" {
		ml, err := net.Listen("tcp", d.opts.MetricsAddr)
		if err != nil {
			srv.Close()
			return fmt.Errorf("metrics listener: %w", err)
		}
		d.metricsAddr.Store(ml.Addr().String())
		msrv = &http.Server{Handler: metricsHandler(d.Stats, d.serveHealth), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- msrv.Serve(ml) }()
	}
	d.log.Info("Cache daemon serving", "socket", d.opts.Socket, "metrics", d.opts.MetricsAddr, "tiers", d.opts.tiers())
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if msrv != nil {
		_ = msrv.Shutdown(sctx)
	}
	os.Remove(d.opts.Socket)
	return errors.Join(err, d.Close())
}

// loadSalt reads the node's key salt, making it on first start (32 random
// bytes, 0600). It is kept so that keys, and so the cache, survive a
// restart.
func loadSalt(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(b) == 32 {
		return b, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("key salt: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, fmt.Errorf("key salt: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("key salt: %w", err)
	}
	return b, nil
}
