package daemon

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/group"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/kube"
)

// writeGroupTLS writes a group's CA and a member certificate as the
// chart's Secret holds them.
func writeGroupTLS(t *testing.T) string {
	t.Helper()
	ca, crt, key, err := group.NewPKI("test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{"ca.crt": ca, "tls.crt": crt, "tls.key": key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestDaemonsFormACacheGroup: two daemons in one group (each its own
// state and tiers, loopback addresses of their own, mutual TLS, members
// from a file) mounting one S3 dataset whose volumes name the group. The
// first member's cold read of a file fetches each block from the store
// once (the blocks the second owns through it); the second member's first
// read then comes from the group: not one byte from the store.
func TestDaemonsFormACacheGroup(t *testing.T) {
	old := membersEvery
	membersEvery = 20 * time.Millisecond
	t.Cleanup(func() { membersEvery = old })
	e := cachetest.NewS3Env(t)
	big := make([]byte, 24*cachetest.Block+123)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	e.Put(t, "shards/big.bin", big)
	tlsDir := writeGroupTLS(t)
	members := filepath.Join(t.TempDir(), "members")
	if err := os.WriteFile(members, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	type node struct {
		d  *Daemon
		cl *api.Client
	}
	var nodes []node
	for i, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		d, cl, _ := startDaemonWith(t, func(o *Options) {
			o.Group, o.GroupID, o.GroupListen, o.GroupTLSDir = "research", fmt.Sprintf("node-%d", i), ip+":0", tlsDir
			o.GroupMembers, o.GroupDeadline = "@"+members, 10*time.Second
		})
		nodes = append(nodes, node{d, cl})
	}
	list := fmt.Sprintf("node-0=%s\nnode-1=%s\n", nodes[0].d.GroupAddr(), nodes[1].d.GroupAddr())
	if err := os.WriteFile(members, []byte(list), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		for deadline := time.Now().Add(5 * time.Second); len(n.d.Stats().Group.Members) != 2; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("members not read: %+v", n.d.Stats().Group)
			}
		}
	}
	ctx := context.Background()
	req := api.MountRequest{Holder: "volume:a", Dataset: "objects", Source: e.Loc.String(), ReadOnly: true, MetaCache: time.Hour,
		Secrets: e.Srv.Secrets(), CacheGroup: "research"}
	mount := func(n node) string {
		t.Helper()
		resp, err := n.cl.Mount(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.cl.Release(ctx, req.Holder) })
		return resp.MountPath
	}
	read := func(mnt string) {
		t.Helper()
		got, err := os.ReadFile(filepath.Join(mnt, "shards/big.bin"))
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("read through the group: %d bytes, %v", len(got), err)
		}
	}
	mnt0, mnt1 := mount(nodes[0]), mount(nodes[1])
	// Each member learns that the other serves the dataset too (a
	// member owns blocks only of the datasets it can fetch).
	// (Stats show it: what the members serve, by member.)
	for _, n := range nodes {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			sv := n.d.Stats().Group.Serving
			if len(sv["node-0"]) == 1 && len(sv["node-1"]) == 1 && sv["node-0"][0] == sv["node-1"][0] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the members did not learn that both serve the dataset: %v", sv)
			}
		}
	}
	read(mnt0)
	s0, s1 := nodes[0].d.Stats(), nodes[1].d.Stats()
	if src := s0.Cache.SourceBytes + s1.Cache.SourceBytes; src != int64(len(big)) {
		t.Errorf("the first read fetched %d bytes from the store for a file of %d, want each byte once", src, len(big))
	}
	if s0.Group.PeerBytesIn == 0 || s1.Group.PeerBytesOut != s0.Group.PeerBytesIn {
		t.Errorf("node-0 took %d bytes from its peer, node-1 sent %d; want the blocks node-1 owns, sent once", s0.Group.PeerBytesIn, s1.Group.PeerBytesOut)
	}
	before := s1.Cache.SourceBytes
	read(mnt1)
	s1 = nodes[1].d.Stats()
	if n := s1.Cache.SourceBytes - before; n != 0 {
		t.Errorf("the second member's first read fetched %d bytes from the store, want 0 (all from the group)", n)
	}
	if s1.Group.PeerBytesIn == 0 || !s1.Group.Owner || s1.Group.Datasets != 1 {
		t.Errorf("group stats of node-1: %+v", s1.Group)
	}
}

// TestGroupMemberJoinsLate: a member that mounts a dataset the group's
// other member has read takes its share from that member (the previous
// owner of every block), not from the store, and keeps it.
func TestGroupMemberJoinsLate(t *testing.T) {
	old := membersEvery
	membersEvery = 20 * time.Millisecond
	t.Cleanup(func() { membersEvery = old })
	e := cachetest.NewS3Env(t)
	big := make([]byte, 24*cachetest.Block)
	for i := range big {
		big[i] = byte(i*13 + i>>11)
	}
	e.Put(t, "shards/late.bin", big)
	tlsDir := writeGroupTLS(t)
	members := filepath.Join(t.TempDir(), "members")
	var ds []*Daemon
	var cls []*api.Client
	for i, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		d, cl, _ := startDaemonWith(t, func(o *Options) {
			o.Group, o.GroupID, o.GroupListen, o.GroupTLSDir = "research", fmt.Sprintf("node-%d", i), ip+":0", tlsDir
			o.GroupMembers, o.GroupDeadline = "@"+members, 10*time.Second
		})
		ds, cls = append(ds, d), append(cls, cl)
	}
	if err := os.WriteFile(members, []byte(fmt.Sprintf("node-0=%s,node-1=%s", ds[0].GroupAddr(), ds[1].GroupAddr())), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := api.MountRequest{Holder: "volume:a", Dataset: "objects", Source: e.Loc.String(), ReadOnly: true, MetaCache: time.Hour,
		Secrets: e.Srv.Secrets(), CacheGroup: "research"}
	var mnts []string
	for i := range ds {
		resp, err := cls[i].Mount(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cls[i].Release(ctx, req.Holder) })
		mnts = append(mnts, resp.MountPath)
		if i > 0 {
			break
		}
		got, err := os.ReadFile(filepath.Join(resp.MountPath, "shards/late.bin"))
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("node-0 read %d bytes, %v", len(got), err)
		}
		if n := ds[0].Stats().Cache.SourceBytes; n != int64(len(big)) {
			t.Fatalf("node-0 alone read %d bytes from the store, want %d", n, len(big))
		}
	}
	// node-1 places the dataset over both members now: it owns about
	// half the blocks, which node-0 held.
	g := ds[1].group
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		g.mu.Lock()
		both := len(g.serving["node-0"]) == 1 && len(g.serving["node-1"]) == 1
		g.mu.Unlock()
		if both {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node-1 did not place the dataset over both members")
		}
	}
	got, err := os.ReadFile(filepath.Join(mnts[1], "shards/late.bin"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("node-1 read %d bytes, %v", len(got), err)
	}
	st := ds[1].Stats()
	if st.Cache.SourceBytes != 0 {
		t.Errorf("node-1 read %d bytes from the store, want 0: node-0 had every block", st.Cache.SourceBytes)
	}
	var kept int64
	for _, b := range st.Cache.TierBytes {
		kept += b
	}
	if kept == 0 || kept >= int64(len(big)) {
		t.Errorf("node-1 keeps %d bytes of a file of %d; want its share, taken from node-0", kept, len(big))
	}
}

// TestGroupOptions: the group's flags are checked before the daemon starts.
func TestGroupOptions(t *testing.T) {
	for _, c := range []struct {
		name string
		set  func(*Options)
		want string
	}{
		{"members without a group", func(o *Options) { o.GroupMembers = "a=127.0.0.1:1" }, "need --group"},
		{"datasets without a group", func(o *Options) { o.GroupDatasets = "/etc/cistern/group-datasets" }, "need --group"},
		{"no membership", func(o *Options) { o.Group = "research" }, "either --group-members or the Services"},
		{"both memberships", func(o *Options) { o.Group, o.GroupMembers, o.GroupService = "research", "a=127.0.0.1:1", "ns/svc" }, "either"},
		{"list and cache-only service", func(o *Options) { o.Group, o.GroupMembers, o.GroupCacheService = "research", "a=127.0.0.1:1", "ns/svc" }, "either"},
		{"bad cache-only service", func(o *Options) { o.Group, o.GroupService, o.GroupCacheService = "research", "ns/svc", "ns/" }, "--group-cache-service"},
		{"bad group", func(o *Options) { o.Group, o.GroupMembers = "Research", "a=127.0.0.1:1" }, "DNS label"},
		{"bad service", func(o *Options) { o.Group, o.GroupService = "research", "svc" }, "NAMESPACE/NAME"},
		{"bad member", func(o *Options) { o.Group, o.GroupMembers = "research", "a=nowhere" }, `member "a=nowhere"`},
		{"bad weight", func(o *Options) { o.Group, o.GroupMembers = "research", "a=127.0.0.1:1/x" }, "weight"},
		{"twice", func(o *Options) { o.Group, o.GroupMembers = "research", "a=127.0.0.1:1,a=127.0.0.2:1" }, "twice"},
		{"deadline under two heartbeats", func(o *Options) {
			o.Group, o.GroupMembers, o.GroupDeadline = "research", "a=127.0.0.1:1", 100*time.Millisecond
		}, "--group-peer-deadline"},
		{"negative hot asks", func(o *Options) { o.Group, o.GroupMembers, o.GroupHotAsks = "research", "a=127.0.0.1:1", -1 }, "--group-hot-asks"},
		{"negative drain", func(o *Options) { o.Group, o.GroupMembers, o.GroupDrain = "research", "a=127.0.0.1:1", -time.Second }, "--group-drain"},
		{"bad listen", func(o *Options) { o.Group, o.GroupMembers, o.GroupListen = "research", "a=127.0.0.1:1", "7480" }, "--group-listen"},
	} {
		o := Options{Socket: "/run/c.sock", StateDir: "/var/lib/cistern", GroupListen: ":7480", GroupID: "n", GroupDeadline: time.Second}
		c.set(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
	ms, err := ParseMembers("node-a=10.0.0.1:7480, node-b=10.0.0.2:7480/2,client=10.0.0.3:7480/0")
	if err != nil || len(ms) != 3 || ms[1].Weight != 2 || ms[2].Weight != 0 || ms[0].Addr != "10.0.0.1:7480" {
		t.Fatalf("ParseMembers = %+v, %v", ms, err)
	}
}

// TestEndpointMembers: serving endpoints that are not terminating, once
// each, by node name (by pod when two share a node, and for the cache-only
// members' Service), weight 1.
func TestEndpointMembers(t *testing.T) {
	eps := []kube.Endpoint{
		{Address: "10.0.0.1", Port: 7480, NodeName: "node-a", Pod: "p1", Ready: true, Serving: true},
		{Address: "10.0.0.2", Port: 7480, NodeName: "node-b", Pod: "p2", Serving: true, Terminating: true},
		{Address: "10.0.0.3", Port: 7480, NodeName: "node-c", Pod: "p3"},
		{Address: "10.0.0.4", Port: 7480, NodeName: "node-a", Pod: "cache-0", Ready: true, Serving: true},
		{Address: "fd00::5", Port: 7480, Pod: "cache-1", Ready: true, Serving: true},
		{Address: "10.0.0.6", Port: 7480, NodeName: "node-d", Pod: "p6", Ready: true, Serving: true},
		// The same pod again, in a second slice (an update, or the
		// IPv6 slice of a dual-stack Service): not a second member.
		{Address: "fd00::6", Port: 7480, NodeName: "node-d", Pod: "p6", Ready: true, Serving: true},
	}
	got := endpointMembers(eps, false)
	want := []group.Member{{ID: "p1", Addr: "10.0.0.1:7480", Weight: 1}, {ID: "cache-0", Addr: "10.0.0.4:7480", Weight: 1},
		{ID: "cache-1", Addr: "[fd00::5]:7480", Weight: 1}, {ID: "node-d", Addr: "10.0.0.6:7480", Weight: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("members:\n got %+v\nwant %+v", got, want)
	}
	got = endpointMembers(eps, true)
	want[3].ID = "p6"
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("cache-only members:\n got %+v\nwant %+v", got, want)
	}
}
