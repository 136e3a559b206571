package driver

import (
	"slices"

	"github.com/cistern-csi/cistern/pkg/cache/api"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// allowedMountFlags are the per-mount flags a capability may ask for; they
// restrict a bind mount and can weaken nothing.
var allowedMountFlags = map[string]bool{"ro": true, "noexec": true, "nosuid": true, "nodev": true, "noatime": true, "nodiratime": true, "relatime": true}

// checkCapabilities validates the capabilities a volume is created or
// validated with: each well formed (checkCapability), and reader modes
// only on a read-only dataset, so a PVC that asks to write a read-only
// dataset fails at provisioning with a message that says why.
func checkCapabilities(caps []*csi.VolumeCapability, readOnly bool, dataset string) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume_capabilities are required")
	}
	for _, c := range caps {
		if err := checkCapability(c); err != nil {
			return err
		}
		if readOnly && !isReaderAccess(c) {
			return status.Errorf(codes.InvalidArgument, "volume_capability: dataset %s is read-only; access mode %s is not allowed (use ReadOnlyMany: MULTI_NODE_READER_ONLY)", dataset, c.GetAccessMode().GetMode())
		}
	}
	return nil
}

// checkCapability validates one capability's shape: mount access, known
// mount flags, a known access mode. The node takes every mode: the
// kubelet sends ReadWriteOnce (SINGLE_NODE_WRITER, or
// SINGLE_NODE_SINGLE_WRITER since the driver advertises
// SINGLE_NODE_MULTI_WRITER) for every inline volume and the PV's first
// access mode for the others, whatever the dataset allows; a read-only
// dataset is enforced by mounting it read-only (EROFS), not by refusing
// the request.
func checkCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	if c.GetBlock() != nil {
		return status.Error(codes.InvalidArgument, "volume_capability: block access is not supported; Cistern volumes are directories (access_type mount)")
	}
	if c.GetMount() == nil {
		return status.Error(codes.InvalidArgument, "volume_capability: access_type mount is required")
	}
	if g := c.GetMount().GetVolumeMountGroup(); g != "" {
		if _, err := api.ParseGroup(g); err != nil {
			return status.Errorf(codes.InvalidArgument, "volume_capability: %v", err)
		}
	}
	for _, f := range c.GetMount().GetMountFlags() {
		if !allowedMountFlags[f] {
			return status.Errorf(codes.InvalidArgument, "volume_capability: mount flag %q is not supported (allowed: ro, noexec, nosuid, nodev, noatime, nodiratime, relatime)", f)
		}
	}
	switch mode := c.GetAccessMode().GetMode(); mode {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER, csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
	default:
		return status.Errorf(codes.InvalidArgument, "volume_capability: access mode %s is not supported", mode)
	}
	return nil
}

// isReaderAccess reports whether the access mode only reads.
func isReaderAccess(c *csi.VolumeCapability) bool {
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true
	}
	return false
}

// isReaderMode reports whether the capability only reads: a reader access
// mode, or the "ro" mount flag.
func isReaderMode(c *csi.VolumeCapability) bool {
	return isReaderAccess(c) || slices.Contains(c.GetMount().GetMountFlags(), "ro")
}

// mountFlags returns the capability's extra mount flags, minus "ro", which
// the read-only decision already covers.
func mountFlags(c *csi.VolumeCapability) []string {
	return slices.DeleteFunc(slices.Clone(c.GetMount().GetMountFlags()), func(f string) bool { return f == "ro" })
}
