package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/cistern-csi/cistern/pkg/mounter"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodeGetVolumeStats reports the usage of the file system behind a volume
// path. The path must hold this volume: the same directory as the volume's
// sub-directory in its dataset.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case req.GetVolumePath() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_path is required")
	}
	id, err := d.volumeID(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if h := checkVolumePath(d.mounter, id, req.GetVolumePath()); h != nil {
		if h.Status == csi.VolumeHealthErrorType_INACCESSIBLE && h.Reason == reasonNotMounted {
			return nil, status.Errorf(codes.NotFound, "volume %s is not at %s: %s", req.GetVolumeId(), req.GetVolumePath(), h.Message)
		}
		return nil, status.Errorf(codes.Internal, "volume %s at %s: %s", req.GetVolumeId(), req.GetVolumePath(), h.Message)
	}
	if id.Source.IsS3() {
		// An object store has no size and no inode count: the figures
		// are unknown (the mount's statfs shows room, not a size).
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES}}}, nil
	}
	// The source's file system, as the dataset's mount reports it.
	var sfs unix.Statfs_t
	if err := unix.Statfs(req.GetVolumePath(), &sfs); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", req.GetVolumePath(), err)
	}
	bs := int64(sfs.Bsize)
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(sfs.Blocks) * bs, Available: int64(sfs.Bavail) * bs, Used: int64(sfs.Blocks-sfs.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(sfs.Files), Available: int64(sfs.Ffree), Used: int64(sfs.Files - sfs.Ffree)},
	}}, nil
}

// Health reasons reported by NodeGetVolumeHealth.
const (
	reasonNotMounted    = "NotMounted"
	reasonMountBroken   = "MountBroken"
	reasonStaleMount    = "StaleMount"
	reasonSourceMissing = "SourceMissing"
)

// NodeGetVolumeHealth checks the volume's directory in its dataset and, when
// given, its staging and publish paths: a broken or stale mount, or a source
// directory that is gone, is reported as INACCESSIBLE.
func (d *Driver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	id, err := d.volumeID(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	health := &csi.VolumeHealth{VolumeId: req.GetVolumeId()}
	// An object store is checked through the mounts below (the node has
	// no credentials outside stage and publish).
	if !id.Source.IsS3() {
		dir, err := posixDataset{root: id.Source.Path, source: true}.OpenDir(id.SubPath)
		if err != nil {
			health.HealthStatuses = append(health.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
				Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: reasonSourceMissing,
				Message: fmt.Sprintf("dataset %s, sub-path %q: %v", id.Dataset, id.SubPath, err),
			})
		} else {
			dir.Close()
		}
	}
	staged := ""
	if req.GetStagingTargetPath() != "" {
		staged = d.stagedAt(req.GetStagingTargetPath())
	}
	for _, p := range []string{staged, req.GetVolumePublishPath()} {
		if p == "" {
			continue
		}
		if h := checkVolumePath(d.mounter, id, p); h != nil {
			health.HealthStatuses = append(health.HealthStatuses, h)
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: health}, nil
}

// checkVolumePath returns nil when path is a healthy mount, or the problem.
func checkVolumePath(m mounter.Interface, id VolumeID, path string) *csi.VolumeHealth_VolumeHealthEntry {
	bad := func(reason, format string, a ...any) *csi.VolumeHealth_VolumeHealthEntry {
		return &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: reason, Message: fmt.Sprintf(format, a...)}
	}
	st, err := mounter.Inspect(m, path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return bad(reasonNotMounted, "%s does not exist", path)
	case err != nil:
		return bad(reasonMountBroken, "inspect %s: %v", path, err)
	case st.Corrupted:
		return bad(reasonMountBroken, "the mount at %s is broken: %v", path, st.Err)
	case !st.Mounted:
		return bad(reasonNotMounted, "%s is not a mount point", path)
	}
	var sst unix.Stat_t
	if err := unix.Stat(path, &sst); err != nil {
		return bad(reasonStaleMount, "stat %s: %v", path, err)
	}
	if sst.Nlink == 0 {
		return bad(reasonStaleMount, "%s shows a directory that was removed from dataset %s", path, id.Dataset)
	}
	return nil
}
