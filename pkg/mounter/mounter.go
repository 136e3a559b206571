// Package mounter holds Cistern's mount helpers on k8s.io/mount-utils: bind
// mounts, mount-point checks and deadline-bounded cleanup.
package mounter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
)

// Interface is the narrow mount surface the driver uses: mount-utils'
// interface plus forced unmount.
type Interface interface {
	mount.MounterForceUnmounter
	// SameDir reports whether path shows the directory dir: a bind mount
	// of it (what a retried stage or publish finds), not of another one.
	SameDir(path string, dir *os.File) (bool, error)
}

// New returns the real mounter.
func New() Interface {
	return realMounter{mount.New("").(*mount.Mounter)}
}

type realMounter struct{ *mount.Mounter }

// SameDir compares the device and inode of path with dir's.
func (realMounter) SameDir(path string, dir *os.File) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Stat(path, &a); err != nil {
		return false, err
	}
	if err := unix.Fstat(int(dir.Fd()), &b); err != nil {
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// BindMount bind-mounts source on target, read-only if ro (the kernel then
// refuses writes with EROFS). extra are further per-mount flags such as
// "noexec". The target directory must exist.
func BindMount(m Interface, source, target string, ro bool, extra ...string) error {
	opts := []string{"bind"}
	if ro {
		opts = append(opts, "ro")
	}
	opts = append(opts, extra...)
	if err := m.Mount(source, target, "", opts); err != nil {
		return fmt.Errorf("bind mount %s on %s: %w", source, target, err)
	}
	return nil
}

// State describes what is mounted at a path.
type State struct {
	Mounted  bool
	ReadOnly bool
	// Corrupted is set when the path cannot be inspected because the mount
	// behind it is broken (ENOTCONN, ESTALE, EIO, ...).
	Corrupted bool
	Err       error
}

// probeTimeout bounds the statfs that tells a dead mount from a live one.
const probeTimeout = 5 * time.Second

// probe statfs'es path, giving up after timeout (a hung server: the
// goroutine stays blocked, the caller does not). A timeout is not an error:
// a slow mount is not a dead one.
func probe(path string, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		done <- unix.Statfs(path, &st)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return nil
	}
}

// Inspect returns the mount state of path. A path that does not exist is
// returned as os.ErrNotExist.
func Inspect(m Interface, path string) (State, error) {
	notMnt, err := mount.IsNotMountPoint(m, path)
	if err != nil {
		if os.IsNotExist(err) {
			return State{}, err
		}
		if mount.IsCorruptedMnt(err) {
			return State{Mounted: true, Corrupted: true, Err: err}, nil
		}
		return State{}, err
	}
	if notMnt {
		return State{}, nil
	}
	st := State{Mounted: true}
	// A bind of a dead FUSE connection still looks like a mount point to
	// the checks above (they read the mount table): ask the file system.
	if err := probe(path, probeTimeout); err != nil && mount.IsCorruptedMnt(err) {
		return State{Mounted: true, Corrupted: true, Err: err}, nil
	}
	mps, err := m.List()
	if err != nil {
		return State{}, err
	}
	// The last entry for a path is the one on top.
	for _, mp := range mps {
		if mp.Path == path {
			st.ReadOnly = slices.Contains(mp.Opts, "ro")
		}
	}
	return st, nil
}

// Cleanup unmounts target (forcing after timeout) and removes the directory.
// It never blocks past ctx: if the unmount hangs (a dead FUSE server, a hung
// NAS), the mount is detached lazily and an error is returned, so the caller
// releases its locks and the CO retries.
func Cleanup(ctx context.Context, m Interface, target string, timeout time.Duration) error {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = max(time.Until(dl)/2, 10*time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- mount.CleanupMountWithForce(target, m, true, timeout) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	klog.FromContext(ctx).Info("Unmount did not finish in time, detaching lazily", "path", target)
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("lazy unmount of %s after %w: %w", target, ctx.Err(), err)
	}
	return fmt.Errorf("unmount of %s: %w (detached lazily; retry to remove the directory)", target, ctx.Err())
}

// MountRefs lists mount points under dir in the current mount table,
// deepest first. Used by tests and the demo to prove nothing was left behind.
func MountRefs(m Interface, dir string) ([]string, error) {
	mps, err := m.List()
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	var out []string
	for _, mp := range mps {
		if mp.Path == dir || len(mp.Path) > len(dir) && mp.Path[:len(dir)+1] == dir+"/" {
			out = append(out, mp.Path)
		}
	}
	slices.Reverse(out)
	return out, nil
}
