package driver

import (
	"os"
	"path/filepath"

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
