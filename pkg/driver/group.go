package driver

import (
	"fmt"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// applyMountGroup makes a read-write POSIX volume usable by the pod's
// fsGroup (CSI VOLUME_MOUNT_GROUP, which the kubelet sends instead of
// changing the owner of every file itself): the volume's own directory
// gets the group, group rwx and the setgid bit, so what the pod creates
// inside it belongs to the group too. Nothing else in the dataset changes.
// The change goes through the dataset's mount, so the kernel's attribute
// cache stays right. An S3 dataset gets its group when it is mounted; a
// read-only volume is left as it is.
func (d *Driver) applyMountGroup(mnt string, id VolumeID, ro bool, group string) error {
	if group == "" || ro || id.Source.IsS3() {
		return nil
	}
	gid, err := api.ParseGroup(group)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "volume_capability: %v", err)
	}
	dir, err := posixDataset{root: mnt}.OpenDir(id.SubPath)
	if err != nil {
		return subPathStatus(err, id.Dataset, id.SubPath)
	}
	defer dir.Close()
	fd := int(dir.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return status.Errorf(codes.Internal, "dataset %s, sub-path %q: %v", id.Dataset, id.SubPath, err)
	}
	if st.Gid != gid {
		if err := unix.Fchownat(fd, "", -1, int(gid), unix.AT_EMPTY_PATH); err != nil {
			return status.Errorf(codes.Internal, "dataset %s, sub-path %q: give the volume to group %d: %v", id.Dataset, id.SubPath, gid, err)
		}
	}
	if mode := st.Mode & 0o7777; mode|0o2070 != mode {
		// Through the descriptor's /proc link: exactly the opened directory.
		if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), mode|0o2070); err != nil {
			return status.Errorf(codes.Internal, "dataset %s, sub-path %q: open the volume to group %d: %v", id.Dataset, id.SubPath, gid, err)
		}
	}
	return nil
}
