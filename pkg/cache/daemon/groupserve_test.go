package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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

// cacheOnlyPair is a node member (node-0, 127.0.0.1) mounting an S3
// dataset for a volume and a cache-only member (cache-0, 127.0.0.2)
// serving it from --group-datasets (the StorageClass's source parameters,
// the credentials from a mounted Secret), listed in a members file.
type cacheOnlyPair struct {
	e                *cachetest.S3Env
	node, cacheOnly  *Daemon
	stopCacheOnly    func()
	members, mnt     string
	nodeAddr, coAddr string
	nodeMetrics      string // the node member's metrics address
}

func startCacheOnlyPair(t *testing.T, set func(*Options)) *cacheOnlyPair {
	t.Helper()
	old := membersEvery
	membersEvery = 20 * time.Millisecond
	t.Cleanup(func() { membersEvery = old })
	p := &cacheOnlyPair{e: cachetest.NewS3Env(t)}
	tlsDir := writeGroupTLS(t)
	p.members = filepath.Join(t.TempDir(), "members")
	datasets := t.TempDir()
	spec := fmt.Sprintf(`{"parameters": {"source": "s3://data/ds", "endpoint": %q, "region": "us-east-1", "addressing": "path"}, "secretsDir": %q}`,
		p.e.Srv.Endpoint, writeSecretVolume(t, p.e.Srv.Secrets()))
	if err := os.WriteFile(filepath.Join(datasets, "objects.json"), []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	member := func(id, ip string) func(*Options) {
		return func(o *Options) {
			o.Group, o.GroupID, o.GroupListen, o.GroupTLSDir = "research", id, ip+":0", tlsDir
			o.GroupMembers, o.GroupDeadline = "@"+p.members, 10*time.Second
		}
	}
	var ncl *api.Client
	p.node, ncl, p.nodeMetrics = startDaemonWith(t, member("node-0", "127.0.0.1"))
	p.cacheOnly, _, _, p.stopCacheOnly = startStoppable(t, func(o *Options) {
		member("cache-0", "127.0.0.2")(o)
		o.GroupDatasets = datasets
		set(o)
	})
	p.nodeAddr, p.coAddr = p.node.GroupAddr(), p.cacheOnly.GroupAddr()
	p.list(t, "node-0="+p.nodeAddr, "cache-0="+p.coAddr)
	ctx := context.Background()
	req := api.MountRequest{Holder: "volume:a", Dataset: "objects", Source: p.e.Loc.String(), ReadOnly: true, MetaCache: time.Hour,
		Secrets: p.e.Srv.Secrets(), CacheGroup: "research"}
	resp, err := ncl.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ncl.Release(ctx, req.Holder) })
	p.mnt = resp.MountPath
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		sv := p.node.Stats().Group.Serving
		if len(sv["node-0"]) == 1 && len(sv["cache-0"]) == 1 && sv["node-0"][0] == sv["cache-0"][0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node member does not see the cache-only member serve its dataset: %v", sv)
		}
	}
	return p
}

// list writes the members file.
func (p *cacheOnlyPair) list(t *testing.T, members ...string) {
	t.Helper()
	if err := os.WriteFile(p.members, []byte(strings.Join(members, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// read reads name through the node member's mount, not from the kernel's
// page cache, and checks its bytes.
func (p *cacheOnlyPair) read(t *testing.T, name string, want []byte) {
	t.Helper()
	f, err := os.Open(filepath.Join(p.mnt, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %s through the group: %d bytes, %v", name, len(got), err)
	}
}

// TestCacheOnlyMemberServesTheGroup: a daemon with no volumes serves an
// S3 dataset to its group from --group-datasets. A node member mounting
// the dataset for a volume finds it serving the same dataset (their keys
// in the group agree), and its first read of a file takes the blocks the
// cache-only member owns from it, which fetched them from the store:
// each byte once in all.
func TestCacheOnlyMemberServesTheGroup(t *testing.T) {
	p := startCacheOnlyPair(t, func(*Options) {})
	big := make([]byte, 24*cachetest.Block+77)
	for i := range big {
		big[i] = byte(i*5 + i>>10)
	}
	p.e.Put(t, "shards/cache-only.bin", big)
	p.read(t, "shards/cache-only.bin", big)
	ns, cs := p.node.Stats(), p.cacheOnly.Stats()
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
	// Metrics: the bytes, and how long each block the peer sent took,
	// once the counters settle (the kernel's read-ahead may still be
	// asking for a block or two).
	var got uint64
	for deadline, last := time.Now().Add(5*time.Second), [2]int64{-1, -1}; ; time.Sleep(200 * time.Millisecond) {
		ns, cs = p.node.Stats(), p.cacheOnly.Stats()
		now := [2]int64{ns.Group.PeerBytesIn, cs.Group.BlocksOut}
		if now == last || time.Now().After(deadline) {
			break
		}
		last = now
	}
	for _, n := range ns.Group.PeerLatency.Counts {
		got += n
	}
	if got == 0 || int64(got) != cs.Group.BlocksOut {
		t.Errorf("the node member's peer latency counts %d blocks, the cache-only member sent %d", got, cs.Group.BlocksOut)
	}
	resp, err := http.Get("http://" + p.nodeMetrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	// (Values as the text format writes them: 1.048653e+06 above a
	// million.)
	for series, want := range map[string]float64{
		`cistern_group_peer_fetch_seconds_count{group="research"}`:        float64(got),
		`cistern_group_peer_bytes_total{direction="in",group="research"}`: float64(ns.Group.PeerBytesIn),
		`cistern_group_members{group="research"}`:                         2,
	} {
		found := false
		for _, l := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(l, series+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				found = err == nil && f == want
			}
		}
		if !found {
			t.Errorf("metrics lack %s %g", series, want)
		}
	}
}

// TestLeavingMemberDrains: a cache-only member that stops (scaled down:
// its endpoint leaves) with --group-drain keeps answering while the node
// member takes its blocks over, then stops once no one asks. The node
// member's next read of the file fetches nothing from the store: the
// blocks the leaver owned come from it, for the hand-off. (Without the
// drain they were fetched again.)
func TestLeavingMemberDrains(t *testing.T) {
	oldIdle := drainIdle
	drainIdle = time.Second
	t.Cleanup(func() { drainIdle = oldIdle })
	p := startCacheOnlyPair(t, func(o *Options) { o.GroupDrain = time.Minute })
	// More blocks than the node member keeps of others' in memory.
	big := make([]byte, 64*cachetest.Block)
	for i := range big {
		big[i] = byte(i*3 + i>>9)
	}
	p.e.Put(t, "shards/drain.bin", big)
	p.read(t, "shards/drain.bin", big)
	if p.cacheOnly.Stats().Cache.SourceBytes == 0 {
		t.Fatal("the cache-only member owns no block of the file")
	}
	// Its endpoint terminates, its process gets SIGTERM.
	p.list(t, "node-0="+p.nodeAddr)
	stopped := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		p.stopCacheOnly()
		stopped <- time.Since(start)
	}()
	for deadline := time.Now().Add(5 * time.Second); len(p.node.Stats().Group.Members) != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the node member did not see the cache-only member leave")
		}
	}
	before := p.node.Stats().Cache.SourceBytes
	p.read(t, "shards/drain.bin", big)
	if n := p.node.Stats().Cache.SourceBytes - before; n != 0 {
		t.Errorf("after the member left, the node member fetched %d bytes from the store again, want 0 (the leaver's blocks from it)", n)
	}
	select {
	case took := <-stopped:
		if took < drainIdle {
			t.Errorf("the leaver stopped after %s, before it had been idle for %s", took, drainIdle)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the leaver still drains 30 s on, with no one asking (want it to stop once idle)")
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
