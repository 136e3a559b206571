package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/mounter"
)

// nodeVolume is what the node knows of a staged or published volume, from
// its ID (authoritative for source and sub-path) and its context.
type nodeVolume struct {
	id       VolumeID
	params   *Params
	readOnly bool // the dataset's access, from ID and context
	static   bool // an administrator's PV: the ID came from the context
}

// volumeFromRequest decodes a volume ID and its context and checks that they
// agree. A context that names another source than the ID is refused. An ID
// Cistern did not make is a static PV's (see staticVolume).
func (d *Driver) volumeFromRequest(rawID string, volCtx map[string]string) (*nodeVolume, error) {
	id, err := ParseVolumeID(rawID)
	if err != nil && !strings.HasPrefix(rawID, volumeIDPrefix+"#") {
		return d.staticVolume(rawID, volCtx)
	}
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s: %v", rawID, err)
	}
	p, err := ParseParams(volCtx, false)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume_context: %v", err)
	}
	if p.Source != id.Source || p.Dataset != id.Dataset {
		return nil, status.Errorf(codes.InvalidArgument, "volume_context names dataset %s at %s, but the volume ID names %s at %s", p.Dataset, p.Source, id.Dataset, id.Source)
	}
	return &nodeVolume{id: id, params: p, readOnly: id.ReadOnly || p.ReadOnly()}, nil
}

// NodeStageVolume bind-mounts the volume's sub-directory of the dataset to
// the staging path, read-only for a read-only dataset.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	staging := req.GetStagingTargetPath()
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case staging == "":
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is required")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	v, err := d.volumeFromRequest(req.GetVolumeId(), req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	unlock, err := d.volumeLocks.lock("id/" + req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	st := stageArgs{capability: req.GetVolumeCapability(), secrets: req.GetSecrets()}
	if err := d.makeStageRoot(); err != nil {
		return nil, status.Errorf(codes.Internal, "staged volumes' directory: %v", err)
	}
	if err := d.stage(ctx, req.GetVolumeId(), v, d.moveLegacy(ctx, staging), st); err != nil {
		return nil, err
	}
	// Kept in memory only, so a staging mount whose dataset mount is
	// lost can be made again at the next publish (see restage).
	d.staged.put(req.GetVolumeId(), st)
	return &csi.NodeStageVolumeResponse{}, nil
}

// stage asks the cache daemon for the dataset's mount and binds the
// volume's directory of it at staged (stagedAt: not the kubelet's staging
// path). The caller holds the volume's lock.
func (d *Driver) stage(ctx context.Context, rawID string, v *nodeVolume, staged string, st stageArgs) error {
	holder := "volume:" + rawID
	group := st.capability.GetMount().GetVolumeMountGroup()
	mnt, err := d.datasetMount(ctx, holder, v.params, v.readOnly, group, st.secrets)
	if err != nil {
		return err
	}
	if v.static {
		if !v.readOnly {
			// As CreateVolume would: a read-write static volume's
			// directory is made if missing (a read-only one must hold
			// data already).
			if err := (posixDataset{root: mnt}).MkdirAll(v.id.SubPath); err != nil {
				d.release(ctx, holder)
				return subPathStatus(err, v.id.Dataset, v.id.SubPath)
			}
		}
		if err := d.rememberStatic(rawID, v.id); err != nil {
			d.release(ctx, holder)
			return status.Errorf(codes.Internal, "static volume: %v", err)
		}
	}
	ro := v.readOnly || isReaderMode(st.capability)
	err = d.applyMountGroup(mnt, v.id, ro, group)
	if err == nil {
		err = d.bindDatasetDir(ctx, mnt, v.id, staged, ro)
	}
	if err != nil {
		d.release(ctx, holder)
		if v.static {
			_ = d.forgetStatic(rawID)
		}
		return err
	}
	klog.FromContext(ctx).V(2).Info("Volume staged", "stagedAt", staged, "readOnly", v.readOnly, "datasetMount", mnt)
	return nil
}

// NodeUnstageVolume unmounts the staging path.
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case req.GetStagingTargetPath() == "":
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is required")
	}
	unlock, err := d.volumeLocks.lock("id/" + req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Where it is bound, and the staging path itself (an earlier
	// version's bind).
	for _, p := range []string{d.stageDir(req.GetStagingTargetPath()), req.GetStagingTargetPath()} {
		if err := mounter.Cleanup(ctx, d.mounter, p, d.opts.UnmountTimeout); err != nil {
			return nil, status.Errorf(codes.Internal, "unmount the staged volume at %s: %v", p, err)
		}
	}
	if err := d.cache.Release(ctx, "volume:"+req.GetVolumeId()); err != nil {
		return nil, status.Errorf(codes.Unavailable, "release the dataset mount: %v", err)
	}
	if err := d.forgetStatic(req.GetVolumeId()); err != nil {
		return nil, status.Errorf(codes.Internal, "static volume: %v", err)
	}
	d.staged.drop(req.GetVolumeId())
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staging path to the pod's target path,
// or, for an ephemeral inline volume, the dataset's sub-directory directly.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case target == "":
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	if req.GetVolumeContext()[MetaEphemeral] == "true" {
		return d.publishInline(ctx, req)
	}
	if req.GetStagingTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is required: the volume must be staged first")
	}
	v, err := d.volumeFromRequest(req.GetVolumeId(), req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	c := req.GetVolumeCapability()
	if err := checkCapability(c); err != nil {
		return nil, err
	}
	ro := v.readOnly || req.GetReadonly() || isReaderMode(c)

	unlock, err := d.pathLocks.lock(target)
	if err != nil {
		return nil, err
	}
	defer unlock()

	staged, err := d.stagedMoving(ctx, req.GetVolumeId(), req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	st, err := mounter.Inspect(d.mounter, staged)
	if err == nil && st.Corrupted {
		// The dataset mount under the staging path is gone (the cache
		// daemon lost its connections): stage it again, so this pod and
		// later ones get a working volume.
		err = d.restage(ctx, req, v, staged, st.Err)
		st.Mounted, st.Corrupted = err == nil, err != nil
	}
	if _, isStatus := status.FromError(err); err != nil && isStatus {
		return nil, err // restage's answer
	}
	if err != nil || !st.Mounted || st.Corrupted {
		return nil, errNotStaged(req.GetVolumeId(), req.GetStagingTargetPath())
	}
	if !ro {
		if err := d.applyPublishGroup(staged, v.id, c.GetMount().GetVolumeMountGroup()); err != nil {
			return nil, err
		}
	}
	if err := d.singleWriters.claim(req.GetVolumeId(), target, c); err != nil {
		return nil, err
	}
	done, err := d.prepareTarget(ctx, target, ro)
	if err == nil && done {
		err = d.checkSamePath(target, staged)
	}
	if err != nil || done {
		if err != nil {
			d.singleWriters.release(req.GetVolumeId(), target)
		}
		return &csi.NodePublishVolumeResponse{}, err
	}
	if err := mounter.BindMount(d.mounter, staged, target, ro, mountFlags(c)...); err != nil {
		d.singleWriters.release(req.GetVolumeId(), target)
		return nil, status.Error(codes.Internal, err.Error())
	}
	klog.FromContext(ctx).V(2).Info("Volume published", "targetPath", target, "readOnly", ro)
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishInline serves an ephemeral inline volume: its attributes are dataset
// parameters, its source must be allowed on this node, and its sub-path is
// always under the pod's own namespace unless the dataset is shared (then it
// is read-only).
func (d *Driver) publishInline(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	attrs := req.GetVolumeContext()
	p, err := ParseParams(attrs, true)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "inline volume: %v", err)
	}
	if p.OnDelete != Retain {
		return nil, status.Errorf(codes.InvalidArgument, "inline volume: parameter %s=%s does not apply: inline volumes never delete dataset data", ParamOnDelete, p.OnDelete)
	}
	rule, ok := inlineRule(p.Source, d.opts.InlineSources)
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "inline volume: source %s is not allowed on this node (allowed: %v; set --inline-sources on the node plugin)", p.Source, d.opts.InlineSources)
	}
	if err := rule.admits(p, attrs); err != nil {
		return nil, err
	}
	if p.CacheGroup != "" && p.CacheGroup != d.opts.CacheGroup {
		return nil, status.Errorf(codes.FailedPrecondition, "inline volume: dataset %s is served by cache group %q; this node is in %q", p.Dataset, p.CacheGroup, d.opts.CacheGroup)
	}
	ns := attrs[MetaPodNamespace]
	if ns == "" && !p.Shared {
		return nil, status.Errorf(codes.InvalidArgument, "inline volume: %s is missing (the CSIDriver object needs podInfoOnMount: true)", MetaPodNamespace)
	}
	sub, err := ResolveSubPath(p.SubPath, map[string]string{VarPodNamespace: ns})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "inline volume: %v", err)
	}
	c := req.GetVolumeCapability()
	if err := checkCapability(c); err != nil {
		return nil, err
	}
	ro := p.ReadOnly() || req.GetReadonly() || isReaderMode(c)
	target := req.GetTargetPath()
	unlock, err := d.pathLocks.lock(target)
	if err != nil {
		return nil, err
	}
	defer unlock()

	holder := "target:" + target
	group := c.GetMount().GetVolumeMountGroup()
	mnt, err := d.datasetMount(ctx, holder, p, p.ReadOnly(), group, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	if !p.ReadOnly() {
		if err := (posixDataset{root: mnt}).MkdirAll(sub); err != nil {
			d.release(ctx, holder)
			return nil, subPathStatus(err, p.Dataset, sub)
		}
	}
	id := VolumeID{Dataset: p.Dataset, ReadOnly: p.ReadOnly(), OnDelete: Retain, NameHash: NameHash(req.GetVolumeId()), Source: p.Source, SubPath: sub}
	if err := d.applyMountGroup(mnt, id, ro, group); err != nil {
		d.release(ctx, holder)
		return nil, err
	}
	if err := d.bindDatasetDir(ctx, mnt, id, target, ro, mountFlags(c)...); err != nil {
		d.release(ctx, holder)
		return nil, err
	}
	klog.FromContext(ctx).V(2).Info("Inline volume published", "targetPath", target, "dataset", p.Dataset, "subPath", sub, "readOnly", ro)
	return &csi.NodePublishVolumeResponse{}, nil
}

// datasetMount asks the cache daemon for the dataset's mount on this node
// (mounting it on first use) and returns its path. holder keeps it mounted
// until released.
func (d *Driver) datasetMount(ctx context.Context, holder string, p *Params, readOnly bool, group string, secrets map[string]string) (string, error) {
	mc := p.MetaCache
	if readOnly && !p.ReadOnly() {
		mc = time.Hour // the volume ID says read-only: the context's default was for read-write
	}
	req := api.MountRequest{
		Holder: holder, Dataset: p.Dataset, Source: p.Source.String(), ReadOnly: readOnly,
		MetaCache: mc, Warmup: p.Warmup, Secrets: secrets, AccessPattern: p.AccessPattern,
		CacheGroup: p.CacheGroup,
	}
	if p.Source.IsS3() {
		// An object store has no owners: the parameters and the
		// volume's fsGroup say them, and the mount shows them.
		req.UID, req.GID, req.FileMode, req.DirMode = p.Owner.UID, p.Owner.GID, p.Owner.FileMode, p.Owner.DirMode
		req.MountGroup = group
	}
	resp, err := d.cache.Mount(ctx, req)
	switch {
	case err == nil:
		return resp.MountPath, nil
	case api.IsBadRequest(err):
		return "", status.Errorf(codes.InvalidArgument, "dataset %s: %v", p.Dataset, err)
	case api.IsNotFound(err):
		return "", status.Errorf(codes.NotFound, "dataset %s: %v", p.Dataset, err)
	case api.IsForbidden(err):
		return "", status.Errorf(codes.PermissionDenied, "dataset %s: %v", p.Dataset, err)
	}
	return "", status.Errorf(codes.Unavailable, "dataset %s: %v", p.Dataset, err)
}

// release drops a holder after a failed stage or publish; the error is
// logged, not returned: the request already failed for its own reason.
func (d *Driver) release(ctx context.Context, holder string) {
	if err := d.cache.Release(ctx, holder); err != nil {
		klog.FromContext(ctx).Error(err, "Releasing the dataset mount failed", "holder", holder)
	}
}

// bindDatasetDir bind-mounts the volume's directory of the dataset mounted
// at root on path. The directory is opened beneath the root (no symlink, no
// escape) and the open descriptor is what gets mounted, so the tree changing
// between the check and the mount cannot redirect it.
func (d *Driver) bindDatasetDir(ctx context.Context, root string, id VolumeID, path string, ro bool, flags ...string) error {
	dir, err := posixDataset{root: root}.OpenDir(id.SubPath)
	if err != nil {
		return subPathStatus(err, id.Dataset, id.SubPath)
	}
	defer dir.Close()
	done, err := d.prepareTarget(ctx, path, ro)
	if err != nil {
		return err
	}
	if done {
		return d.checkSameDir(path, dir)
	}
	src := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), dir.Fd())
	if err := mounter.BindMount(d.mounter, src, path, ro, flags...); err != nil {
		return status.Errorf(codes.Internal, "dataset %s, sub-path %q: %v", id.Dataset, id.SubPath, err)
	}
	return nil
}

// checkSameDir accepts an existing mount at path only if it shows dir
// (a retry of this volume's stage or publish); a mount of anything else is
// AlreadyExists, never taken for this volume.
func (d *Driver) checkSameDir(path string, dir *os.File) error {
	same, err := d.mounter.SameDir(path, dir)
	if err != nil {
		return status.Errorf(codes.Internal, "inspect %s: %v", path, err)
	}
	if !same {
		return status.Errorf(codes.AlreadyExists, "%s already holds a mount of another volume", path)
	}
	return nil
}

// checkSamePath is checkSameDir against the directory at want (a staging
// path).
func (d *Driver) checkSamePath(path, want string) error {
	dir, err := os.OpenFile(want, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return status.Errorf(codes.Internal, "open %s: %v", want, err)
	}
	defer dir.Close()
	return d.checkSameDir(path, dir)
}

// prepareTarget makes path ready for a mount. It reports done when the path
// already holds a healthy mount with the requested read-only flag
// (idempotent retry); a mount with the other flag is AlreadyExists; a broken
// mount is cleaned up so it can be mounted again.
func (d *Driver) prepareTarget(ctx context.Context, path string, ro bool) (done bool, err error) {
	st, err := mounter.Inspect(d.mounter, path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(path, 0o750); err != nil {
			return false, status.Errorf(codes.Internal, "create %s: %v", path, err)
		}
		return false, nil
	case err != nil:
		return false, status.Errorf(codes.Internal, "inspect %s: %v", path, err)
	case st.Corrupted:
		klog.FromContext(ctx).Error(st.Err, "Remounting a broken mount", "path", path)
		if err := mounter.Cleanup(ctx, d.mounter, path, d.opts.UnmountTimeout); err != nil {
			return false, status.Errorf(codes.Internal, "clean up broken mount %s: %v", path, err)
		}
		if err := os.MkdirAll(path, 0o750); err != nil {
			return false, status.Errorf(codes.Internal, "create %s: %v", path, err)
		}
		return false, nil
	case st.Mounted && st.ReadOnly != ro:
		return false, status.Errorf(codes.AlreadyExists, "%s is already mounted with readOnly=%t; requested readOnly=%t", path, st.ReadOnly, ro)
	case st.Mounted:
		return true, nil
	}
	return false, nil
}

// NodeUnpublishVolume unmounts the target path and removes it.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case req.GetTargetPath() == "":
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	}
	unlock, err := d.pathLocks.lock(req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := mounter.Cleanup(ctx, d.mounter, req.GetTargetPath(), d.opts.UnmountTimeout); err != nil {
		return nil, status.Errorf(codes.Internal, "unmount %s: %v", req.GetTargetPath(), err)
	}
	d.singleWriters.release(req.GetVolumeId(), req.GetTargetPath())
	// An inline volume holds its dataset's mount by target path; for any
	// other volume this is a no-op.
	if err := d.cache.Release(ctx, "target:"+req.GetTargetPath()); err != nil {
		return nil, status.Errorf(codes.Unavailable, "release the dataset mount: %v", err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetInfo reports the node. Every node plugin reports the same keys,
// whatever its cache group: the group is the administrator's node label,
// which the controller reads (see accessibleTopology).
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	seg := map[string]string{TopologyNode: d.opts.NodeID}
	return &csi.NodeGetInfoResponse{NodeId: d.opts.NodeID, AccessibleTopology: &csi.Topology{Segments: seg}}, nil
}

// NodeGetCapabilities advertises staging, stats, volume health, and
// SINGLE_NODE_MULTI_WRITER (so ReadWriteOncePod reaches the driver as
// SINGLE_NODE_SINGLE_WRITER, published at one target path at a time).
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}
