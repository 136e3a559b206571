package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/group"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
	"github.com/cistern-csi/cistern/test/bench/host"
	"github.com/cistern-csi/cistern/test/bench/storemodel"
	"github.com/cistern-csi/cistern/test/s3server"
)

// netGroup is a cache group of real cistern-cache daemons, each in a
// network namespace of the lab (its own address, its own state and disk
// tier, FUSE mounts on the host), mounting one S3 dataset that the
// versitygw on the host serves through a model of a remote store on the
// lab's hub. Members are listed in a file every daemon rereads.
type netGroup struct {
	lab     *lab
	dir     string
	binDir  string
	srv     *s3server.Server
	px      *storemodel.Proxy
	tlsDir  string
	list    string // the members file
	quota   int64
	block   int64
	req     api.MountRequest
	files   map[string][]byte // the dataset's files, as put in the store
	members map[int]*daemonProc
	listed  []int // the members in the file, in order
	// independent: daemons started from now on are in no group (each
	// node caches on its own).
	independent bool
}

// liveGroups are the groups started and not closed: a signal closes them
// (closeAll) before the process exits.
var liveGroups sync.Map

// closeAll closes every live group.
func closeAll() {
	liveGroups.Range(func(k, _ any) bool {
		k.(*netGroup).close()
		return true
	})
}

// daemonProc is one member's daemon.
type daemonProc struct {
	i      int
	cmd    *exec.Cmd
	cl     *api.Client
	mnt    string // the dataset's mount
	exited chan struct{}
}

func (d *daemonProc) id() string { return memberID(d.i) }

func memberID(i int) string { return fmt.Sprint("m", i) }

// Store model of the issue: a remote store 10 ms away each way, 1 Gbit/s
// (the platform benchmark's).
const (
	storeLatency   = 10 * time.Millisecond
	storeBandwidth = 1_000_000_000
)

// peerDeadline is the members' --group-peer-deadline (its default): a
// reader never waits longer on a peer that does not answer.
const peerDeadline = 2 * time.Second

// startNetGroup makes the lab, the store and its model, and puts files
// (name -> content) in the store.
func startNetGroup(dir, binDir string, quota, block int64, files map[string][]byte) (g *netGroup, err error) {
	g = &netGroup{dir: dir, binDir: binDir, quota: quota, block: block, files: files, members: map[int]*daemonProc{}}
	liveGroups.Store(g, true)
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	if g.lab, err = newLab(); err != nil {
		return g, err
	}
	if g.srv, err = s3server.Start(filepath.Join(dir, "s3")); err != nil {
		return g, err
	}
	ctx := context.Background()
	if err := g.srv.CreateBucket(ctx, "bench"); err != nil {
		return g, err
	}
	mc, err := g.srv.Client()
	if err != nil {
		return g, err
	}
	for name, b := range files {
		if _, err := mc.PutObject(ctx, "bench", "ds/"+name, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
			return g, fmt.Errorf("put %s: %w", name, err)
		}
	}
	lis, err := g.lab.listenHub()
	if err != nil {
		return g, err
	}
	g.px = storemodel.Serve(lis, g.srv.Addr, storeLatency, storeBandwidth)
	loc := s3store.Location{Bucket: "bench", Prefix: "ds", Endpoint: "http://" + g.px.Addr, Region: "us-east-1", Addressing: "path"}
	g.req = api.MountRequest{Holder: "bench", Dataset: "research", Source: loc.String(), ReadOnly: true, MetaCache: time.Hour,
		Secrets: g.srv.Secrets(), CacheGroup: "bench"}
	g.tlsDir = filepath.Join(dir, "tls")
	if err := os.MkdirAll(g.tlsDir, 0o700); err != nil {
		return g, err
	}
	ca, crt, key, err := group.NewPKI("bench")
	if err != nil {
		return g, err
	}
	for name, b := range map[string][]byte{"ca.crt": ca, "tls.crt": crt, "tls.key": key} {
		if err := os.WriteFile(filepath.Join(g.tlsDir, name), b, 0o600); err != nil {
			return g, err
		}
	}
	g.list = filepath.Join(dir, "members")
	return g, g.writeMembers()
}

// writeMembers writes the members file (atomically: a daemon rereading it
// never sees half of it).
func (g *netGroup) writeMembers() error {
	var b strings.Builder
	for _, i := range g.listed {
		fmt.Fprintf(&b, "%s=%s:7480\n", memberID(i), g.lab.addr(i))
	}
	tmp := g.list + ".new"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, g.list)
}

// setListed makes the members file list is.
func (g *netGroup) setListed(is ...int) error {
	g.listed = slices.Clone(is)
	return g.writeMembers()
}

// start starts member i's daemon in its namespace and mounts the dataset
// (it is listed with setListed).
func (g *netGroup) start(i int) (*daemonProc, error) {
	if _, ok := g.lab.nodes[i]; !ok {
		if err := g.lab.addNode(i); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(g.dir, memberID(i))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "cache.sock")
	args := []string{"--socket=" + sock, "--state-dir=" + filepath.Join(dir, "state"),
		fmt.Sprintf("--cache-tiers=disk:%s:%d", filepath.Join(dir, "cache"), g.quota),
		fmt.Sprint("--block-size=", g.block), "--grace=0s"}
	req := g.req
	if g.independent {
		req.CacheGroup = ""
	} else {
		args = append(args, "--group=bench", "--group-listen="+g.lab.addr(i)+":7480", "--group-id="+memberID(i),
			"--group-tls-dir="+g.tlsDir, "--group-members=@"+g.list, "--group-peer-deadline="+peerDeadline.String())
	}
	cmd := g.lab.nsenter(i, filepath.Join(g.binDir, "cistern-cache"), args...)
	log, err := os.OpenFile(filepath.Join(dir, "cistern-cache.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemonProc{i: i, cmd: cmd, cl: api.NewClient(sock), exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(d.exited) }()
	g.members[i] = d
	ctx := context.Background()
	for deadline := time.Now().Add(15 * time.Second); d.cl.Health(ctx) != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not answer within 15s (log: %s)", d.id(), log.Name())
		}
	}
	resp, err := d.cl.Mount(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("%s: mount: %w", d.id(), err)
	}
	d.mnt = resp.MountPath
	return d, nil
}

// settle waits until every member in ids lists exactly ids as the
// members, each serving the dataset.
func (g *netGroup) settle(ids ...int) error {
	want := make([]string, 0, len(ids))
	for _, i := range ids {
		want = append(want, memberID(i))
	}
	slices.Sort(want)
	var last string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ok := true
		for _, i := range ids {
			st, err := g.members[i].cl.Stats(context.Background())
			if err != nil || st.Group == nil {
				ok, last = false, fmt.Sprintf("%s: stats: %v", memberID(i), err)
				break
			}
			got := slices.Sorted(slices.Values(st.Group.Members))
			serving := 0
			for _, id := range want {
				if len(st.Group.Serving[id]) > 0 {
					serving++
				}
			}
			if !slices.Equal(got, want) || serving != len(want) {
				ok, last = false, fmt.Sprintf("%s sees members %v, %d of them serving the dataset", memberID(i), got, serving)
				break
			}
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("the group did not settle on %v within 30s: %s", want, last)
}

// stop ends member i's daemon: SIGTERM (it unmounts), or SIGKILL (its
// mount is left behind, detached later by close).
func (g *netGroup) stop(i int, kill bool) {
	d := g.members[i]
	if d == nil {
		return
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	delete(g.members, i)
}

// stats returns member i's stats (zero ones if it does not answer).
func (g *netGroup) stats(i int) api.StatsResponse {
	st, _ := g.members[i].cl.Stats(context.Background())
	return st
}

// peerIn is the bytes member i took from its peers (0 if it does not
// answer).
func (g *netGroup) peerIn(i int) int64 {
	if st := g.stats(i); st.Group != nil {
		return st.Group.PeerBytesIn
	}
	return 0
}

// close stops every daemon, detaches what they left mounted, and removes
// the lab and the store.
func (g *netGroup) close() {
	liveGroups.Delete(g)
	for i := range g.members {
		_ = g.members[i].cmd.Process.Signal(syscall.SIGCONT) // a stopped one cannot exit
		g.stop(i, false)
	}
	host.UnmountUnder(g.dir)
	if g.px != nil {
		g.px.Close()
	}
	if g.srv != nil {
		_ = g.srv.Stop()
	}
	if g.lab != nil {
		g.lab.close()
	}
}
