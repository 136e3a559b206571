package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/kube"
)

// fakeAPI is an API server in memory for the controller's logic: the
// ConfigMaps of one namespace (label selectors of one key=value) and a list
// of PersistentVolumes. The real one is exercised by make k8s-e2e.
type fakeAPI struct {
	mu      sync.Mutex
	cms     map[string]kube.ConfigMap
	pvs     []map[string]any
	failPVs bool // the PV list answers 500
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fail := func(code int, msg string) {
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"kind":"Status","message":%q}`, msg)
	}
	if r.Header.Get("Authorization") != "Bearer test-token" {
		fail(401, "Unauthorized")
		return
	}
	if r.URL.Path == "/api/v1/persistentvolumes" {
		if f.failPVs {
			fail(500, "etcdserver: request timed out")
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"metadata": map[string]any{}, "items": f.pvs})
		return
	}
	const base = "/api/v1/namespaces/cistern/configmaps"
	if !strings.HasPrefix(r.URL.Path, base) {
		fail(404, "no such path "+r.URL.Path)
		return
	}
	name := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, base), "/")
	switch r.Method {
	case http.MethodGet:
		if name != "" {
			cm, ok := f.cms[name]
			if !ok {
				fail(404, "configmaps "+name+" not found")
				return
			}
			json.NewEncoder(w).Encode(cm)
			return
		}
		k, v, _ := strings.Cut(r.URL.Query().Get("labelSelector"), "=")
		var items []kube.ConfigMap
		for _, cm := range f.cms {
			if cm.Metadata.Labels[k] == v {
				items = append(items, cm)
			}
		}
		json.NewEncoder(w).Encode(map[string]any{"metadata": map[string]any{}, "items": items})
	case http.MethodPut, http.MethodPost:
		var cm kube.ConfigMap
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &cm); err != nil {
			fail(400, err.Error())
			return
		}
		_, exists := f.cms[cm.Metadata.Name]
		if r.Method == http.MethodPut && !exists {
			fail(404, "not found")
			return
		}
		if r.Method == http.MethodPost && exists {
			fail(409, "already exists")
			return
		}
		f.cms[cm.Metadata.Name] = cm
		w.Write(b)
	case http.MethodDelete:
		if _, ok := f.cms[name]; !ok {
			fail(404, "not found")
			return
		}
		delete(f.cms, name)
		fmt.Fprint(w, "{}")
	}
}

// setPVs replaces the PV list: each entry is name, handle and attributes.
func (f *fakeAPI) setPVs(pvs ...kube.CSIVolume) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pvs = nil
	for _, pv := range pvs {
		f.pvs = append(f.pvs, map[string]any{
			"metadata": map[string]any{"name": pv.Name},
			"spec":     map[string]any{"csi": map[string]any{"driver": Name, "volumeHandle": pv.Handle, "volumeAttributes": pv.Attributes}},
		})
	}
}

// newClusterDriver returns a test driver whose controller keeps its
// records in api (as with --records-namespace=cistern).
func newClusterDriver(t *testing.T, api *fakeAPI) *Driver {
	t.Helper()
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	d, _ := newTestDriver(t)
	d.opts.RecordsNamespace = "cistern"
	d.kube = kube.New(srv.URL, srv.Client(), func() (string, error) { return "test-token", nil })
	return d
}

// TestReadOnlyRecordsOutliveTheControllerPod: the records of a read-only
// dataset are ConfigMaps, so a controller that starts elsewhere (a new
// state directory) still knows the volume's size and name, and the delete
// guard still sees the volume.
func TestReadOnlyRecordsOutliveTheControllerPod(t *testing.T) {
	ctx := context.Background()
	fake := &fakeAPI{cms: map[string]kube.ConfigMap{}}
	first := newClusterDriver(t, fake)
	root := t.TempDir()
	outer, err := first.CreateVolume(ctx, createReq("outer", root, "subPath", "${pvc.namespace}"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "team-a/ro/data"), 0o755); err != nil {
		t.Fatal(err)
	}
	ro := createReq("ro", root, "access", "read-only", "onDelete", "retain")
	ro.CapacityRange = &csi.CapacityRange{RequiredBytes: 1 << 30}
	roVol, err := first.CreateVolume(ctx, ro)
	if err != nil {
		t.Fatal(err)
	}
	if len(fake.cms) != 1 {
		t.Fatalf("%d ConfigMaps after one read-only volume, want 1", len(fake.cms))
	}
	for name, cm := range fake.cms {
		if len(name) > 63 || cm.Data[sourceKey] != "file://"+root || cm.Metadata.Labels[labelSource] == "" {
			t.Errorf("ConfigMap %s: %+v", name, cm)
		}
	}

	// The controller's pod moves: a new state directory, the same API.
	second := newClusterDriver(t, fake)
	resp, err := second.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: roVol.Volume.VolumeId,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 30}, VolumeCapability: roCap})
	if err != nil || resp.GetCapacityBytes() != 2<<30 {
		t.Fatalf("expanding the read-only volume after the move: %v, %v", resp, err)
	}
	ro.CapacityRange.RequiredBytes = 3 << 30
	_, err = second.CreateVolume(ctx, ro)
	wantCode(t, err, codes.AlreadyExists)

	if _, err := second.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: outer.Volume.VolumeId}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "team-a/ro/data")); err != nil {
		t.Fatalf("deleting the outer volume after the move removed the read-only volume's data: %v", err)
	}
	if _, err := second.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: roVol.Volume.VolumeId}); err != nil {
		t.Fatal(err)
	}
	if len(fake.cms) != 0 {
		t.Errorf("%d ConfigMaps after the read-only volume was deleted, want 0", len(fake.cms))
	}
}

// TestDeleteGuardSeesPersistentVolumes: a static PV in the volume's tree, or
// a volume of another dataset whose root lies in it, keeps the tree; a PV
// Cistern cannot read does not; when the API server cannot list the PVs
// nothing is deleted and the sidecar is told to retry.
func TestDeleteGuardSeesPersistentVolumes(t *testing.T) {
	ctx := context.Background()
	fake := &fakeAPI{cms: map[string]kube.ConfigMap{}}
	d := newClusterDriver(t, fake)
	root := t.TempDir()
	exists := func(rel string) bool { _, err := os.Stat(filepath.Join(root, rel)); return err == nil }

	v, err := d.CreateVolume(ctx, createReq("v", root))
	if err != nil {
		t.Fatal(err)
	}
	vid := v.Volume.VolumeId
	if err := os.MkdirAll(filepath.Join(root, "team-a/v/static"), 0o755); err != nil {
		t.Fatal(err)
	}
	self := kube.CSIVolume{Name: "pv-v", Handle: vid}
	otherDataset := VolumeID{Dataset: "nested", ReadOnly: true, OnDelete: Retain, NameHash: NameHash("pv-n"),
		Source: api.Source{Scheme: "file", Path: filepath.Join(root, "team-a")}, SubPath: "v"}
	for _, c := range []struct {
		name string
		pv   kube.CSIVolume
	}{
		{"a static PV inside the volume", kube.CSIVolume{Name: "static", Handle: "nas-static-1",
			Attributes: map[string]string{"dataset": "ds", "source": "file://" + root, "subPath": "team-a/v/static"}}},
		{"a static PV of the dataset's root", kube.CSIVolume{Name: "root", Handle: "nas-root",
			Attributes: map[string]string{"dataset": "ds", "source": "file://" + root, "subPath": ""}}},
		{"a volume of another dataset rooted inside it", kube.CSIVolume{Name: "pv-n", Handle: otherDataset.String()}},
	} {
		fake.setPVs(self, c.pv)
		if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vid}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !exists("team-a/v/static") {
			t.Fatalf("%s: the volume's directory was deleted", c.name)
		}
		// The record is gone with the volume; make it again for the next case.
		if err := os.RemoveAll(filepath.Join(root, "team-a/v")); err != nil {
			t.Fatal(err)
		}
		if v, err = d.CreateVolume(ctx, createReq("v", root)); err != nil || v.Volume.VolumeId != vid {
			t.Fatalf("re-creating v: %v, %v", v, err)
		}
		if err := os.MkdirAll(filepath.Join(root, "team-a/v/static"), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// The API server fails: nothing deleted, Unavailable (retried).
	fake.mu.Lock()
	fake.failPVs = true
	fake.mu.Unlock()
	_, err = d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vid})
	wantCode(t, err, codes.Unavailable)
	if !exists("team-a/v/static") {
		t.Fatal("the directory was deleted while the PVs could not be listed")
	}
	fake.mu.Lock()
	fake.failPVs = false
	fake.mu.Unlock()

	// A PV of another driver's kind of handle that Cistern cannot read
	// (no dataset parameters), or one elsewhere, does not hold the tree.
	fake.setPVs(self,
		kube.CSIVolume{Name: "junk", Handle: "not-cistern", Attributes: map[string]string{"foo": "bar"}},
		kube.CSIVolume{Name: "elsewhere", Handle: "nas-2", Attributes: map[string]string{"dataset": "ds", "source": "file://" + root, "subPath": "team-b"}})
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vid}); err != nil {
		t.Fatal(err)
	}
	if exists("team-a/v") {
		t.Fatal("the volume's directory remains though no other volume uses it")
	}
}

// TestPlace: where volumes' data lies, across datasets.
func TestPlace(t *testing.T) {
	file := func(p string) api.Source { return api.Source{Scheme: "file", Path: p} }
	s3 := func(endpoint, bucket, prefix string) api.Source {
		s := api.Source{Scheme: "s3"}
		s.S3.Endpoint, s.S3.Bucket, s.S3.Prefix = endpoint, bucket, prefix
		return s
	}
	for _, c := range []struct {
		a, b       api.Source
		subA, subB string
		overlap    bool
	}{
		{file("/data"), file("/data/features"), "features/team-a", "team-a/x", true},
		{file("/data"), file("/data/features"), "features/team-a", "team-b", false},
		{file("/data"), file("/data2"), "", "", false},
		{file("/"), file("/data"), "", "x", true},
		{s3("http://a", "b", "p"), s3("http://a", "b", ""), "x", "p/x/y", true},
		{s3("http://a", "b", "p"), s3("http://other", "b", "p"), "x", "x", false},
		{s3("http://a", "b", ""), s3("http://a", "c", ""), "", "", false},
	} {
		sa, pa := place(c.a, c.subA)
		sb, pb := place(c.b, c.subB)
		if got := sa == sb && overlaps(pa, pb); got != c.overlap {
			t.Errorf("%s %q and %s %q overlap = %v, want %v", c.a, c.subA, c.b, c.subB, got, c.overlap)
		}
	}
}
