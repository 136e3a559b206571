package driver

import (
	"context"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/mounter"
)

// A staged volume is bound under the node plugin's state directory, not on
// the kubelet's staging path, which stays a plain directory. The kubelet
// unstages a volume (NodeUnstageVolume) only once no other mount shows the
// same directory of the same file system as the staging path
// (GetDeviceMountRefs, mount-utils' SearchMountPoints): a bind of a
// dataset's root there (a shared dataset, a static PV of the whole
// dataset) is shown by the dataset's own FUSE mount too, and two volumes
// of one directory show each other. The kubelet then refused to unstage
// them, forever, and their mounts stayed after their pods and claims were
// gone. The kubelet hands the staging path to every later call, so the
// bind's place is derived from it.

// stageDir is where the volume the kubelet stages at staging is bound.
func (d *Driver) stageDir(staging string) string {
	return filepath.Join(d.opts.StateDir, "staged", NameHash(staging))
}

// stagedAt returns where the volume staged at staging is bound: stageDir,
// or the staging path itself for a volume an earlier version staged there
// (still mounted).
func (d *Driver) stagedAt(staging string) string {
	p := d.stageDir(staging)
	if st, err := mounter.Inspect(d.mounter, p); err == nil && st.Mounted {
		return p
	}
	if st, err := mounter.Inspect(d.mounter, staging); err == nil && st.Mounted {
		return staging
	}
	return p
}

// makeStageRoot makes the directory of staged volumes, root's only: no
// local user may walk into a volume through it.
func (d *Driver) makeStageRoot() error {
	dir := filepath.Join(d.opts.StateDir, "staged")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// moveLegacy moves the bind an earlier version made on the kubelet's
// staging path itself to stageDir, where the kubelet's check does not see
// it, and returns where the volume is staged now. The caller holds the
// volume's lock. A broken or missing bind is left where it is (restage and
// unstage handle it); a move that fails leaves the volume where it was.
func (d *Driver) moveLegacy(ctx context.Context, staging string) string {
	p := d.stagedAt(staging)
	if p != staging {
		return p
	}
	st, err := mounter.Inspect(d.mounter, staging)
	if err != nil || !st.Mounted || st.Corrupted {
		return staging
	}
	dst := d.stageDir(staging)
	log := klog.FromContext(ctx)
	if err := d.makeStageRoot(); err != nil {
		log.Error(err, "Could not move a volume staged on the kubelet's path", "stagingPath", staging)
		return staging
	}
	if err := os.MkdirAll(dst, 0o750); err != nil {
		log.Error(err, "Could not move a volume staged on the kubelet's path", "stagingPath", staging)
		return staging
	}
	if err := mounter.BindMount(d.mounter, staging, dst, st.ReadOnly); err != nil {
		log.Error(err, "Could not move a volume staged on the kubelet's path", "stagingPath", staging)
		return staging
	}
	if err := unix.Unmount(staging, 0); err != nil {
		// In use: detached once it is not (the new bind serves).
		_ = unix.Unmount(staging, unix.MNT_DETACH)
	}
	log.Info("Moved a volume staged on the kubelet's path (by an earlier version) to the node plugin's directory", "stagingPath", staging, "stagedAt", dst)
	return dst
}

// stagedMoving is moveLegacy under the volume's lock (for a publish,
// which holds only its target's).
func (d *Driver) stagedMoving(ctx context.Context, volumeID, staging string) (string, error) {
	if p := d.stagedAt(staging); p != staging {
		return p, nil
	}
	unlock, err := d.volumeLocks.lock("id/" + volumeID)
	if err != nil {
		return "", err
	}
	defer unlock()
	return d.moveLegacy(ctx, staging), nil
}
