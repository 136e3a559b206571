package daemon

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
)

// writeSecretVolume lays secrets out as the kubelet mounts a Secret: the
// keys are links into a timestamped directory through ..data.
func writeSecretVolume(t *testing.T, secrets map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	ts := filepath.Join(dir, "..2026_12_05_01_02_03.000000001")
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for k, v := range secrets {
		if err := os.WriteFile(filepath.Join(ts, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestCacheOnlyMemberServesTheGroup: a daemon with no volumes serves an
// S3 dataset to its group from --group-datasets (the StorageClass's
// source parameters, the credentials from a mounted Secret). A node
// member mounting the dataset for a volume finds it serving the same
// dataset (their keys in the group agree), and its first read of a file
// takes the blocks the cache-only member owns from it, which fetched them
// from the store: each byte once in all.
func TestCacheOnlyMemberServesTheGroup(t *testing.T) {
	old := membersEvery
	membersEvery = 20 * time.Millisecond
	t.Cleanup(func() { membersEvery = old })
	e := cachetest.NewS3Env(t)
	big := make([]byte, 24*cachetest.Block+77)
	for i := range big {
		big[i] = byte(i*5 + i>>10)
	}
	e.Put(t, "shards/cache-only.bin", big)
	tlsDir := writeGroupTLS(t)
	members := filepath.Join(t.TempDir(), "members")
	datasets := t.TempDir()
	spec := fmt.Sprintf(`{"parameters": {"source": "s3://data/ds", "endpoint": %q, "region": "us-east-1", "addressing": "path"}, "secretsDir": %q}`,
		e.Srv.Endpoint, writeSecretVolume(t, e.Srv.Secrets()))
	if err := os.WriteFile(filepath.Join(datasets, "objects.json"), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	set := func(id, ip string) func(*Options) {
		return func(o *Options) {
			o.Group, o.GroupID, o.GroupListen, o.GroupTLSDir = "research", id, ip+":0", tlsDir
			o.GroupMembers, o.GroupDeadline = "@"+members, 10*time.Second
		}
	}
	node, ncl, _ := startDaemonWith(t, set("node-0", "127.0.0.1"))
	cacheOnly, ccl, _ := startDaemonWith(t, func(o *Options) {
		set("cache-0", "127.0.0.2")(o)
		o.GroupDatasets = datasets
	})
	list := fmt.Sprintf("node-0=%s\ncache-0=%s\n", node.GroupAddr(), cacheOnly.GroupAddr())
	if err := os.WriteFile(members, []byte(list), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := api.MountRequest{Holder: "volume:a", Dataset: "objects", Source: e.Loc.String(), ReadOnly: true, MetaCache: time.Hour,
		Secrets: e.Srv.Secrets(), CacheGroup: "research"}
	resp, err := ncl.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ncl.Release(ctx, req.Holder) })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		sv := node.Stats().Group.Serving
		if len(sv["node-0"]) == 1 && len(sv["cache-0"]) == 1 && sv["node-0"][0] == sv["cache-0"][0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node member does not see the cache-only member serve its dataset: %v", sv)
		}
	}
	got, err := os.ReadFile(filepath.Join(resp.MountPath, "shards/cache-only.bin"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read through the group: %d bytes, %v", len(got), err)
	}
	ns, cs := node.Stats(), cacheOnly.Stats()
	if cs.Cache.SourceBytes == 0 || ns.Group.PeerBytesIn == 0 || cs.Group.PeerBytesOut != ns.Group.PeerBytesIn {
		t.Errorf("the cache-only member fetched %d bytes and sent %d, the node member took %d from it: want its share, through it",
			cs.Cache.SourceBytes, cs.Group.PeerBytesOut, ns.Group.PeerBytesIn)
	}
	if src := ns.Cache.SourceBytes + cs.Cache.SourceBytes; src != int64(len(big)) {
		t.Errorf("the group fetched %d bytes from the store for a file of %d, want each byte once", src, len(big))
	}
	if len(cs.Datasets) != 0 || cs.Group.Datasets != 1 {
		t.Errorf("the cache-only member mounts %d datasets and serves %d, want none mounted and one served", len(cs.Datasets), cs.Group.Datasets)
	}
	if _, err := ccl.Stats(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestGroupDatasetsRefused: a dataset file that cannot be served names
// what is wrong.
func TestGroupDatasetsRefused(t *testing.T) {
	secrets := writeSecretVolume(t, map[string]string{"access-key": "a", "secret-key": "s"})
	for _, c := range []struct{ name, file, spec, want string }{
		{"unknown parameter", "d.json", `{"parameters": {"source": "s3://bucket/p", "uid": "1000"}}`, `parameter "uid"`},
		{"query", "d.json", `{"parameters": {"source": "s3://bucket/p?region=x"}}`, "must not have a query"},
		{"unknown field", "d.json", `{"parameters": {"source": "s3://bucket/p"}, "secret": "x"}`, "unknown field"},
		{"bad name", "Data.json", `{"parameters": {"source": "s3://bucket/p"}}`, "DNS label"},
		{"no source", "d.json", `{"parameters": {}}`, "source"},
		{"option of a file source", "d.json", `{"parameters": {"source": "file:///data", "region": "x"}}`, "s3:// sources only"},
		{"no secrets", "d.json", fmt.Sprintf(`{"parameters": {"source": "s3://bucket/p"}, "secretsDir": %q}`, t.TempDir()), "no keys"},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, c.file), []byte(c.spec), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readGroupDatasets(dir, "research"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
	if _, err := readGroupDatasets(t.TempDir(), "research"); err == nil || !strings.Contains(err.Error(), "no <dataset>.json") {
		t.Errorf("an empty directory: %v", err)
	}
	dir := t.TempDir()
	spec := fmt.Sprintf(`{"parameters": {"source": "s3://bucket/p", "endpoint": "http://127.0.0.1:9000", "addressing": "path"}, "secretsDir": %q}`, secrets)
	if err := os.WriteFile(filepath.Join(dir, "imagenet.json"), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	reqs, err := readGroupDatasets(dir, "research")
	if err != nil || len(reqs) != 1 {
		t.Fatalf("readGroupDatasets = %+v, %v", reqs, err)
	}
	r := reqs[0]
	if r.Dataset != "imagenet" || !r.ReadOnly || r.CacheGroup != "research" || len(r.Secrets) != 2 || r.Secrets["secret-key"] != "s" ||
		!strings.HasPrefix(r.Source, "s3://bucket/p?") || !strings.Contains(r.Source, "addressing=path") {
		t.Errorf("request: %+v", r)
	}
}
