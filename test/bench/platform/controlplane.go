package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cistern-csi/cistern/test/bench/host"
	"github.com/cistern-csi/cistern/test/bench/readers"
)

// controlPlaneResult: publish latency and memory at many volumes.
type controlPlaneResult struct {
	publishes          int
	p50, p99, max      time.Duration
	volumes            int
	filesPerPod        int
	cisternCacheKiB    int64 // cistern-cache serving every volume
	cisternCSIKiB      int64
	rcloneKiB          int64 // the sum over one rclone mount per volume
	rcloneProcs        int
	rcloneSkip         string
	cisternReadErr     string
	rcloneReadErr      string
	cisternFUSEMounts  int
	rclonePerProcessKB int64
}

// podRead has every pod read the same few small files.
func podRead(roots []string, files []string) error {
	return readers.Parallel(len(roots), func(i int) error {
		acc := fileAccess{roots[i]}
		buf := make([]byte, 128<<10)
		for _, f := range files {
			if _, err := acc.readFile(f, buf); err != nil {
				return err
			}
		}
		return nil
	})
}

func controlPlane(ctx context.Context, b *bench, ds dataset, st store) (controlPlaneResult, error) {
	c := b.c
	res := controlPlaneResult{publishes: c.publishes, volumes: c.volumes, filesPerPod: min(10, len(ds.small))}
	cs := b.cistern
	// NodePublishVolume of a dataset that is already mounted and staged,
	// through the real CSI socket.
	var targets []string
	var lat []time.Duration
	for i := range max(c.publishes, c.volumes) {
		t := filepath.Join(cs.work, "pods", fmt.Sprintf("pod-%03d", i))
		start := time.Now()
		if err := cs.publish(ctx, t); err != nil {
			return res, err
		}
		if i < c.publishes {
			lat = append(lat, time.Since(start))
		}
		targets = append(targets, t)
	}
	defer func() {
		for _, t := range targets {
			_ = cs.unpublish(context.Background(), t)
		}
	}()
	slices.Sort(lat)
	res.p50, res.p99, res.max = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)], lat[len(lat)-1]
	say("NodePublishVolume x%d: p50 %s  p99 %s  max %s", len(lat), res.p50.Round(time.Microsecond), res.p99.Round(time.Microsecond), res.max.Round(time.Microsecond))

	// Memory: every pod reads the same files through its own volume.
	files := ds.small[:res.filesPerPod]
	if err := podRead(targets[:c.volumes], files); err != nil {
		res.cisternReadErr = err.Error()
	}
	res.cisternCacheKiB, res.cisternCSIKiB = host.RSSKiB(cs.cacheP.Process.Pid), host.RSSKiB(cs.csiP.Process.Pid)
	if st, err := cs.cache.Stats(ctx); err == nil {
		res.cisternFUSEMounts = len(st.Datasets)
	}
	say("memory: cistern-cache %d MiB serving %d volumes (%d FUSE mount), cistern-csi %d MiB", res.cisternCacheKiB>>10, c.volumes, res.cisternFUSEMounts, res.cisternCSIKiB>>10)

	// The model of per-volume mount pods: one rclone mount per volume.
	if res.rcloneSkip = available("rclone"); res.rcloneSkip != "" {
		return res, nil
	}
	var mounts []*fuseMount
	defer func() {
		var wg sync.WaitGroup
		for _, m := range mounts {
			wg.Add(1)
			go func() { defer wg.Done(); m.down() }()
		}
		wg.Wait()
	}()
	var roots []string
	var mu sync.Mutex
	var upErr error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range c.volumes {
		dir := filepath.Join(b.work, "rclone-pods", fmt.Sprintf("pod-%03d", i))
		m := newRclone(&b.procs, st, filepath.Join(dir, "mnt"), filepath.Join(dir, "cache"), filepath.Join(dir+".log"))
		mounts = append(mounts, m)
		roots = append(roots, m.dir)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := os.MkdirAll(dir, 0o755); err != nil {
				mu.Lock()
				upErr = err
				mu.Unlock()
				return
			}
			if err := m.up(); err != nil {
				mu.Lock()
				upErr = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if upErr != nil {
		res.rcloneSkip = upErr.Error()
		return res, nil
	}
	if err := podRead(roots, files); err != nil {
		res.rcloneReadErr = err.Error()
	}
	for _, m := range mounts {
		res.rcloneKiB += host.RSSKiB(m.cmd.Process.Pid)
	}
	res.rcloneProcs = len(mounts)
	res.rclonePerProcessKB = res.rcloneKiB / int64(len(mounts))
	say("memory: %d rclone mounts %d MiB in all (%d MiB each)", len(mounts), res.rcloneKiB>>10, res.rclonePerProcessKB>>10)
	return res, nil
}
