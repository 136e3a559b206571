package driver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
	if mp.Path != d.stageDir(staging) || !strings.HasPrefix(mp.Device, "/proc/") || !slices.Contains(mp.Opts, "bind") || slices.Contains(mp.Opts, "ro") {
		t.Fatalf("staging mount = %+v, want a read-write bind of an opened fd on %s (the staged volume of %s)", mp, d.stageDir(staging), staging)
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
	top := t.TempDir()
	scratch, public := filepath.Join(top, "scratch"), filepath.Join(top, "public")
	for _, dir := range []string{scratch, filepath.Join(public, "team-a")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d, m := newTestDriver(t, "read-write:file://"+scratch, "shared:file://"+public)
	inline := func(root, ns string, kv ...string) map[string]string {
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
	if err := publish(inline(scratch, "team-a", "access", "read-write", "subPath", "${pod.namespace}/scratch"), rwCap); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(scratch, "team-a/scratch")); err != nil {
		t.Fatalf("inline read-write volume did not create its directory: %v", err)
	}
	unpublish()

	// A shared dataset is served read-only, whole; its policy may be
	// narrowed to the pod's own namespace, read-only.
	for _, attrs := range []map[string]string{inline(public, "team-a", "shared", "true"), inline(public, "team-a")} {
		if err := publish(attrs, roCap); err != nil {
			t.Fatal(err)
		}
		if mp := m.MountPoints[0]; !slices.Contains(mp.Opts, "ro") {
			t.Fatalf("shared inline mount is not ro: %+v", mp)
		}
		unpublish()
	}
	if len(m.MountPoints) != 0 {
		t.Fatalf("mounts left: %+v", m.MountPoints)
	}
	if n := d.cache.(*fakeCache).held(); n != 0 {
		t.Fatalf("%d dataset mounts still held after unpublish", n)
	}

	// Refusals: attributes never widen the node's policy, and what makes
	// mounts or work is the administrator's.
	for _, tc := range []struct {
		name  string
		attrs map[string]string
		want  codes.Code
	}{
		{"no namespace", inline(scratch, ""), codes.InvalidArgument},
		{"onDelete", inline(scratch, "team-a", "access", "read-write", "onDelete", "delete"), codes.InvalidArgument},
		{"other cache group", inline(public, "team-a", "cacheGroup", "pool-x"), codes.FailedPrecondition},
		{"writing a shared source", inline(public, "team-a", "access", "read-write"), codes.PermissionDenied},
		{"sharing a per-namespace source", inline(scratch, "team-a", "shared", "true"), codes.PermissionDenied},
		{"metacache", inline(scratch, "team-a", "metacache", "5m"), codes.InvalidArgument},
		{"warmup", inline(public, "team-a", "shared", "true", "warmup", "/"), codes.InvalidArgument},
		{"accessPattern", inline(public, "team-a", "shared", "true", "accessPattern", "small-files"), codes.InvalidArgument},
		{"not allowed", inline(top, "team-a"), codes.PermissionDenied},
	} {
		if err := publish(tc.attrs, roCap); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	if n := mountCount(m); n != 3 {
		t.Errorf("%d mounts made, want 3 (the refused requests made none)", n)
	}
	// A bare prefix is read-only, per namespace.
	dRO, _ := newTestDriver(t, "file://"+scratch)
	_, err := dRO.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-abc", TargetPath: target, VolumeCapability: rwCap, VolumeContext: inline(scratch, "team-a", "access", "read-write")})
	wantCode(t, err, codes.PermissionDenied)
	dNone, _ := newTestDriver(t)
	_, err = dNone.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-abc", TargetPath: target, VolumeCapability: roCap, VolumeContext: inline(public, "team-a")})
	wantCode(t, err, codes.PermissionDenied)
}

// TestNodeGetInfoTopology: a node plugin of a cache group reports the same
// topology keys as any other (the node alone): csi-provisioner keeps the
// keys it first read for a claim, and a node moved between pools while a
// claim was provisioned left it pending for good.
func TestNodeGetInfoTopology(t *testing.T) {
	d, _ := newTestDriver(t)
	d.opts.CacheGroup = "research-groups"
	resp, err := d.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetAccessibleTopology().GetSegments(); len(got) != 1 || got[TopologyNode] != "node-1" {
		t.Fatalf("topology = %v, want only %s=node-1", got, TopologyNode)
	}
}

// A volume of a dataset read through a cache group asks the daemon for the
// group with the mount (the daemon joins the dataset to its group).
func TestNodeStageNamesTheCacheGroup(t *testing.T) {
	d, _ := newTestDriver(t)
	d.opts.CacheGroup = "research-groups"
	vol := createTestVolume(t, d, t.TempDir(), "cacheGroup", "research-groups")
	staging := filepath.Join(t.TempDir(), "staging")
	if _, err := d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: rwCap, VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	t.Cleanup(func() {
		d.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging})
	})
	fc := d.cache.(*fakeCache)
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.last.CacheGroup != "research-groups" {
		t.Fatalf("the mount request names cache group %q, want research-groups", fc.last.CacheGroup)
	}
}
