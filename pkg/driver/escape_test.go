package driver

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// treeSnapshot records every entry under dir: type, size, link target.
func treeSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := e.Info()
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		if e.Type()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			desc += " -> " + l
		} else if e.Type().IsRegular() {
			desc += " " + strings.Repeat("#", int(info.Size()))
		}
		snap[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func diffTrees(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "removed "+k)
		} else if v != w {
			d = append(d, "changed "+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "added "+k)
		}
	}
	return d
}

// TestEscapes feeds the driver every way out of a dataset we know of and
// checks that each is refused with the right code, that no mount is made,
// and that the file tree (dataset and what surrounds it) is unchanged.
func TestEscapes(t *testing.T) {
	ctx := context.Background()
	top := t.TempDir()
	root := filepath.Join(top, "dataset")
	for _, dir := range []string{"dataset/team-a/claim", "dataset/team-b/secret", "outside", "dataset-evil"} {
		if err := os.MkdirAll(filepath.Join(top, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"outside/passwd", "dataset/team-b/secret/key", "dataset-evil/x"} {
		if err := os.WriteFile(filepath.Join(top, f), []byte("secret"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"dataset/team-a/out":        "../../outside",    // relative, leaves the dataset
		"dataset/team-a/abs":        "/etc",             // absolute
		"dataset/team-a/to-b":       "../team-b",        // stays inside, but crosses namespaces
		"dataset/team-a/claim/deep": "../../../outside", // deeper
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(top, l)); err != nil {
			t.Fatal(err)
		}
	}
	d, m := newTestDriver(t, "read-write:file://"+root)
	before := treeSnapshot(t, top)

	src := "file://" + root
	long := strings.Repeat("n", 4096)
	forgedID := func(sub string) string {
		return VolumeID{Dataset: "ds", OnDelete: Delete, NameHash: NameHash("x"), Source: api.Source{Scheme: "file", Path: root}, SubPath: sub}.String()
	}
	staging := filepath.Join(t.TempDir(), "staging")
	target := filepath.Join(t.TempDir(), "target")
	ctxFor := map[string]string{"dataset": "ds", "source": src, "access": "read-write", "onDelete": "delete"}
	stage := func(id string) error {
		_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwCap, VolumeContext: ctxFor})
		return err
	}
	inline := func(ns string, kv ...string) error {
		a := map[string]string{"dataset": "ds", "source": src, "access": "read-write", MetaEphemeral: "true", MetaPodNamespace: ns}
		for i := 0; i+1 < len(kv); i += 2 {
			a[kv[i]] = kv[i+1]
		}
		_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-x", TargetPath: target, VolumeCapability: rwCap, VolumeContext: a})
		return err
	}
	create := func(kv ...string) error {
		_, err := d.CreateVolume(ctx, createReq("v", root, kv...))
		return err
	}

	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"template with ..", func() error { return create("subPath", "${pvc.namespace}/../team-b") }, codes.InvalidArgument},
		{"absolute template", func() error { return create("subPath", "/etc") }, codes.InvalidArgument},
		{"template into another namespace", func() error { return create("subPath", "team-b/${pvc.name}") }, codes.InvalidArgument},
		{"namespace value ..", func() error { return create(MetaPVCNamespace, "..") }, codes.InvalidArgument},
		{"name with a slash", func() error { return create(MetaPVCName, "../team-b") }, codes.InvalidArgument},
		{"name with NUL", func() error { return create(MetaPVCName, "a\x00b") }, codes.InvalidArgument},
		{"4 KiB name", func() error { return create(MetaPVCName, long) }, codes.InvalidArgument},
		{"symlink out of the dataset", func() error { return create(MetaPVCName, "out", "subPath", "${pvc.namespace}/${pvc.name}/new") }, codes.InvalidArgument},
		{"absolute symlink", func() error { return create(MetaPVCName, "abs", "subPath", "${pvc.namespace}/${pvc.name}/new") }, codes.InvalidArgument},
		{"symlink into another namespace", func() error { return create(MetaPVCName, "to-b", "subPath", "${pvc.namespace}/${pvc.name}/new") }, codes.InvalidArgument},
		{"symlink as the volume itself", func() error { return create(MetaPVCName, "out") }, codes.InvalidArgument},
		{"reserved directory", func() error {
			return create("shared", "true", "access", "read-only", "onDelete", "retain", "subPath", ".cistern")
		}, codes.InvalidArgument},

		{"forged ID with ..", func() error {
			return stage(strings.Replace(forgedID("team-a/claim"), "team-a%2Fclaim", "team-a%2F..%2F..%2Foutside", 1))
		}, codes.NotFound},
		{"forged ID, symlink out", func() error { return stage(forgedID("team-a/out")) }, codes.InvalidArgument},
		{"forged ID, absolute symlink", func() error { return stage(forgedID("team-a/abs")) }, codes.InvalidArgument},
		{"forged ID, deep symlink", func() error { return stage(forgedID("team-a/claim/deep")) }, codes.InvalidArgument},
		{"forged ID, symlink across namespaces", func() error { return stage(forgedID("team-a/to-b/secret")) }, codes.InvalidArgument},
		{"forged ID, other source in context", func() error {
			_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: forgedID("team-a/claim"), StagingTargetPath: staging, VolumeCapability: rwCap,
				VolumeContext: map[string]string{"dataset": "ds", "source": "file://" + top + "/outside", "access": "read-write"}})
			return err
		}, codes.InvalidArgument},

		{"inline claiming another namespace", func() error { return inline("team-a", "subPath", "team-b") }, codes.InvalidArgument},
		{"inline with .. after its namespace", func() error { return inline("team-a", "subPath", "${pod.namespace}/../team-b") }, codes.InvalidArgument},
		{"inline namespace ..", func() error { return inline("..") }, codes.InvalidArgument},
		{"inline through a symlink", func() error { return inline("team-a", "subPath", "${pod.namespace}/to-b/secret") }, codes.InvalidArgument},
		{"inline source outside the allowed prefix", func() error { return inline("team-a", "source", "file://"+top+"/dataset-evil") }, codes.PermissionDenied},
		{"inline source with ..", func() error { return inline("team-a", "source", "file://"+root+"/../outside") }, codes.InvalidArgument},
		{"inline source /etc", func() error { return inline("team-a", "source", "file:///etc", "access", "read-only") }, codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.call(), tc.want)
			if n := mountCount(m); n != 0 {
				t.Fatalf("a refused request made %d mounts: %+v", n, m.MountPoints)
			}
			if diff := diffTrees(before, treeSnapshot(t, top)); len(diff) > 0 {
				t.Fatalf("a refused request changed the tree: %v", diff)
			}
		})
	}
}

// TestDeleteAfterSymlinkSwap: a volume's directory is replaced by a symlink
// to somewhere else after it was created. Deleting the volume removes the
// link, never what it points to.
func TestDeleteAfterSymlinkSwap(t *testing.T) {
	ctx := context.Background()
	top := t.TempDir()
	root := filepath.Join(top, "dataset")
	outside := filepath.Join(top, "outside")
	for _, dir := range []string{root, outside} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "precious"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, _ := newTestDriver(t)
	resp, err := d.CreateVolume(ctx, createReq("claim", root))
	if err != nil {
		t.Fatal(err)
	}
	vdir := filepath.Join(root, "team-a/claim")
	if err := os.Remove(vdir); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../outside", vdir); err != nil {
		t.Fatal(err)
	}
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.Volume.VolumeId}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(outside, "precious")); err != nil {
		t.Fatalf("delete followed a swapped-in symlink: %v", err)
	}
	if _, err := os.Lstat(vdir); !os.IsNotExist(err) {
		t.Fatalf("the swapped-in link is still there: %v", err)
	}
}
