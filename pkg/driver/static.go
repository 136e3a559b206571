package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Static PVs. An administrator may write a PV by hand: a volumeHandle of
// their choice, the dataset's parameters in volumeAttributes (with a literal
// subPath: there is no PVC to fill a template from) and credentials by
// nodeStageSecretRef. No controller call made it, so its ID is not a
// Cistern volume ID; the node builds the same VolumeID from the attributes
// and keeps it, by the handle's hash, for as long as the volume is staged,
// so calls that carry only the handle (stats, health) find the volume.
// A static volume always retains its data: DeleteVolume ignores a handle
// Cistern did not make.

// staticVolume is the nodeVolume of a static PV's handle and attributes.
func (d *Driver) staticVolume(rawID string, volCtx map[string]string) (*nodeVolume, error) {
	p, err := staticParams(rawID, volCtx)
	if err != nil {
		return nil, err
	}
	if p.CacheGroup != "" && p.CacheGroup != d.opts.CacheGroup {
		return nil, status.Errorf(codes.FailedPrecondition, "static volume %s: dataset %s is served by cache group %q; this node is in %q (give the PV a nodeAffinity on %s)", truncate(rawID, 64), p.Dataset, p.CacheGroup, d.opts.CacheGroup, TopologyCacheGroup)
	}
	id := VolumeID{Dataset: p.Dataset, ReadOnly: p.ReadOnly(), OnDelete: Retain, NameHash: NameHash(rawID), Source: p.Source, SubPath: p.SubPath}
	return &nodeVolume{id: id, params: p, readOnly: p.ReadOnly(), static: true}, nil
}

// staticParams reads a static PV's attributes as dataset parameters, with
// the literal sub-path resolved.
func staticParams(rawID string, volCtx map[string]string) (*Params, error) {
	bad := func(format string, a ...any) error {
		return status.Errorf(codes.InvalidArgument, "volume %s is not a Cistern volume ID, so it is read as a static PV, whose volumeAttributes are dataset parameters: %s", truncate(rawID, 64), fmt.Sprintf(format, a...))
	}
	// The sub-path is the administrator's literal choice, not a template
	// held to a namespace's tree: a PV binds to one claim, and only an
	// administrator writes PVs.
	tmpl, given := volCtx[ParamSubPath]
	rest := make(map[string]string, len(volCtx))
	for k, v := range volCtx {
		if k != ParamSubPath {
			rest[k] = v
		}
	}
	p, err := ParseParams(rest, false)
	if err != nil {
		return nil, bad("%v", err)
	}
	switch {
	case !given && !p.Shared:
		return nil, bad("parameter %s is required: name the volume's directory in the dataset (\"\" for its root)", ParamSubPath)
	case strings.Contains(tmpl, "$"):
		return nil, bad("parameter %s %q: a static PV takes a literal path (templates need a PVC or a pod)", ParamSubPath, tmpl)
	case p.OnDelete != Retain:
		return nil, bad("parameter %s=%s does not apply: a static PV's data is the administrator's, and Cistern never deletes it", ParamOnDelete, p.OnDelete)
	}
	sub, err := ResolveSubPath(tmpl, nil)
	if err != nil {
		return nil, bad("parameter %s %q: %v", ParamSubPath, tmpl, err)
	}
	p.SubPath = sub
	return p, nil
}

// staticFile is where the node keeps a staged static volume's VolumeID.
func (d *Driver) staticFile(rawID string) string {
	return filepath.Join(d.opts.StateDir, "static", NameHash(rawID))
}

// rememberStatic keeps a staged static volume's ID (no secret in it).
func (d *Driver) rememberStatic(rawID string, id VolumeID) error {
	f := d.staticFile(rawID)
	if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
		return err
	}
	tmp := f + ".tmp"
	if err := os.WriteFile(tmp, []byte(id.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, f)
}

// forgetStatic drops a static volume's ID at unstage.
func (d *Driver) forgetStatic(rawID string) error {
	if err := os.Remove(d.staticFile(rawID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// volumeID decodes a volume ID, or finds a staged static volume's: the
// answer for calls that carry no volume context. It fails with NotFound.
func (d *Driver) volumeID(rawID string) (VolumeID, error) {
	id, err := ParseVolumeID(rawID)
	if err == nil || strings.HasPrefix(rawID, volumeIDPrefix+"#") {
		if err != nil {
			return VolumeID{}, status.Errorf(codes.NotFound, "volume %s: %v", rawID, err)
		}
		return id, nil
	}
	b, rerr := os.ReadFile(d.staticFile(rawID))
	if rerr != nil {
		return VolumeID{}, status.Errorf(codes.NotFound, "volume %s: %v, and no static volume of that handle is staged on this node", truncate(rawID, 64), err)
	}
	if id, err = ParseVolumeID(string(b)); err != nil {
		return VolumeID{}, status.Errorf(codes.Internal, "static volume %s: the node's record %s: %v", truncate(rawID, 64), d.staticFile(rawID), err)
	}
	return id, nil
}
