package driver

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// insideRoot checks the invariant every accepted sub-path must hold.
func insideRoot(t *testing.T, sub string) {
	t.Helper()
	if sub == "" {
		return
	}
	const root = "/datasets/d"
	j := filepath.Join(root, sub)
	if !strings.HasPrefix(j, root+"/") || filepath.Clean(sub) != sub || strings.ContainsRune(sub, 0) ||
		strings.HasPrefix(j, root+"/"+ReservedDir+"/") || j == root+"/"+ReservedDir {
		t.Fatalf("accepted sub-path %q resolves to %q, outside the dataset or into %s", sub, j, ReservedDir)
	}
}

func FuzzParseParams(f *testing.F) {
	f.Add("imagenet", "file:///datasets/imagenet", "read-only", "", "false", "delete", false)
	f.Add("feat", "file:///data/x", "read-write", "${pvc.namespace}/${pv.name}", "false", "archive", false)
	f.Add("pub", "file:///p", "", "market/2026", "true", "", false)
	f.Add("in", "file:///d", "read-write", "${pod.namespace}/../x", "false", "", true)
	f.Add("x", "s3://b/p", "", "${pvc.namespace}/${", "1", "retain", false)
	f.Fuzz(func(t *testing.T, dataset, source, access, subPath, shared, onDelete string, inline bool) {
		m := map[string]string{"dataset": dataset, "source": source, "access": access, "shared": shared, "onDelete": onDelete}
		if subPath != "" {
			m["subPath"] = subPath
		}
		p, err := ParseParams(m, inline)
		if err != nil {
			return
		}
		again, err := ParseParams(p.Context(), inline)
		if err != nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("Context() does not round-trip: %+v -> %+v, %v", p, again, err)
		}
		if p.Shared && p.Access != ReadOnly {
			t.Fatalf("shared dataset accepted as %s", p.Access)
		}
		if p.ReadOnly() && p.OnDelete != Retain {
			t.Fatalf("read-only dataset accepted onDelete=%s", p.OnDelete)
		}
		if filepath.Clean(p.Source.Path) != p.Source.Path || !filepath.IsAbs(p.Source.Path) {
			t.Fatalf("unclean source path %q accepted", p.Source.Path)
		}
	})
}

func FuzzResolveSubPath(f *testing.F) {
	f.Add("${pvc.namespace}/${pvc.name}", "team-a", "claim", "pvc-1")
	f.Add("${pvc.namespace}/../${pvc.name}", "team-a", "claim", "pvc-1")
	f.Add("${pvc.namespace}", "..", "", "")
	f.Add("a/${pv.name}/b", "ns", "c", "/etc")
	f.Add(".cistern/${pvc.name}", "ns", "volumes", "x")
	f.Fuzz(func(t *testing.T, tmpl, ns, name, pv string) {
		vars := map[string]string{VarPVCNamespace: ns, VarPVCName: name, VarPVName: pv}
		sub, err := ResolveSubPath(tmpl, vars)
		if err != nil {
			return
		}
		insideRoot(t, sub)
		// A template accepted for a non-shared dataset keeps the namespace
		// as the first segment.
		if checkTemplate(tmpl, false, false) == nil && sub != "" {
			if first, _, _ := strings.Cut(sub, "/"); first != ns {
				t.Fatalf("template %q resolved to %q outside namespace %q", tmpl, sub, ns)
			}
		}
	})
}

func FuzzParseVolumeID(f *testing.F) {
	f.Add(VolumeID{Dataset: "d", OnDelete: Delete, NameHash: NameHash("n"), Source: api.Source{Scheme: "file", Path: "/data"}, SubPath: "ns/v"}.String())
	f.Add(VolumeID{Dataset: "d", ReadOnly: true, OnDelete: Retain, NameHash: NameHash("n"), Source: api.Source{Scheme: "file", Path: "/d#x"}, SubPath: ""}.String())
	f.Add("cistern1#d#rw#delete#0123456789abcdef#file:%2F%2F%2Fdata#ns%2F..%2F..%2Fetc")
	f.Add("fake-vol-id")
	f.Fuzz(func(t *testing.T, id string) {
		v, err := ParseVolumeID(id)
		if err != nil {
			return
		}
		if v.String() != id {
			t.Fatalf("accepted non-canonical ID %q (canonical %q)", id, v.String())
		}
		insideRoot(t, v.SubPath)
		if v.ReadOnly && v.OnDelete != Retain {
			t.Fatalf("read-only volume with onDelete=%s accepted", v.OnDelete)
		}
	})
}
