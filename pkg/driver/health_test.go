package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// TestVolumeHealthReal stages and publishes with real bind mounts, then
// breaks the volume the ways a node sees it break.
func TestVolumeHealthReal(t *testing.T) {
	ctx := context.Background()
	d, _, dir := newRealDriver(t)
	root := t.TempDir()
	vol := createTestVolume(t, d, root)
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: rwCap, VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwCap, VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatal(err)
	}
	health := func() []*csi.VolumeHealth_VolumeHealthEntry {
		t.Helper()
		r, err := d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumePublishPath: target})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetVolumeHealth().GetHealthStatuses()
	}
	if h := health(); len(h) != 0 {
		t.Fatalf("healthy volume reported %v", h)
	}
	stats, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.VolumeId, VolumePath: target})
	if err != nil || len(stats.GetUsage()) != 2 || stats.GetUsage()[0].GetTotal() <= 0 {
		t.Fatalf("NodeGetVolumeStats = %v, %v", stats, err)
	}
	// Another directory at the path: not this volume.
	other := t.TempDir()
	_, err = d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol.VolumeId, VolumePath: other})
	wantCode(t, err, codes.NotFound)

	// The source directory is removed and recreated under the mounts: they
	// now show a deleted directory.
	src := filepath.Join(root, "team-a/claim")
	if err := os.Remove(src); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	h := health()
	if len(h) != 2 || h[0].Reason != reasonStaleMount || h[0].Status != csi.VolumeHealthErrorType_INACCESSIBLE {
		t.Fatalf("stale mounts reported %v, want two StaleMount", h)
	}
	// Gone altogether.
	if err := os.Remove(src); err != nil {
		t.Fatal(err)
	}
	if h := health(); len(h) != 3 || h[0].Reason != reasonSourceMissing {
		t.Fatalf("missing source reported %v, want SourceMissing first", h)
	}
	// NodeStage again would re-bind the current directory; unpublish and
	// unstage clean up whatever state the volume is in.
	if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}
