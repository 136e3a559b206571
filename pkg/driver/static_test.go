package driver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestStaticPV: an administrator's PV, with a handle of their choice and
// the dataset's parameters as volumeAttributes, stages, publishes, reports
// stats and health, and unstages like a provisioned volume; DeleteVolume
// leaves its data alone.
func TestStaticPV(t *testing.T) {
	ctx := context.Background()
	d, m := newTestDriver(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "prices/2026"), 0o755); err != nil {
		t.Fatal(err)
	}
	const handle = "research-prices-2026"
	attrs := map[string]string{"dataset": "research", "source": "file://" + root, "subPath": "prices/2026"}
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")

	// Before it is staged, a call that carries only the handle finds nothing.
	_, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: handle, VolumePath: target})
	wantCode(t, err, codes.NotFound)

	// The kubelet sends a PV's first access mode; ReadWriteOnce here.
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: handle, StagingTargetPath: staging, VolumeCapability: rwo, VolumeContext: attrs}); err != nil {
		t.Fatalf("NodeStageVolume of a static PV: %v", err)
	}
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: handle, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwo, VolumeContext: attrs}); err != nil {
		t.Fatalf("NodePublishVolume of a static PV: %v", err)
	}
	for _, mp := range m.MountPoints {
		if !slices.Contains(mp.Opts, "ro") {
			t.Errorf("mount %s of a static PV of a read-only dataset is not ro: %v", mp.Path, mp.Opts)
		}
	}
	if _, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: handle, VolumePath: target}); err != nil {
		t.Errorf("NodeGetVolumeStats of a staged static PV: %v", err)
	}
	h, err := d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: handle, VolumePublishPath: target})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Errorf("NodeGetVolumeHealth of a static PV = %v, %v; want healthy", h, err)
	}
	// Its handle is not a Cistern volume ID: delete ignores it.
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: handle}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "prices/2026")); err != nil {
		t.Fatalf("DeleteVolume of a static handle touched its data: %v", err)
	}
	if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: handle, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: handle, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if len(m.MountPoints) != 0 || d.cache.(*fakeCache).held() != 0 {
		t.Fatalf("left after unstage: mounts %+v, %d dataset holders", m.MountPoints, d.cache.(*fakeCache).held())
	}
	_, err = d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: handle})
	wantCode(t, err, codes.NotFound) // forgotten at unstage

	// A read-write static PV gets its directory, as CreateVolume would,
	// before the pod's fsGroup is given it.
	rw := map[string]string{"dataset": "scratch", "source": "file://" + root, "access": "read-write", "subPath": "team-b/run-7"}
	s2 := filepath.Join(dir, "s2")
	withGroup := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)
	withGroup.GetMount().VolumeMountGroup = "4321"
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "scratch-run-7", StagingTargetPath: s2, VolumeCapability: withGroup, VolumeContext: rw}); err != nil {
		t.Fatalf("NodeStageVolume of a read-write static PV: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, "team-b/run-7"), &st); err != nil || st.Mode&syscall.S_IFDIR == 0 || st.Gid != 4321 {
		t.Fatalf("the read-write static PV's directory: %v, gid %d; want a directory of group 4321", err, st.Gid)
	}
	if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "scratch-run-7", StagingTargetPath: s2}); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name  string
		id    string
		attrs map[string]string
		code  codes.Code
		words string
	}{
		{"no subPath", handle, map[string]string{"dataset": "research", "source": "file://" + root}, codes.InvalidArgument, "subPath is required"},
		{"a template", handle, map[string]string{"dataset": "research", "source": "file://" + root, "subPath": "${pvc.namespace}"}, codes.InvalidArgument, "literal"},
		{"onDelete", handle, map[string]string{"dataset": "scratch", "source": "file://" + root, "access": "read-write", "subPath": "x", "onDelete": "delete"}, codes.InvalidArgument, "never deletes"},
		{"another cache group", handle, map[string]string{"dataset": "research", "source": "file://" + root, "subPath": "prices", "cacheGroup": "gpu-pool"}, codes.FailedPrecondition, "gpu-pool"},
		{"no attributes", handle, nil, codes.InvalidArgument, "static PV"},
		{"outside the dataset", handle, map[string]string{"dataset": "research", "source": "file://" + root, "subPath": "../etc"}, codes.InvalidArgument, "subPath"},
		{"a broken Cistern ID", "cistern1#research#ro#retain#zz", attrs, codes.NotFound, "not a Cistern volume ID"},
	} {
		_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: c.id, StagingTargetPath: filepath.Join(dir, "bad"), VolumeCapability: rwo, VolumeContext: c.attrs})
		if code := status.Code(err); code != c.code || !strings.Contains(err.Error(), c.words) {
			t.Errorf("%s: NodeStageVolume = %v, want %s naming %q", c.name, err, c.code, c.words)
		}
	}
}
