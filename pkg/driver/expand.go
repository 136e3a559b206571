package driver

import (
	"context"
	"errors"
	"io/fs"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// ControllerExpandVolume records a volume's new size. A Cistern volume is a
// sub-directory of a shared dataset: there is nothing to grow and no quota
// to raise, so the size is what the claim asked for, kept in the volume's
// record (so that a later CreateVolume retry or a read of the record
// reports it), and no node step follows. A smaller request leaves the
// recorded size as it is.
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case req.GetCapacityRange() == nil:
		return nil, status.Error(codes.InvalidArgument, "capacity_range is required")
	}
	want, err := capacityOf(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	id, err := ParseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s: %v", req.GetVolumeId(), err)
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkCapability(c); err != nil {
			return nil, err
		}
	}
	unlock, err := d.volumeLocks.lock("id/" + req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	_, store, err := d.volumeStore(id, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	release := d.subtrees.lock(id.Source.String(), id.SubPath)
	defer release()
	rec, err := store.Get(ctx, id.NameHash)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, status.Errorf(codes.NotFound, "volume %s: no record in dataset %s (it was deleted, or not made by this driver)", req.GetVolumeId(), id.Dataset)
	case err != nil:
		return nil, recordStatus("read", err)
	case rec.VolumeID != req.GetVolumeId():
		return nil, status.Errorf(codes.NotFound, "volume %s: its record names volume %s", req.GetVolumeId(), rec.VolumeID)
	case rec.Deleting:
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is being deleted", req.GetVolumeId())
	}
	if want > rec.CapacityBytes {
		old := rec.CapacityBytes
		rec.CapacityBytes = want
		if err := store.Put(ctx, id.NameHash, rec); err != nil {
			return nil, recordStatus("write", err)
		}
		klog.FromContext(ctx).Info("Volume size recorded", "from", old, "to", want)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: rec.CapacityBytes, NodeExpansionRequired: false}, nil
}
