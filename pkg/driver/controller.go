package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/s3"
)

// records returns where the volume records of a dataset live: inside a
// read-write dataset (they travel with the data), in the controller's state
// directory for a read-only one (the controller never writes into it).
func (d *Driver) records(src Source, readOnly bool, ds dataset) records {
	if readOnly {
		return ctxRecords{recordStore{dir: filepath.Join(d.opts.StateDir, "records", NameHash(src.String()))}}
	}
	return ds.Records()
}

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
	topology, err := accessibleTopology(p, req.GetAccessibilityRequirements())
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

	if !d.volumeLocks.TryAcquire("name/" + req.GetName()) {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %q is already in progress", req.GetName())
	}
	defer d.volumeLocks.Release("name/" + req.GetName())

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

	d.recordsMu.Lock()
	old, err := store.Get(ctx, id.NameHash)
	d.recordsMu.Unlock()
	switch {
	case err == nil && old.Fingerprint != rec.Fingerprint:
		return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with other parameters or capacity", req.GetName())
	case err == nil:
		rec = old // idempotent retry: same volume, same answer
	case !errors.Is(err, fs.ErrNotExist):
		return nil, recordStatus("read", err)
	}

	if p.ReadOnly() {
		ok, err := ds.Exists(ctx, sub)
		if err != nil {
			return nil, subPathStatus(err, p.Dataset, sub)
		}
		if !ok {
			return nil, status.Errorf(codes.FailedPrecondition, "sub-directory %q of read-only dataset %s does not exist: the controller never writes into a read-only dataset, so it must already hold data", sub, p.Dataset)
		}
	} else if err := ds.MkdirAll(ctx, sub); err != nil {
		return nil, subPathStatus(err, p.Dataset, sub)
	}

	if old == nil {
		d.recordsMu.Lock()
		err := store.Put(ctx, id.NameHash, rec)
		d.recordsMu.Unlock()
		if err != nil {
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
		logger.Info("Ignoring delete of a volume ID Cistern did not make", "err", err)
		return &csi.DeleteVolumeResponse{}, nil
	}
	if !d.volumeLocks.TryAcquire("id/" + req.GetVolumeId()) {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %s is already in progress", req.GetVolumeId())
	}
	defer d.volumeLocks.Release("id/" + req.GetVolumeId())

	ds, err := d.openDataset(id.Source, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	store := d.records(id.Source, id.ReadOnly, ds)

	d.recordsMu.Lock()
	after, err := d.deleteLocked(ctx, id, req.GetVolumeId(), ds, store)
	d.recordsMu.Unlock()
	if err != nil {
		return nil, err
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

// deleteLocked runs under recordsMu. It returns the clean-up to run
// outside the lock (emptying the trash), if any.
func (d *Driver) deleteLocked(ctx context.Context, id VolumeID, rawID string, ds dataset, store records) (func() error, error) {
	logger := klog.FromContext(ctx)
	rec, err := store.Get(ctx, id.NameHash)
	if errors.Is(err, fs.ErrNotExist) {
		// Never created by us, or already deleted: never delete data
		// without the record of the volume that owns it.
		return nil, nil
	}
	if err != nil {
		return nil, recordStatus("read", err)
	}
	if rec.VolumeID != rawID {
		logger.Info("Volume record belongs to another volume ID; nothing deleted", "recordVolumeID", rec.VolumeID)
		return nil, nil
	}
	var after func() error
	if id.OnDelete != Retain && id.SubPath != "" {
		all, err := store.List(ctx)
		if err != nil {
			return nil, recordStatus("list", err)
		}
		var sharers []string
		for _, o := range all {
			if o.VolumeID != rawID && overlaps(o.SubPath, id.SubPath) {
				sharers = append(sharers, o.Name)
			}
		}
		if len(sharers) > 0 {
			sort.Strings(sharers)
			logger.Info("Sub-directory retained: other volumes use it", "subPath", id.SubPath, "onDelete", id.OnDelete, "sharedWith", strings.Join(sharers, ","))
		} else if after, err = d.removeData(ctx, id, ds); err != nil {
			return nil, err
		}
	}
	if err := store.Delete(ctx, id.NameHash); err != nil {
		return after, recordStatus("delete", err)
	}
	return after, nil
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

// ControllerGetCapabilities advertises CreateVolume/DeleteVolume.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{
		Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{
			Type: csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		}},
	}}}, nil
}

// allowedMountFlags are the per-mount flags a capability may ask for; they
// restrict a bind mount and can weaken nothing.
var allowedMountFlags = map[string]bool{"ro": true, "noexec": true, "nosuid": true, "nodev": true, "noatime": true, "nodiratime": true, "relatime": true}

// checkCapabilities validates capabilities against a dataset: mount access
// only, known flags, and reader modes only on a read-only dataset.
func checkCapabilities(caps []*csi.VolumeCapability, readOnly bool, dataset string) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume_capabilities are required")
	}
	for _, c := range caps {
		if err := checkCapability(c, readOnly, dataset); err != nil {
			return err
		}
	}
	return nil
}

func checkCapability(c *csi.VolumeCapability, readOnly bool, dataset string) error {
	if c == nil {
		return status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	if c.GetBlock() != nil {
		return status.Error(codes.InvalidArgument, "volume_capability: block access is not supported; Cistern volumes are directories (access_type mount)")
	}
	if c.GetMount() == nil {
		return status.Error(codes.InvalidArgument, "volume_capability: access_type mount is required")
	}
	for _, f := range c.GetMount().GetMountFlags() {
		if !allowedMountFlags[f] {
			return status.Errorf(codes.InvalidArgument, "volume_capability: mount flag %q is not supported (allowed: ro, noexec, nosuid, nodev, noatime, nodiratime, relatime)", f)
		}
	}
	mode := c.GetAccessMode().GetMode()
	switch mode {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
		if readOnly {
			return status.Errorf(codes.InvalidArgument, "volume_capability: dataset %s is read-only; access mode %s is not allowed (use ReadOnlyMany or ReadWriteOnce with readOnly: SINGLE_NODE_READER_ONLY / MULTI_NODE_READER_ONLY)", dataset, mode)
		}
	default:
		return status.Errorf(codes.InvalidArgument, "volume_capability: access mode %s is not supported", mode)
	}
	return nil
}

// isReaderMode reports whether the capability only reads: a reader access
// mode, or the "ro" mount flag.
func isReaderMode(c *csi.VolumeCapability) bool {
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true
	}
	return slices.Contains(c.GetMount().GetMountFlags(), "ro")
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

// accessibleTopology returns where a volume may be used: anywhere, or only in
// its dataset's cache group. A requisite topology that leaves the group out
// is refused with ResourceExhausted, which tells the provisioner to let the
// scheduler pick another node (WaitForFirstConsumer).
func accessibleTopology(p *Params, req *csi.TopologyRequirement) ([]*csi.Topology, error) {
	if p.CacheGroup == "" {
		return nil, nil
	}
	if len(req.GetRequisite()) > 0 {
		ok := false
		var seen []string
		for _, t := range req.GetRequisite() {
			g := t.GetSegments()[TopologyCacheGroup]
			if g == p.CacheGroup {
				ok = true
				break
			}
			if g == "" {
				g = "(none)"
			}
			seen = append(seen, g)
		}
		if !ok {
			return nil, status.Errorf(codes.ResourceExhausted, "dataset %s is served by cache group %q, but the requested topology offers cache groups %s: schedule the pod on a node labelled %s=%s", p.Dataset, p.CacheGroup, strings.Join(seen, ", "), TopologyCacheGroup, p.CacheGroup)
		}
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

// subPathStatus maps a sub-path operation's error to a gRPC status.
func subPathStatus(err error, dataset, sub string) error {
	if code, ok := storeCode(err); ok {
		return status.Errorf(code, "dataset %s, sub-path %q: %v", dataset, sub, err)
	}
	switch {
	case errors.Is(err, ErrEscapes), errors.Is(err, ErrInvalidSubPath):
		return status.Errorf(codes.InvalidArgument, "dataset %s, sub-path %q: %v", dataset, sub, err)
	case errors.Is(err, fs.ErrNotExist):
		return status.Errorf(codes.NotFound, "dataset %s, sub-path %q: %v", dataset, sub, err)
	}
	return status.Errorf(codes.Internal, "dataset %s, sub-path %q: %v", dataset, sub, err)
}

// storeCode maps an object store's errno to a gRPC code: refused
// credentials are PermissionDenied, an unreachable or failing store is
// Unavailable (the CO retries).
func storeCode(err error) (codes.Code, bool) {
	var se *s3.Error
	if !errors.As(err, &se) {
		return 0, false
	}
	switch se.Errno {
	case syscall.EACCES:
		return codes.PermissionDenied, true
	case syscall.ENOENT:
		return codes.NotFound, true
	}
	return codes.Unavailable, true
}

// sourceStatus is the error of a dataset root that cannot be reached.
func sourceStatus(err error, dataset string, src Source) error {
	code, ok := storeCode(err)
	if !ok || code == codes.NotFound {
		code = codes.FailedPrecondition
	}
	return status.Errorf(code, "dataset %s: source %s cannot be reached: %v", dataset, src.URL(), err)
}

// recordStatus is the error of a volume record operation.
func recordStatus(op string, err error) error {
	code, ok := storeCode(err)
	if !ok || code == codes.NotFound {
		code = codes.Internal
	}
	return status.Errorf(code, "%s volume record: %v", op, err)
}
