package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/cistern-csi/cistern/pkg/mounter"
)

// datasetMount returns a dataset's root that is a mount point of its own,
// as the cache daemon's FUSE mount is (detached when the test ends).
func datasetMount(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := unix.Mount(root, root, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	return root
}

// TestKubeletMayUnstage: the kubelet unstages a volume only when no other
// mount shows what its staging path shows (operation_generator's
// UnmountDevice asks GetDeviceMountRefs, mount-utils' GetMountRefs, and
// gives up while it lists any). Two volumes of a shared dataset (the
// dataset's root, as its own mount shows it) are staged and published with
// real bind mounts; for each the kubelet's own check finds no reference,
// and unstaging leaves nothing mounted. Staged on the kubelet's paths, each
// was referenced by the dataset's mount and the other volume, and the
// kubelet kept them mounted forever (found by make k8s-e2e).
func TestKubeletMayUnstage(t *testing.T) {
	ctx := context.Background()
	d, _, dir := newRealDriver(t)
	root := datasetMount(t)
	kubelet := mount.New("")
	var stagings []string
	for i, claim := range []string{"claim-a", "claim-b"} {
		vol := createTestVolume(t, d, root, "access", "read-only", "shared", "true", MetaPVCName, claim)
		staging := filepath.Join(dir, claim, "globalmount")
		target := filepath.Join(dir, claim, "pod")
		if err := os.MkdirAll(staging, 0o750); err != nil { // as the kubelet makes it
			t.Fatal(err)
		}
		if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: roCap, VolumeContext: vol.VolumeContext}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: roCap, VolumeContext: vol.VolumeContext}); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644); i == 0 && err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(b) != "x" {
			t.Fatalf("%s: the pod reads %q, %v through %s", claim, b, err, target)
		}
		stagings = append(stagings, staging)
		// The kubelet unpublishes at once, and unstages at the end.
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			refs, err := kubelet.GetMountRefs(staging)
			if err != nil || len(refs) != 0 {
				t.Errorf("%s: the kubelet's GetMountRefs(%s) = %v, %v: it would never unstage the volume", claim, staging, refs, err)
				return
			}
			if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging}); err != nil {
				t.Error(err)
			}
		}()
	}
}

// TestVolumeStagedOnTheKubeletsPathMoves: a volume an earlier version
// staged on the kubelet's staging path itself (a whole-dataset volume,
// which the kubelet could never unstage there) is moved under the node
// plugin's directory at its next publish: the pod reads it, the kubelet's
// check then finds no reference, and unstaging leaves nothing mounted.
func TestVolumeStagedOnTheKubeletsPathMoves(t *testing.T) {
	ctx := context.Background()
	d, m, dir := newRealDriver(t)
	root := datasetMount(t)
	if err := os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	vol := createTestVolume(t, d, root, "access", "read-only", "shared", "true")
	staging, target := filepath.Join(dir, "globalmount"), filepath.Join(dir, "pod")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	// As an earlier version staged it: the bind on the staging path.
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: roCap, VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(d.stageDir(staging), staging, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(d.stageDir(staging), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: roCap, VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(b) != "x" {
		t.Fatalf("the pod reads %q, %v", b, err)
	}
	for p, want := range map[string]bool{staging: false, d.stageDir(staging): true} {
		if st, err := mounter.Inspect(m, p); err != nil || st.Mounted != want {
			t.Errorf("%s: mounted %t (%v), want %t", p, st.Mounted, err, want)
		}
	}
	if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if refs, err := mount.New("").GetMountRefs(staging); err != nil || len(refs) != 0 {
		t.Errorf("the kubelet's GetMountRefs(%s) = %v, %v: it would never unstage the volume", staging, refs, err)
	}
	if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}
