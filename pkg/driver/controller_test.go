package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func createReq(name, root string, kv ...string) *csi.CreateVolumeRequest {
	params := map[string]string{"dataset": "ds", "source": "file://" + root, "access": "read-write", "onDelete": "delete", MetaPVCNamespace: "team-a", MetaPVCName: name}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "<unset>" {
			delete(params, kv[i])
			continue
		}
		params[kv[i]] = kv[i+1]
	}
	c := rwCap
	if params["access"] == "read-only" {
		c = roCap
	}
	return &csi.CreateVolumeRequest{Name: name, Parameters: params, VolumeCapabilities: []*csi.VolumeCapability{c}}
}

func TestCreateVolume(t *testing.T) {
	ctx := context.Background()
	d, _ := newTestDriver(t)
	root := t.TempDir()

	r1, err := d.CreateVolume(ctx, createReq("claim", root))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := d.CreateVolume(ctx, createReq("claim", root))
	if err != nil || r2.Volume.VolumeId != r1.Volume.VolumeId {
		t.Fatalf("retry = %v, %v; want the same volume", r2, err)
	}
	_, err = d.CreateVolume(ctx, createReq("claim", root, "onDelete", "archive"))
	wantCode(t, err, codes.AlreadyExists)

	id, err := ParseVolumeID(r1.Volume.VolumeId)
	if err != nil || id.SubPath != "team-a/claim" || id.OnDelete != Delete {
		t.Fatalf("volume ID %q decodes to %+v, %v", r1.Volume.VolumeId, id, err)
	}

	// Missing provisioner metadata is named.
	_, err = d.CreateVolume(ctx, createReq("x", root, MetaPVCNamespace, "<unset>"))
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "--extra-create-metadata") {
		t.Errorf("error %q does not say how to fix it", err)
	}

	// Read-only: writer modes refused, the sub-directory must exist, nothing
	// is written into the dataset.
	roRoot := t.TempDir()
	req := createReq("ro", roRoot, "access", "read-only", "onDelete", "retain")
	req.VolumeCapabilities = []*csi.VolumeCapability{rwCap}
	_, err = d.CreateVolume(ctx, req)
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.CreateVolume(ctx, createReq("ro", roRoot, "access", "read-only", "onDelete", "retain"))
	wantCode(t, err, codes.FailedPrecondition)
	if ents, _ := os.ReadDir(roRoot); len(ents) != 0 {
		t.Fatalf("controller wrote into a read-only dataset: %v", ents)
	}
	if err := os.MkdirAll(filepath.Join(roRoot, "team-a/ro"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateVolume(ctx, createReq("ro", roRoot, "access", "read-only", "onDelete", "retain")); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(roRoot); len(ents) != 1 {
		t.Fatalf("controller wrote into a read-only dataset: %v", ents)
	}
}

func TestCreateVolumeTopology(t *testing.T) {
	ctx := context.Background()
	d, _ := newTestDriver(t)
	root := t.TempDir()
	req := createReq("claim", root, "cacheGroup", "research")
	resp, err := d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if top := resp.Volume.AccessibleTopology; len(top) != 1 || top[0].Segments[TopologyCacheGroup] != "research" {
		t.Fatalf("accessible topology = %v", top)
	}
	req = createReq("other", root, "cacheGroup", "research")
	req.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{TopologyNode: "n1", TopologyCacheGroup: "batch"}}}}
	_, err = d.CreateVolume(ctx, req)
	wantCode(t, err, codes.ResourceExhausted)
	if !strings.Contains(err.Error(), `cache group "research"`) || !strings.Contains(err.Error(), "batch") {
		t.Errorf("error %q does not name both groups", err)
	}
}

// TestCreateVolumeAsksForTheGroupsNodes: in a cluster the controller reads
// the group's nodes from their labels (the node plugins' topology does not
// carry the group): a group no node is labelled with is refused, naming the
// label to set; one labelled node is enough; an API failure is retried.
func TestCreateVolumeAsksForTheGroupsNodes(t *testing.T) {
	ctx := context.Background()
	d, _ := newTestDriver(t)
	root := t.TempDir()
	var asked []string
	labelled, fail := false, false
	d.groupNodes = func(_ context.Context, key, value string) (bool, error) {
		asked = append(asked, key+"="+value)
		if fail {
			return false, errors.New("API server unreachable")
		}
		return labelled, nil
	}
	// The selected node's topology, as every node plugin reports it.
	node := &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{TopologyNode: "n1"}}}}
	req := createReq("claim", root, "cacheGroup", "research")
	req.AccessibilityRequirements = node
	_, err := d.CreateVolume(ctx, req)
	wantCode(t, err, codes.ResourceExhausted)
	if !strings.Contains(err.Error(), TopologyCacheGroup+"=research") {
		t.Errorf("error %q does not name the label to set", err)
	}
	if len(asked) != 1 || asked[0] != TopologyCacheGroup+"=research" {
		t.Errorf("asked for nodes labelled %v, want [%s=research]", asked, TopologyCacheGroup)
	}
	fail = true
	_, err = d.CreateVolume(ctx, req)
	wantCode(t, err, codes.Unavailable)
	fail, labelled = false, true
	resp, err := d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if top := resp.Volume.AccessibleTopology; len(top) != 1 || top[0].Segments[TopologyCacheGroup] != "research" {
		t.Fatalf("accessible topology = %v", top)
	}
	// A class without a group asks nothing.
	asked = nil
	if _, err := d.CreateVolume(ctx, createReq("plain", root)); err != nil || len(asked) != 0 {
		t.Errorf("a class without a group: %v, asked %v", err, asked)
	}
}

func TestDeleteVolumeGuards(t *testing.T) {
	ctx := context.Background()
	d, _ := newTestDriver(t)
	root := t.TempDir()
	write := func(rel string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(rel string) bool { _, err := os.Stat(filepath.Join(root, rel)); return err == nil }
	del := func(id string) {
		t.Helper()
		for range 2 { // idempotent
			if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// A volume of the namespace directory, and one inside it.
	a, err := d.CreateVolume(ctx, createReq("a", root, "subPath", "${pvc.namespace}"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.CreateVolume(ctx, createReq("c", root))
	if err != nil {
		t.Fatal(err)
	}
	// Another volume that would delete the same (now existing) directory
	// is refused: it would delete data that is not its own.
	_, err = d.CreateVolume(ctx, createReq("b", root, "subPath", "${pvc.namespace}"))
	wantCode(t, err, codes.FailedPrecondition)
	write("team-a/shared-file")
	write("team-a/c/file")

	del(c.Volume.VolumeId)
	if !exists("team-a/c/file") {
		t.Fatal("deleting c removed a directory inside volume a")
	}
	del(a.Volume.VolumeId)
	if exists("team-a") {
		t.Fatal("the last user of team-a was deleted with onDelete=delete, but team-a remains")
	}

	// A read-only volume inside a deleting volume's tree (its record kept
	// apart) keeps the tree.
	x, err := d.CreateVolume(ctx, createReq("x", root, "subPath", "${pvc.namespace}", MetaPVCNamespace, "team-x"))
	if err != nil {
		t.Fatal(err)
	}
	write("team-x/ro/data")
	if _, err := d.CreateVolume(ctx, createReq("ro", root, "access", "read-only", "onDelete", "retain", MetaPVCNamespace, "team-x")); err != nil {
		t.Fatal(err)
	}
	del(x.Volume.VolumeId)
	if !exists("team-x/ro/data") {
		t.Fatal("deleting x removed the directory of a read-only volume inside it")
	}

	// Archive moves the data under .cistern/archive.
	ar, err := d.CreateVolume(ctx, createReq("ar", root, "onDelete", "archive"))
	if err != nil {
		t.Fatal(err)
	}
	write("team-a/ar/keep")
	del(ar.Volume.VolumeId)
	if exists("team-a/ar") {
		t.Fatal("archived volume still in place")
	}
	matches, _ := filepath.Glob(filepath.Join(root, ReservedDir, "archive/team-a/ar-*/keep"))
	if len(matches) != 1 {
		t.Fatalf("archive holds %v, want one copy of keep", matches)
	}

	// Retain keeps the data.
	rt, err := d.CreateVolume(ctx, createReq("rt", root, "onDelete", "retain"))
	if err != nil {
		t.Fatal(err)
	}
	write("team-a/rt/keep")
	del(rt.Volume.VolumeId)
	if !exists("team-a/rt/keep") {
		t.Fatal("retain deleted data")
	}

	// A volume ID without a record deletes nothing.
	forged := VolumeID{Dataset: "ds", OnDelete: Delete, NameHash: NameHash("never"), Source: api.Source{Scheme: "file", Path: root}, SubPath: "team-a/rt"}
	del(forged.String())
	if !exists("team-a/rt/keep") {
		t.Fatal("a forged volume ID deleted data")
	}
}

// TestSourceRootThroughSymlinkRefused: a dataset whose root is reached
// through a symbolic link is refused by the controller too.
func TestSourceRootThroughSymlinkRefused(t *testing.T) {
	d, _ := newTestDriver(t)
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	_, err := d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-l", VolumeCapabilities: []*csi.VolumeCapability{rwCap},
		Parameters: map[string]string{"dataset": "ds", "source": "file://" + link, "access": "read-write", MetaPVCNamespace: "team-a", MetaPVCName: "c"}})
	if status.Code(err) == codes.OK || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("CreateVolume of a dataset behind a symlink: %v, want a refusal naming the link", err)
	}
	if _, err := os.Stat(filepath.Join(real, "team-a")); err == nil {
		t.Error("the controller wrote through the link")
	}
}

// TestRecreatedVolumeWhileDeleting: a PVC deleted and created again under
// the same name resolves to the same sub-directory; the new CreateVolume
// must not take that directory while the old volume's DeleteVolume is
// removing it (it created the directory outside the records lock, and the
// delete trashed the new volume's directory). It is Aborted until the
// deletion is done, then created afresh.
func TestRecreatedVolumeWhileDeleting(t *testing.T) {
	ctx := context.Background()
	d, _ := newTestDriver(t)
	root := t.TempDir()
	old, err := d.CreateVolume(ctx, createReq("claim", root))
	if err != nil {
		t.Fatal(err)
	}
	id, err := ParseVolumeID(old.Volume.VolumeId)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := d.openDataset(id.Source, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := d.records(id.Source, id.ReadOnly, ds)
	// The first half of the old volume's DeleteVolume: decided and marked.
	if _, remove, err := d.decideDelete(ctx, id, old.Volume.VolumeId, store); err != nil || !remove {
		t.Fatalf("decideDelete = %t, %v; want a removal", remove, err)
	}
	// The recreated PVC (another PV name, the same sub-directory).
	recreated := createReq("claim-2", root)
	recreated.Parameters[MetaPVCName] = "claim"
	_, err = d.CreateVolume(ctx, recreated)
	wantCode(t, err, codes.Aborted)
	// The old volume's delete completes (a retry finishes the marked removal).
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: old.Volume.VolumeId}); err != nil {
		t.Fatal(err)
	}
	nv, err := d.CreateVolume(ctx, recreated)
	if err != nil {
		t.Fatalf("CreateVolume after the deletion: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "team-a/claim")); err != nil {
		t.Fatalf("the recreated volume's directory is missing: %v", err)
	}
	if nv.Volume.VolumeId == old.Volume.VolumeId {
		t.Error("the recreated volume has the old volume's ID")
	}
}
