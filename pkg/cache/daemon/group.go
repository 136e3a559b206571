package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/group"
	"github.com/cistern-csi/cistern/pkg/kube"
)

// A daemon in a cache group (--group) serves its datasets' blocks to the
// group's other members over mutual TLS (--group-listen) and asks them
// for the blocks they own: the datasets whose volumes name the group
// (cacheGroup) are read through it. The members come from the group's
// Service's EndpointSlices (--group-service) or a list (--group-members);
// a daemon whose ID is not among them uses the group without owning
// blocks (a client-only member).

// groupPortName is the name of the group's port in its Service.
const groupPortName = "group"

// membersEvery is how often the members are read again.
var membersEvery = 2 * time.Second

// groupMember is the daemon's part in its cache group.
type groupMember struct {
	name   string
	node   *group.Node
	server *group.Server
	http   *http.Server
	addr   string // where the peer server listens
	log    klog.Logger
	list   func(context.Context) ([]group.Member, error)
	// latency counts how long the blocks peers sent took.
	latency cache.LatencyHistogram

	// kick asks the membership loop for a refresh now (a dataset was
	// joined or left: what this member serves changed).
	kick chan struct{}

	mu      sync.Mutex
	served  map[string][]*cache.Dataset // guarded by mu; group key -> mounted datasets of it, the first serves peers
	members []group.Member              // guarded by mu; the last list read
	serving map[string][]string         // guarded by mu; member ID -> IDs of the datasets it serves
	sig     string                      // guarded by mu; what the placement was built of
	listErr string                      // guarded by mu; the last membership error, or ""
	skips   map[string]time.Time        // guarded by mu; member ID -> when it was last logged as put aside
}

// startGroup starts the peer server and the membership loop, if the
// daemon is in a group.
func (d *Daemon) startGroup() error {
	o := d.opts
	if o.Group == "" {
		return nil
	}
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(o.GroupTLSDir, name)) }
	ca, err := read("ca.crt")
	if err != nil {
		return fmt.Errorf("--group-tls-dir: %w", err)
	}
	crt, err := read("tls.crt")
	if err != nil {
		return fmt.Errorf("--group-tls-dir: %w", err)
	}
	key, err := read("tls.key")
	if err != nil {
		return fmt.Errorf("--group-tls-dir: %w", err)
	}
	stls, ctls, err := group.TLSConfigs(crt, key, ca)
	if err != nil {
		return fmt.Errorf("--group-tls-dir %s: %w", o.GroupTLSDir, err)
	}
	srv := group.NewServer()
	srv.HotAsks = o.GroupHotAsks
	g := &groupMember{name: o.Group, server: srv, served: map[string][]*cache.Dataset{}, kick: make(chan struct{}, 1), log: d.log.WithName("group").WithValues("group", o.Group, "member", o.GroupID)}
	g.node = &group.Node{Self: o.GroupID, Client: &group.Client{
		HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: ctls, MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute}},
		// An owner's fetch is bounded by the source timeout, and a
		// little more per MiB of the block (s3store): not given up
		// before it.
		Deadline: o.GroupDeadline, MaxWait: o.SourceTimeout + time.Duration(o.BlockSize>>20)*time.Second + 5*time.Second, Observe: g.latency.Observe,
		OnSkip: g.skipped}}
	if g.list, err = o.membership(); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", o.GroupListen)
	if err != nil {
		return fmt.Errorf("--group-listen: %w", err)
	}
	g.addr = lis.Addr().String()
	g.http = &http.Server{Handler: g.server, TLSConfig: stls, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := g.http.ServeTLS(lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error(err, "The cache group's peer server stopped")
		}
	}()
	d.group = g
	g.refresh(d.ctx) // the first members before any dataset is mounted
	d.wg.Add(1)
	go d.every(membersEvery, g.kick, func() bool { g.refresh(d.ctx); return true })
	g.log.Info("Serving the cache group", "listen", g.addr)
	return nil
}

// GroupAddr returns where the peer server listens ("" outside a group).
func (d *Daemon) GroupAddr() string {
	if d.group == nil {
		return ""
	}
	return d.group.addr
}

// stopGroup stops the peer server (after the drain, see drainGroup).
func (d *Daemon) stopGroup() {
	if d.group == nil {
		return
	}
	d.drainGroup()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = d.group.http.Shutdown(ctx)
}

// refresh reads the members and which datasets each serves, and places
// each dataset's blocks over the members that serve it when that changed.
func (g *groupMember) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ms, err := g.list(ctx)
	if err != nil {
		g.mu.Lock()
		if g.listErr != err.Error() {
			g.log.Error(err, "Reading the cache group's members failed; keeping the last list")
		}
		g.listErr = err.Error()
		g.mu.Unlock()
		return
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].ID < ms[j].ID })
	if _, err := group.NewRing(ms); err != nil {
		g.log.Error(err, "The cache group's member list is invalid; keeping the last one")
		return
	}
	// Which datasets each member serves: this one's from its server, the
	// others' asked at once; one that does not answer keeps what it said
	// last (a slow answer must not move its blocks away and back).
	// The map is written by the askers under smu; this member's own entry
	// goes in before any asker starts.
	serving := map[string][]string{g.node.Self: g.server.Serving()}
	var smu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range ms {
		if m.ID == g.node.Self {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids, err := g.node.Client.Datasets(ctx, m)
			smu.Lock()
			defer smu.Unlock()
			if err != nil {
				g.mu.Lock()
				ids = g.serving[m.ID]
				g.mu.Unlock()
				g.log.V(2).Info("A member did not say which datasets it serves", "peer", m.ID, "err", err.Error())
			}
			serving[m.ID] = ids
		}()
	}
	wg.Wait()
	rings, err := group.Rings(ms, serving)
	if err != nil {
		g.log.Error(err, "Placing the cache group's datasets failed")
		return
	}
	sig := placementSignature(ms, serving)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.listErr = ""
	g.serving = serving
	if sig == g.sig {
		return
	}
	g.node.SetRings(rings)
	membersChanged := !slices.Equal(ms, g.members)
	g.members, g.sig = ms, sig
	if membersChanged {
		ids := make([]string, len(ms))
		for i, m := range ms {
			ids[i] = m.ID
		}
		self := slices.ContainsFunc(ms, func(m group.Member) bool { return m.ID == g.node.Self && m.Weight > 0 })
		g.log.Info("Cache group members", "members", ids, "owner", self)
	}
}

// skipped logs a member put aside (unreachable, silent past the
// deadline, busy or corrupt), at most once a minute each: meanwhile its
// blocks come from the next in line or the source.
func (g *groupMember) skipped(m group.Member, err error) {
	now := time.Now()
	g.mu.Lock()
	logIt := now.Sub(g.skips[m.ID]) >= time.Minute
	if logIt {
		if g.skips == nil {
			g.skips = map[string]time.Time{}
		}
		g.skips[m.ID] = now
	}
	g.mu.Unlock()
	if logIt {
		g.log.Info("A cache group member failed to send a block: its blocks come from the next member in line, or the source, for a while", "peer", m.ID, "err", err.Error())
	}
}

// placementSignature says what the rings are built of: the members and
// the datasets each serves.
func placementSignature(ms []group.Member, serving map[string][]string) string {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "%s=%s/%g:", m.ID, m.Addr, m.Weight)
		ids := slices.Clone(serving[m.ID])
		slices.Sort(ids)
		b.WriteString(strings.Join(ids, ","))
		b.WriteByte(';')
	}
	return b.String()
}

// joinGroup reads m's dataset through the daemon's group if its volumes
// name it, and serves its blocks to the group.
func (d *Daemon) joinGroup(m *mounted) {
	g := d.group
	if m.req.CacheGroup == "" {
		return
	}
	if g == nil || m.req.CacheGroup != g.name {
		m.log.Info("The dataset's cache group is not this daemon's: read on its own", "cacheGroup", m.req.CacheGroup, "daemonGroup", d.opts.Group)
		return
	}
	key := groupKey(m.req.Source, m.secrets)
	g.mu.Lock()
	g.served[key] = append(g.served[key], m.ds)
	if len(g.served[key]) == 1 {
		g.serveLocked(key, m.log)
	}
	g.mu.Unlock()
	m.ds.JoinGroup(key, g.node)
	m.groupKey = key
	g.refreshSoon() // this member may own a share of the dataset now
	m.log.Info("Dataset reads through the cache group", "cacheGroup", g.name)
}

// leaveGroup stops serving m's dataset to the group (it is unmounted);
// another mount of the same dataset, if any, serves it from then on.
func (d *Daemon) leaveGroup(m *mounted) {
	g := d.group
	if g == nil || m.groupKey == "" {
		return
	}
	m.ds.JoinGroup("", nil)
	g.mu.Lock()
	defer g.mu.Unlock()
	dss := g.served[m.groupKey]
	i := slices.Index(dss, m.ds)
	if i < 0 {
		return
	}
	dss = slices.Delete(dss, i, i+1)
	switch {
	case len(dss) == 0:
		delete(g.served, m.groupKey)
		g.server.Withdraw(m.groupKey)
		g.refreshSoon()
	case i == 0:
		g.served[m.groupKey] = dss
		g.serveLocked(m.groupKey, m.log)
	default:
		g.served[m.groupKey] = dss
	}
}

// serveLocked answers peers' requests for the dataset of group key key
// from its first mounted dataset.
func (g *groupMember) serveLocked(key string, log klog.Logger) {
	if err := g.server.Serve(key, group.DatasetSource(g.served[key][0])); err != nil {
		log.Error(err, "Serving the dataset to the cache group failed")
	}
}

// refreshSoon has the membership loop refresh now.
func (g *groupMember) refreshSoon() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// groupKey is a dataset's key in the group: the same on every member
// with the same source and credentials, computable by no one without them.
func groupKey(source string, secrets map[string]string) string {
	keys := make([]string, 0, len(secrets))
	for k := range secrets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k + "=" + secrets[k] + "\x00")
	}
	return group.DatasetKey(source, []byte(b.String()))
}

// groupStats is the group's part of the daemon's stats.
func (d *Daemon) groupStats(peerBytesIn int64) *api.GroupStats {
	g := d.group
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	st := &api.GroupStats{Name: g.name, Self: g.node.Self, Listen: g.addr, PeerBytesIn: peerBytesIn, PeerLatency: apiHistogram(g.latency.Snapshot()),
		BlocksOut: g.server.Blocks.Load(), ReplicaBlocksOut: g.server.Replicas.Load(), PeerBytesOut: g.server.Bytes.Load(), MembersError: g.listErr, Datasets: len(g.served)}
	for _, m := range g.members {
		st.Members = append(st.Members, m.ID)
		if ids := g.serving[m.ID]; len(ids) > 0 {
			if st.Serving == nil {
				st.Serving = map[string][]string{}
			}
			st.Serving[m.ID] = slices.Clone(ids)
		}
		if m.ID == g.node.Self && m.Weight > 0 {
			st.Owner = true
		}
	}
	return st
}

// membership returns the function that lists the group's members.
func (o *Options) membership() (func(context.Context) ([]group.Member, error), error) {
	switch {
	case o.GroupService != "" || o.GroupCacheService != "":
		kc, err := kube.InCluster(kube.ServiceAccountDir)
		if err != nil {
			return nil, fmt.Errorf("--group-service: %w", err)
		}
		return func(ctx context.Context) ([]group.Member, error) {
			var out []group.Member
			for _, s := range []struct {
				svc   string
				byPod bool
			}{{o.GroupService, false}, {o.GroupCacheService, true}} {
				if s.svc == "" {
					continue
				}
				ns, name, _ := strings.Cut(s.svc, "/")
				eps, err := kc.ListEndpoints(ctx, ns, name, groupPortName)
				if err != nil {
					return nil, err
				}
				out = append(out, endpointMembers(eps, s.byPod)...)
			}
			return out, nil
		}, nil
	case strings.HasPrefix(o.GroupMembers, "@"):
		path := o.GroupMembers[1:]
		return func(context.Context) ([]group.Member, error) {
			b, err := os.ReadFile(path)
			if err != nil {
				return nil, err
			}
			return ParseMembers(strings.Join(strings.Fields(string(b)), ","))
		}, nil
	default:
		ms, err := ParseMembers(o.GroupMembers)
		if err != nil {
			return nil, err
		}
		return func(context.Context) ([]group.Member, error) { return slices.Clone(ms), nil }, nil
	}
}

// endpointMembers are the members of the group's EndpointSlices: every
// serving endpoint that is not terminating, by node name (a DaemonSet's
// pod keeps its blocks across restarts and upgrades), by pod name when
// a node has two or none or byPod (cache-only members), weight 1. A terminating member
// leaves the placement at once; the blocks it owned are asked of it by
// their new owners for the hand-off period while it still answers.
func endpointMembers(eps []kube.Endpoint, byPod bool) []group.Member {
	// One endpoint may be listed in two slices (while they are updated,
	// or an IPv4 and an IPv6 slice): one member per pod (or address).
	type ep struct {
		kube.Endpoint
		who string
	}
	var live []ep
	seen := map[string]bool{}
	pods := map[string]map[string]bool{} // node -> its pods
	for _, e := range eps {
		who := cmp.Or(e.Pod, e.Address)
		if !e.Serving || e.Terminating || seen[who] {
			continue
		}
		seen[who] = true
		live = append(live, ep{e, who})
		if e.NodeName != "" {
			if pods[e.NodeName] == nil {
				pods[e.NodeName] = map[string]bool{}
			}
			pods[e.NodeName][who] = true
		}
	}
	var out []group.Member
	for _, e := range live {
		id := e.NodeName
		if byPod || id == "" || len(pods[id]) > 1 { // two pods on one node: by pod
			id = e.who
		}
		out = append(out, group.Member{ID: id, Addr: net.JoinHostPort(e.Address, strconv.Itoa(e.Port)), Weight: 1})
	}
	return out
}

// ParseMembers parses a static member list: comma-separated
// ID=HOST:PORT, each optionally followed by /WEIGHT (default 1; 0 is a
// client-only member).
func ParseMembers(s string) ([]group.Member, error) {
	var out []group.Member
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		id, addr, ok := strings.Cut(f, "=")
		if !ok || id == "" {
			return nil, fmt.Errorf("member %q: want ID=HOST:PORT[/WEIGHT]", f)
		}
		m := group.Member{ID: id, Addr: addr, Weight: 1}
		if a, w, ok := strings.Cut(addr, "/"); ok {
			v, err := strconv.ParseFloat(w, 64)
			if err != nil || v < 0 {
				return nil, fmt.Errorf("member %q: weight %q is not a number >= 0", f, w)
			}
			m.Addr, m.Weight = a, v
		}
		if _, _, err := net.SplitHostPort(m.Addr); err != nil {
			return nil, fmt.Errorf("member %q: %w", f, err)
		}
		out = append(out, m)
	}
	if _, err := group.NewRing(out); err != nil {
		return nil, err
	}
	return out, nil
}
