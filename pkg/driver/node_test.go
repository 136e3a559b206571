package driver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// createTestVolume creates the volume "pvc-1" of namespace team-a through
// the controller's CreateVolume, on a read-write file:// dataset at root
// (kv overrides or adds parameters; access=read-only asks for a reader
// capability), and returns it. It does not stage or publish the volume.
func createTestVolume(t *testing.T, d *Driver, root string, kv ...string) *csi.Volume {
	t.Helper()
	params := map[string]string{"dataset": "ds", "source": "file://" + root, "access": "read-write", MetaPVCNamespace: "team-a", MetaPVCName: "claim"}
	for i := 0; i+1 < len(kv); i += 2 {
		params[kv[i]] = kv[i+1]
	}
	cap := rwCap
	if params["access"] == "read-only" {
		cap = roCap
	}
	resp, err := d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-1", Parameters: params, VolumeCapabilities: []*csi.VolumeCapability{cap}})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	return resp.GetVolume()
}

func TestNodeStagePublishOnFakeMounter(t *testing.T) {
	ctx := context.Background()
	d, m := newTestDriver(t)
	root := t.TempDir()
	vol := createTestVolume(t, d, root)
	if _, err := os.Stat(filepath.Join(root, "team-a/claim")); err != nil {
		t.Fatalf("CreateVolume did not create the sub-directory: %v", err)
	}
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")

	// Publish before stage is refused.
	_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwCap, VolumeContext: vol.VolumeContext})
	wantCode(t, err, codes.FailedPrecondition)

	stage := &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: rwCap, VolumeContext: vol.VolumeContext}
	for range 3 { // idempotent
		if _, err := d.NodeStageVolume(ctx, stage); err != nil {
			t.Fatalf("NodeStageVolume: %v", err)
		}
	}
	if n := mountCount(m); n != 1 {
		t.Fatalf("3 stages made %d mounts, want 1", n)
	}
	mp := m.MountPoints[0]
	if mp.Path != staging || !strings.HasPrefix(mp.Device, "/proc/") || !slices.Contains(mp.Opts, "bind") || slices.Contains(mp.Opts, "ro") {
		t.Fatalf("staging mount = %+v, want a read-write bind of an opened fd on %s", mp, staging)
	}

	pub := &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwCap, VolumeContext: vol.VolumeContext}
	for range 2 {
		if _, err := d.NodePublishVolume(ctx, pub); err != nil {
			t.Fatalf("NodePublishVolume: %v", err)
		}
	}
	if n := mountCount(m); n != 2 {
		t.Fatalf("2 publishes made %d more mounts, want 1", n-1)
	}
	// The same target with the other read-only flag is AlreadyExists.
	roPub := proto.Clone(pub).(*csi.NodePublishVolumeRequest)
	roPub.Readonly = true
	_, err = d.NodePublishVolume(ctx, roPub)
	wantCode(t, err, codes.AlreadyExists)

	// A busy target path is Aborted.
	if !d.pathLocks.TryAcquire(target) {
		t.Fatal("lock taken")
	}
	_, err = d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: target})
	wantCode(t, err, codes.Aborted)
	d.pathLocks.Release(target)

	for range 2 {
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: target}); err != nil {
			t.Fatalf("NodeUnpublishVolume: %v", err)
		}
		if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging}); err != nil {
			t.Fatalf("NodeUnstageVolume: %v", err)
		}
	}
	if len(m.MountPoints) != 0 {
		t.Fatalf("mounts left: %+v", m.MountPoints)
	}
	if n := d.cache.(*fakeCache).held(); n != 0 {
		t.Fatalf("%d dataset mounts still held after unstage", n)
	}
	for _, p := range []string{target, staging} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after cleanup (err %v)", p, err)
		}
	}
}

func TestNodeReadOnlyDataset(t *testing.T) {
	ctx := context.Background()
	d, m := newTestDriver(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "team-a/claim"), 0o755); err != nil {
		t.Fatal(err)
	}
	vol := createTestVolume(t, d, root, "access", "read-only")
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")

	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: roCap, VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: roCap, VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatal(err)
	}
	for _, mp := range m.MountPoints {
		if !slices.Contains(mp.Opts, "ro") {
			t.Errorf("mount %s of a read-only dataset is not ro: %v", mp.Path, mp.Opts)
		}
	}
	// A context that claims read-write does not override the ID: the
	// stage, with a writer mode, is read-only.
	forged := map[string]string{}
	for k, v := range vol.VolumeContext {
		forged[k] = v
	}
	forged["access"] = "read-write"
	s2 := filepath.Join(dir, "s2")
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: s2, VolumeCapability: rwCap, VolumeContext: forged}); err != nil {
		t.Fatal(err)
	}
	for _, mp := range m.MountPoints {
		if mp.Path == s2 && !slices.Contains(mp.Opts, "ro") {
			t.Errorf("a forged read-write context staged a read-only dataset read-write: %v", mp.Opts)
		}
	}
}

func TestInlineVolumes(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d, m := newTestDriver(t, "file://"+root)
	inline := func(ns string, kv ...string) map[string]string {
		a := map[string]string{"dataset": "ds", "source": "file://" + root, MetaEphemeral: "true", MetaPodNamespace: ns}
		for i := 0; i+1 < len(kv); i += 2 {
			a[kv[i]] = kv[i+1]
		}
		return a
	}
	target := filepath.Join(t.TempDir(), "target")
	publish := func(attrs map[string]string, c *csi.VolumeCapability) error {
		_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-abc", TargetPath: target, VolumeCapability: c, VolumeContext: attrs})
		return err
	}
	unpublish := func() {
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-abc", TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}

	// A read-write inline volume gets (and creates) its namespace directory.
	if err := publish(inline("team-a", "access", "read-write", "subPath", "${pod.namespace}/scratch"), rwCap); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "team-a/scratch")); err != nil {
		t.Fatalf("inline read-write volume did not create its directory: %v", err)
	}
	unpublish()

	// Serving options reach the cache daemon.
	if err := publish(inline("team-a", "metacache", "5m", "warmup", "team-a/hot", "accessPattern", "small-files"), roCap); err != nil {
		t.Fatal(err)
	}
	fc := d.cache.(*fakeCache)
	if r := fc.last; r.MetaCache != 5*time.Minute || len(r.Warmup) != 1 || r.Warmup[0] != "team-a/hot" || r.AccessPattern != "small-files" || !r.ReadOnly {
		t.Fatalf("mount request = %+v", r)
	}
	unpublish()

	// A shared dataset is served read-only, whole.
	if err := publish(inline("team-a", "shared", "true"), roCap); err != nil {
		t.Fatal(err)
	}
	if mp := m.MountPoints[0]; !slices.Contains(mp.Opts, "ro") {
		t.Fatalf("shared inline mount is not ro: %+v", mp)
	}
	unpublish()
	if len(m.MountPoints) != 0 {
		t.Fatalf("mounts left: %+v", m.MountPoints)
	}
	if n := d.cache.(*fakeCache).held(); n != 0 {
		t.Fatalf("%d dataset mounts still held after unpublish", n)
	}

	// Refusals.
	wantCode(t, publish(inline(""), roCap), codes.InvalidArgument)
	wantCode(t, publish(inline("team-a", "access", "read-write", "onDelete", "delete"), rwCap), codes.InvalidArgument)
	wantCode(t, publish(inline("team-a", "cacheGroup", "pool-x"), roCap), codes.FailedPrecondition)
	dNone, _ := newTestDriver(t)
	_, err := dNone.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-abc", TargetPath: target, VolumeCapability: roCap, VolumeContext: inline("team-a")})
	wantCode(t, err, codes.PermissionDenied)
}

func TestNodeGetInfoTopology(t *testing.T) {
	d, _ := newTestDriver(t)
	d.opts.CacheGroup = "research-groups"
	resp, err := d.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{TopologyNode: "node-1", TopologyCacheGroup: "research-groups"}
	if got := resp.GetAccessibleTopology().GetSegments(); len(got) != 2 || got[TopologyNode] != want[TopologyNode] || got[TopologyCacheGroup] != want[TopologyCacheGroup] {
		t.Fatalf("topology = %v, want %v", got, want)
	}
}
