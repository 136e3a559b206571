package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// CreateVolume turns dataset parameters into a volume: a sub-directory of
// the dataset, created for a read-write dataset and required to exist for a
// read-only one.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	logger := klog.FromContext(ctx).WithValues("name", req.GetName())
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if req.GetVolumeContentSource() != nil {
		return nil, status.Error(codes.InvalidArgument, "volume_content_source: Cistern volumes cannot be created from snapshots or other volumes")
	}
	p, err := ParseParams(req.GetParameters(), false)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := checkCapabilities(req.GetVolumeCapabilities(), p.ReadOnly(), p.Dataset); err != nil {
		return nil, err
	}
	capacity, err := capacityOf(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	topology, err := d.accessibleTopology(ctx, p, req.GetAccessibilityRequirements())
	if err != nil {
		return nil, err
	}
	meta := req.GetParameters()
	vars := map[string]string{
		VarPVCNamespace: meta[MetaPVCNamespace],
		VarPVCName:      meta[MetaPVCName],
		VarPVName:       req.GetName(), // the provisioner names a volume after its PV
	}
	if pv := meta[MetaPVName]; pv != "" {
		vars[VarPVName] = pv
	}
	if !p.Shared && vars[VarPVCNamespace] == "" {
		return nil, status.Errorf(codes.InvalidArgument, "parameter %s is missing: a dataset that is not shared needs the PVC's namespace (run csi-provisioner with --extra-create-metadata)", MetaPVCNamespace)
	}
	sub, err := ResolveSubPath(p.SubPath, vars)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	unlock, err := d.volumeLocks.lock("name/" + req.GetName())
	if err != nil {
		return nil, err
	}
	defer unlock()

	id := VolumeID{
		Dataset:  p.Dataset,
		ReadOnly: p.ReadOnly(),
		OnDelete: p.OnDelete,
		NameHash: NameHash(req.GetName()),
		Source:   p.Source,
		SubPath:  sub,
	}
	rec := &volumeRecord{
		Name:          req.GetName(),
		VolumeID:      id.String(),
		SubPath:       sub,
		Fingerprint:   fingerprint(p, sub, req.GetCapacityRange()),
		CapacityBytes: capacity,
		Created:       time.Now().UTC(),
	}
	ds, err := d.openDataset(p.Source, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	if err := ds.CheckRoot(ctx); err != nil {
		return nil, sourceStatus(err, p.Dataset, p.Source)
	}
	store := d.records(p.Source, p.ReadOnly(), ds)

	// The record check, the directory and the record are one step for
	// this subtree: a DeleteVolume of an overlapping volume cannot remove
	// the directory between them.
	release := d.subtrees.lock(p.Source.String(), sub)
	defer release()
	old, err := store.Get(ctx, id.NameHash)
	switch {
	case err == nil && old.Fingerprint != rec.Fingerprint:
		return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with other parameters or capacity", req.GetName())
	case err == nil && old.Deleting:
		return nil, status.Errorf(codes.Aborted, "volume %q is being deleted", req.GetName())
	case err == nil:
		rec = old // idempotent retry: same volume, same answer
	case !errors.Is(err, fs.ErrNotExist):
		return nil, recordStatus("read", err)
	default:
		old = nil
	}
	if !p.ReadOnly() && old == nil {
		all, err := store.List(ctx)
		if err != nil {
			return nil, recordStatus("list", err)
		}
		for _, o := range all {
			if o.Deleting && overlaps(o.SubPath, sub) {
				return nil, status.Errorf(codes.Aborted, "sub-directory %q of dataset %s overlaps volume %q, which is being deleted; retry when it is gone", sub, p.Dataset, o.Name)
			}
		}
	}

	if p.ReadOnly() {
		ok, err := ds.Exists(ctx, sub)
		if err != nil {
			return nil, subPathStatus(err, p.Dataset, sub)
		}
		if !ok {
			return nil, status.Errorf(codes.FailedPrecondition, "sub-directory %q of read-only dataset %s does not exist: the controller never writes into a read-only dataset, so it must already hold data", sub, p.Dataset)
		}
	} else {
		if p.OnDelete != Retain && old == nil {
			// A volume that deletes (or archives) its directory gets one
			// the controller creates for it: a directory that exists
			// already holds data that is not this volume's (another
			// volume's, a static PV's, an inline volume's, the dataset's
			// own), which the guard could not prove safe to remove.
			exists, err := ds.Exists(ctx, sub)
			if err != nil {
				return nil, subPathStatus(err, p.Dataset, sub)
			}
			if exists {
				return nil, status.Errorf(codes.FailedPrecondition, "sub-directory %q of dataset %s already exists: with onDelete=%s Cistern only deletes a directory it created for the volume; use a subPath unique to the volume (such as ${pvc.namespace}/${pv.name}) or onDelete=retain", sub, p.Dataset, p.OnDelete)
			}
		}
		if err := ds.MkdirAll(ctx, sub); err != nil {
			return nil, subPathStatus(err, p.Dataset, sub)
		}
	}

	if old == nil {
		if err := store.Put(ctx, id.NameHash, rec); err != nil {
			return nil, recordStatus("write", err)
		}
		logger.Info("Volume created", "volumeID", rec.VolumeID, "dataset", p.Dataset, "subPath", sub)
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:           rec.VolumeID,
		CapacityBytes:      rec.CapacityBytes,
		VolumeContext:      p.Context(),
		AccessibleTopology: topology,
	}}, nil
}

// DeleteVolume applies the volume's onDelete policy. It only ever touches the
// volume's own sub-directory, and only when no other volume's sub-path is the
// same, inside it or around it; otherwise the data is retained.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	logger := klog.FromContext(ctx)
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	id, err := ParseVolumeID(req.GetVolumeId())
	if err != nil {
		// Not a volume this driver made: there is nothing to delete.
		logger.Info("Ignoring delete of a volume ID Cistern did not make", "reason", err)
		return &csi.DeleteVolumeResponse{}, nil
	}
	unlock, err := d.volumeLocks.lock("id/" + req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()

	ds, store, err := d.volumeStore(id, req.GetSecrets())
	if err != nil {
		return nil, err
	}

	// Decide under the subtree's lock, mark the record, and remove or
	// archive the directory without it (that may be long: an S3 prefix
	// of many objects); then drop the record under the lock again.
	release := d.subtrees.lock(id.Source.String(), id.SubPath)
	rec, remove, err := d.decideDelete(ctx, id, req.GetVolumeId(), store)
	release()
	if err != nil || rec == nil {
		return &csi.DeleteVolumeResponse{}, err
	}
	var after func() error
	if remove {
		if after, err = d.removeData(ctx, id, ds); err != nil {
			return nil, err // the record stays marked: the retry removes again
		}
	}
	release = d.subtrees.lock(id.Source.String(), id.SubPath)
	err = store.Delete(ctx, id.NameHash)
	release()
	if err != nil {
		return nil, recordStatus("delete", err)
	}
	if after != nil {
		if err := after(); err != nil {
			// The volume is gone from its place; the trash is retried by
			// the next delete.
			logger.Error(err, "Emptying the dataset's trash failed", "dataset", id.Dataset)
		}
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// decideDelete runs under the subtree's lock. It returns the volume's
// record (nil: nothing to do) and whether its directory is to be removed,
// in which case the record is marked Deleting first. It only ever removes
// the volume's own sub-directory, and only when no other volume's
// sub-path is the same, inside it or around it.
func (d *Driver) decideDelete(ctx context.Context, id VolumeID, rawID string, store records) (*volumeRecord, bool, error) {
	logger := klog.FromContext(ctx)
	rec, err := store.Get(ctx, id.NameHash)
	if errors.Is(err, fs.ErrNotExist) {
		// Never created by us, or already deleted: never delete data
		// without the record of the volume that owns it.
		return nil, false, nil
	}
	if err != nil {
		return nil, false, recordStatus("read", err)
	}
	if rec.VolumeID != rawID {
		logger.Info("Volume record belongs to another volume ID; nothing deleted", "recordVolumeID", rec.VolumeID)
		return nil, false, nil
	}
	if rec.Deleting {
		return rec, true, nil // a retry: decided before
	}
	if id.OnDelete == Retain || id.SubPath == "" {
		return rec, false, nil
	}
	all, err := store.List(ctx)
	if err != nil {
		return nil, false, recordStatus("list", err)
	}
	// Read-only volumes of the same source keep their records apart (the
	// controller never writes into a read-only dataset): they count too.
	ro, err := d.records(id.Source, true, nil).List(ctx)
	if err != nil {
		return nil, false, recordStatus("list", err)
	}
	all = append(all, ro...)
	var sharers []string
	for _, o := range all {
		if o.VolumeID != rawID && overlaps(o.SubPath, id.SubPath) {
			sharers = append(sharers, o.Name)
		}
	}
	if d.kube != nil {
		// Static PVs have no record, and a volume of another dataset
		// may lie in this one's tree: the API server knows them all.
		pvs, err := d.volumeSharers(ctx, id, rawID)
		if err != nil {
			return nil, false, kubeStatus("list the PersistentVolumes the delete guard checks", err)
		}
		sharers = append(sharers, pvs...)
	}
	if len(sharers) > 0 {
		sort.Strings(sharers)
		logger.Info("Sub-directory retained: other volumes use it", "subPath", id.SubPath, "onDelete", id.OnDelete, "sharedWith", strings.Join(sharers, ","))
		return rec, false, nil
	}
	rec.Deleting = true
	if err := store.Put(ctx, id.NameHash, rec); err != nil {
		return nil, false, recordStatus("write", err)
	}
	return rec, true, nil
}

// removeData deletes or archives the volume's sub-directory. A directory that
// is already gone is success.
func (d *Driver) removeData(ctx context.Context, id VolumeID, ds dataset) (after func() error, err error) {
	logger := klog.FromContext(ctx)
	switch id.OnDelete {
	case Delete:
		after, err = ds.Remove(ctx, id.SubPath)
		if err == nil {
			logger.Info("Volume deleted", "subPath", id.SubPath)
		}
	case Archive:
		var dst string
		dst, err = ds.Archive(ctx, id.SubPath, time.Now())
		if err == nil {
			logger.Info("Volume archived", "subPath", id.SubPath, "archive", dst)
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, subPathStatus(err, id.Dataset, id.SubPath)
	}
	return after, nil
}

// ValidateVolumeCapabilities confirms the capabilities a volume supports.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities are required")
	}
	id, err := ParseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s: %v", req.GetVolumeId(), err)
	}
	ds, err := d.openDataset(id.Source, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	ok, err := ds.Exists(ctx, id.SubPath)
	if err != nil {
		return nil, subPathStatus(err, id.Dataset, id.SubPath)
	}
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s: sub-directory %q of dataset %s does not exist", req.GetVolumeId(), id.SubPath, id.Dataset)
	}
	if len(req.GetParameters()) > 0 {
		p, err := ParseParams(req.GetParameters(), false)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if p.Source != id.Source || p.ReadOnly() != id.ReadOnly {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: "parameters name another source or access than the volume"}, nil
		}
	}
	if err := checkCapabilities(req.GetVolumeCapabilities(), id.ReadOnly, id.Dataset); err != nil {
		if status.Code(err) == codes.InvalidArgument {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
		}
		return nil, err
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ControllerGetCapabilities advertises CreateVolume/DeleteVolume, the
// single-node access modes (ReadWriteOncePod) and expansion (a recorded
// size, see ControllerExpandVolume).
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// capacityOf returns the capacity to report. Cistern does not enforce quotas
// (a volume is a directory of a shared dataset); it records what was asked so
// a retry with another size is recognised.
func capacityOf(r *csi.CapacityRange) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity_range: bytes must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "capacity_range: required_bytes %d exceeds limit_bytes %d", req, lim)
	}
	if req > 0 {
		return req, nil
	}
	return lim, nil
}

// accessibleTopology returns where a volume may be used: anywhere, or only on
// the nodes of its dataset's cache group (labelled TopologyCacheGroup=group
// by the administrator; the PV's node affinity). A group no node is
// labelled with is refused with ResourceExhausted, which tells the
// provisioner to let the scheduler try again (WaitForFirstConsumer), and
// the claim's events name the group.
//
// The group is not one of the node plugins' topology keys: a node moved
// between pools would report another set of keys, and csi-provisioner
// keeps the keys it first read for a claim, so a claim provisioned while
// its node changed pools stayed pending for good (seen in make k8s-e2e).
// A requisite from older node plugins may still carry the group.
func (d *Driver) accessibleTopology(ctx context.Context, p *Params, req *csi.TopologyRequirement) ([]*csi.Topology, error) {
	if p.CacheGroup == "" {
		return nil, nil
	}
	matched, seen := false, []string(nil)
	for _, t := range req.GetRequisite() {
		if g, ok := t.GetSegments()[TopologyCacheGroup]; ok {
			if g == p.CacheGroup {
				matched = true
				break
			}
			seen = append(seen, g)
		}
	}
	var where string
	switch {
	case matched:
	case len(seen) > 0:
		where = "the requested topology offers cache groups " + strings.Join(seen, ", ")
	case d.groupNodes != nil:
		ok, err := d.groupNodes(ctx, TopologyCacheGroup, p.CacheGroup)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "find the nodes of cache group %q: %v", p.CacheGroup, err)
		}
		if !ok {
			where = "no node is labelled " + TopologyCacheGroup + "=" + p.CacheGroup
		}
	}
	if where != "" {
		return nil, status.Errorf(codes.ResourceExhausted, "dataset %s is served by cache group %q, but %s: label the nodes of the group %s=%s", p.Dataset, p.CacheGroup, where, TopologyCacheGroup, p.CacheGroup)
	}
	return []*csi.Topology{{Segments: map[string]string{TopologyCacheGroup: p.CacheGroup}}}, nil
}

// fingerprint identifies what a CreateVolume asked for, to tell a retry from
// a conflicting request of the same name.
func fingerprint(p *Params, sub string, r *csi.CapacityRange) string {
	ctx := p.Context()
	keys := make([]string, 0, len(ctx))
	for k := range ctx {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\x00", k, ctx[k])
	}
	fmt.Fprintf(h, "subPath=%s\x00required=%s\x00limit=%s", sub,
		strconv.FormatInt(r.GetRequiredBytes(), 10), strconv.FormatInt(r.GetLimitBytes(), 10))
	return hex.EncodeToString(h.Sum(nil))
}
