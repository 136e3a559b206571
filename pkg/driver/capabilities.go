package driver

import (
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

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

// checkCapability validates one capability (see checkCapabilities).
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

// mountFlags returns the capability's extra mount flags, minus "ro", which
// the read-only decision already covers.
func mountFlags(c *csi.VolumeCapability) []string {
	return slices.DeleteFunc(slices.Clone(c.GetMount().GetMountFlags()), func(f string) bool { return f == "ro" })
}
