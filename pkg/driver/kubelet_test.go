package driver

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// What the kubelet sends (pkg/volume/csi): for a PV, the CSI form of the
// PV's first access mode; for an inline volume, ReadWriteOnce; readonly
// from the pod's volume source. A driver that advertises
// SINGLE_NODE_MULTI_WRITER (Cistern does) gets ReadWriteOnce as
// SINGLE_NODE_MULTI_WRITER and ReadWriteOncePod as SINGLE_NODE_SINGLE_WRITER
// (asSingleNodeMultiWriterCapableCSIAccessModeV1).
var kubeletModes = map[string]csi.VolumeCapability_AccessMode_Mode{
	"ReadWriteOnce":    csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
	"ReadOnlyMany":     csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
	"ReadWriteMany":    csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER,
	"ReadWriteOncePod": csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
}

// TestNodeAdvertisesSingleNodeMultiWriter: the capability that makes the
// kubelet send the modes above.
func TestNodeAdvertisesSingleNodeMultiWriter(t *testing.T) {
	d, _ := newTestDriver(t)
	resp, err := d.NodeGetCapabilities(context.Background(), &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(resp.GetCapabilities(), func(c *csi.NodeServiceCapability) bool {
		return c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER
	}) {
		t.Fatal("NodeGetCapabilities does not advertise SINGLE_NODE_MULTI_WRITER")
	}
}

// kubeletContexts returns the volume contexts the kubelet sends for a PV
// that external-provisioner made from a CreateVolume response: the PV's
// volumeAttributes are the response's context plus the provisioner's
// identity; NodePublish adds the pod's (the CSIDriver has podInfoOnMount).
func kubeletContexts(created map[string]string) (stage, publish map[string]string) {
	stage = maps.Clone(created)
	stage["storage.kubernetes.io/csiProvisionerIdentity"] = "1764662400000-8081-cistern.csi.dev"
	publish = maps.Clone(stage)
	for k, v := range map[string]string{
		"csi.storage.k8s.io/pod.name": "trainer-0", "csi.storage.k8s.io/pod.namespace": "team-a",
		"csi.storage.k8s.io/pod.uid": "5a1481f3-1e17-4fec-a962-d50f30fdc8dd", "csi.storage.k8s.io/serviceAccount.name": "default",
		"csi.storage.k8s.io/ephemeral": "false",
	} {
		publish[k] = v
	}
	return stage, publish
}

// TestKubeletRequests drives stage and publish as the kubelet does for
// every (lifecycle, access mode, readonly flag, dataset access): each is
// served, and every mount is read-only exactly when the dataset is
// read-only, the pod asked for readOnly, or the mode only reads.
func TestKubeletRequests(t *testing.T) {
	ctx := context.Background()
	for _, access := range []string{"read-only", "read-write"} {
		for _, k8sMode := range []string{"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"} {
			for _, readonly := range []bool{false, true} {
				name := fmt.Sprintf("persistent/%s/%s/readonly=%t", access, k8sMode, readonly)
				t.Run(name, func(t *testing.T) {
					root := t.TempDir()
					if err := os.MkdirAll(filepath.Join(root, "team-a/claim"), 0o755); err != nil {
						t.Fatal(err)
					}
					d, m := newTestDriver(t)
					vol := createTestVolume(t, d, root, "access", access)
					c := mountCap(kubeletModes[k8sMode])
					dir := t.TempDir()
					staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
					stageCtx, publishCtx := kubeletContexts(vol.VolumeContext)
					if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: c, VolumeContext: stageCtx}); err != nil {
						t.Fatalf("NodeStageVolume: %v", err)
					}
					if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c, Readonly: readonly, VolumeContext: publishCtx}); err != nil {
						t.Fatalf("NodePublishVolume: %v", err)
					}
					datasetRO := access == "read-only"
					wantRO := map[string]bool{
						d.stageDir(staging): datasetRO || k8sMode == "ReadOnlyMany",
						target:              datasetRO || k8sMode == "ReadOnlyMany" || readonly,
					}
					for _, mp := range m.MountPoints {
						if got := slices.Contains(mp.Opts, "ro"); got != wantRO[mp.Path] {
							t.Errorf("mount %s: ro=%t, want %t (opts %v)", mp.Path, got, wantRO[mp.Path], mp.Opts)
						}
					}
				})
			}
		}
	}
	// Inline volumes: always ReadWriteOnce, readonly from the pod spec.
	policy := map[string]string{"read-only": "read-only:", "true": "shared:", "read-write": "read-write:"}
	for _, kv := range [][]string{{"access", "read-only"}, {"shared", "true"}, {"access", "read-write"}} {
		for _, readonly := range []bool{false, true} {
			t.Run(fmt.Sprintf("ephemeral/%s=%s/readonly=%t", kv[0], kv[1], readonly), func(t *testing.T) {
				root := t.TempDir()
				if err := os.MkdirAll(filepath.Join(root, "team-a"), 0o755); err != nil {
					t.Fatal(err)
				}
				d, m := newTestDriver(t, policy[kv[1]]+"file://"+root)
				attrs := map[string]string{"dataset": "ds", "source": "file://" + root, MetaEphemeral: "true", MetaPodNamespace: "team-a", kv[0]: kv[1]}
				target := filepath.Join(t.TempDir(), "target")
				if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-0123", TargetPath: target, VolumeCapability: mountCap(kubeletModes["ReadWriteOnce"]), Readonly: readonly, VolumeContext: attrs}); err != nil {
					t.Fatalf("NodePublishVolume: %v", err)
				}
				want := readonly || kv[1] != "read-write"
				if len(m.MountPoints) != 1 || slices.Contains(m.MountPoints[0].Opts, "ro") != want {
					t.Errorf("mounts %+v, want one with ro=%t", m.MountPoints, want)
				}
			})
		}
	}
}

// TestSingleWriterPublishedOnce: a ReadWriteOncePod volume is published
// at one target path at a time (what csi-sanity checks of a driver with
// SINGLE_NODE_MULTI_WRITER); the same target again is idempotent.
func TestSingleWriterPublishedOnce(t *testing.T) {
	ctx := context.Background()
	d, _ := newTestDriver(t)
	vol := createTestVolume(t, d, t.TempDir())
	c := mountCap(kubeletModes["ReadWriteOncePod"])
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: c, VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatal(err)
	}
	publish := func(target string) error {
		_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c, VolumeContext: vol.VolumeContext})
		return err
	}
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for range 2 {
		if err := publish(a); err != nil {
			t.Fatal(err)
		}
	}
	wantCode(t, publish(b), codes.FailedPrecondition)
	if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: a}); err != nil {
		t.Fatal(err)
	}
	if err := publish(b); err != nil {
		t.Fatalf("publish elsewhere after the first target was unpublished: %v", err)
	}
}

// TestVolumeMountGroup: with VOLUME_MOUNT_GROUP the kubelet hands the
// pod's fsGroup to the driver instead of changing the owner of every file
// itself; a read-write POSIX volume's directory then belongs to that group
// (rwx, setgid) and nothing else in the dataset changes. A read-only
// volume is left alone; a group that is not a number is refused.
func TestVolumeMountGroup(t *testing.T) {
	ctx := context.Background()
	d, _ := newTestDriver(t)
	resp, err := d.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil || !slices.ContainsFunc(resp.GetCapabilities(), func(c *csi.NodeServiceCapability) bool {
		return c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP
	}) {
		t.Fatalf("VOLUME_MOUNT_GROUP not advertised (%v)", err)
	}
	root := t.TempDir()
	vol := createTestVolume(t, d, root)
	withGroup := func(g string) *csi.VolumeCapability {
		c := mountCap(kubeletModes["ReadWriteOnce"])
		c.GetMount().VolumeMountGroup = g
		return c
	}
	dir := t.TempDir()
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: filepath.Join(dir, "s"), VolumeCapability: withGroup("4321"), VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, "team-a/claim"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Gid != 4321 || st.Mode&0o2070 != 0o2070 {
		t.Errorf("volume directory has group %d mode %o, want group 4321 with g+rwx and setgid", st.Gid, st.Mode&0o7777)
	}
	if err := syscall.Stat(filepath.Join(root, "team-a"), &st); err != nil || st.Gid == 4321 {
		t.Errorf("the namespace directory above the volume changed group: %d, %v", st.Gid, err)
	}
	_, err = d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: filepath.Join(dir, "s2"), VolumeCapability: withGroup("wheel"), VolumeContext: vol.VolumeContext})
	wantCode(t, err, codes.InvalidArgument)
}

// TestExistingMountOfAnotherVolume: a stage or publish that finds a mount
// at its path accepts it only if it shows this volume (a retry); a mount of
// another volume is AlreadyExists. Any mount at the path was taken for
// this volume.
func TestExistingMountOfAnotherVolume(t *testing.T) {
	ctx := context.Background()
	d, _ := newTestDriver(t)
	root := t.TempDir()
	a := createTestVolume(t, d, root)
	resp, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-2", VolumeCapabilities: []*csi.VolumeCapability{rwCap},
		Parameters: map[string]string{"dataset": "ds", "source": "file://" + root, "access": "read-write", MetaPVCNamespace: "team-a", MetaPVCName: "other"}})
	if err != nil {
		t.Fatal(err)
	}
	b := resp.GetVolume()
	dir := t.TempDir()
	sa, sb, target := filepath.Join(dir, "sa"), filepath.Join(dir, "sb"), filepath.Join(dir, "target")
	stage := func(v *csi.Volume, at string) error {
		_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: at, VolumeCapability: rwCap, VolumeContext: v.VolumeContext})
		return err
	}
	publish := func(v *csi.Volume, staging string) error {
		_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwCap, VolumeContext: v.VolumeContext})
		return err
	}
	for _, err := range []error{stage(a, sa), stage(a, sa), stage(b, sb), publish(a, sa), publish(a, sa)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantCode(t, stage(b, sa), codes.AlreadyExists)
	wantCode(t, publish(b, sb), codes.AlreadyExists)
}
