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
	return giveToGroup(int(dir.Fd()), id, gid)
}

// applyPublishGroup applies a publishing pod's fsGroup to a staged
// read-write POSIX volume, through its staging path (a bind of the
// volume's directory): the kubelet stages a volume once for all its pods
// on a node, so a pod that arrives later, with its own fsGroup, is only
// seen at publish.
func (d *Driver) applyPublishGroup(staging string, id VolumeID, group string) error {
	if group == "" || id.ReadOnly || id.Source.IsS3() {
		return nil
	}
	gid, err := api.ParseGroup(group)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "volume_capability: %v", err)
	}
	fd, err := unix.Open(staging, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return status.Errorf(codes.Internal, "staging path %s: %v", staging, err)
	}
	defer unix.Close(fd)
	return giveToGroup(fd, id, gid)
}

// giveToGroup gives the directory open at fd to gid, with group rwx and
// the setgid bit.
func giveToGroup(fd int, id VolumeID, gid uint32) error {
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
