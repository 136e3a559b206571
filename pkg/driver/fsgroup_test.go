package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cistern-csi/cistern/pkg/mounter"
)

// TestFsGroupOfALaterPod: the kubelet stages a volume once per node, for
// its first pod; a second pod with an fsGroup is seen only at publish.
// Its group must still get the volume (seen in a cluster: a non-root pod
// with fsGroup 2000 could not write to a claim another pod had staged).
// Real bind mounts.
func TestFsGroupOfALaterPod(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for bind mounts")
	}
	ctx := context.Background()
	d, err := New(Options{
		Endpoint: "unix:///unused.sock", Mode: ModeAll, NodeID: "node-1",
		StateDir: filepath.Join(t.TempDir(), "state"), CacheSocket: "/unused/cache.sock", UnmountTimeout: time.Second,
	}, mounter.New(), &fakeCache{holders: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	vol := createTestVolume(t, d, root)
	dir := t.TempDir()
	staging, first, second := filepath.Join(dir, "staging"), filepath.Join(dir, "pod-1"), filepath.Join(dir, "pod-2")
	t.Cleanup(func() {
		for _, p := range []string{first, second, staging} {
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
		}
		if b, _ := os.ReadFile("/proc/mounts"); strings.Contains(string(b), dir) {
			t.Errorf("mounts left under %s", dir)
		}
	})
	rwo := mountCap(kubeletModes["ReadWriteOnce"])
	stageCtx, publishCtx := kubeletContexts(vol.VolumeContext)
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: rwo, VolumeContext: stageCtx}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: first, VolumeCapability: rwo, VolumeContext: publishCtx}); err != nil {
		t.Fatal(err)
	}
	withGroup := mountCap(kubeletModes["ReadWriteOnce"])
	withGroup.GetMount().VolumeMountGroup = "2000"
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: second, VolumeCapability: withGroup, VolumeContext: publishCtx}); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, "team-a/claim"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Gid != 2000 || st.Mode&0o2070 != 0o2070 {
		t.Errorf("after a pod with fsGroup 2000 was published, the volume directory has group %d mode %o; want group 2000 with g+rwx and setgid", st.Gid, st.Mode&0o7777)
	}
	if err := syscall.Stat(filepath.Join(root, "team-a"), &st); err != nil || st.Gid == 2000 {
		t.Errorf("the namespace directory above the volume changed group: %d, %v", st.Gid, err)
	}
	for _, p := range []string{first, second} {
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: p}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}
