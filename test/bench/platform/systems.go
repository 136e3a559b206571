package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/test/bench/host"
)

// system is one way pods read the dataset.
type system struct {
	name string
	acc  access
	// cold empties the system's caches (nil: nothing to empty).
	cold func(ctx context.Context) error
	// skip says why the system cannot run here ("" = it runs).
	skip string
	// pid is the process serving the system's mount now (nil: none, the
	// readers do all the work).
	pid func() int
}

// phases are the runs of a step: cold then warm for a system with a
// cache, one run for the others.
func (s *system) phases() []string {
	if s.cold != nil {
		return []string{"cold", "warm"}
	}
	return []string{""}
}

// makeCold drops the kernel's caches and empties the system's own.
func (s *system) makeCold(ctx context.Context) error {
	if err := host.DropCaches(); err != nil {
		return err
	}
	if err := s.cold(ctx); err != nil {
		return fmt.Errorf("%s: empty the cache: %w", s.name, err)
	}
	return nil
}

// procs tracks every process the bench starts, to stop them by PID.
type procs struct {
	list []*exec.Cmd
}

// start runs bin with args, output to log; Pdeathsig kills it with us.
func (p *procs) start(log, bin string, env []string, args ...string) (*exec.Cmd, error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p.list = append(p.list, cmd)
	return cmd, nil
}

// stop sends SIGTERM and waits up to 10 s, then kills.
func stop(cmd *exec.Cmd) { host.Stop(cmd, 10*time.Second) }

func (p *procs) stopAll() {
	for i := len(p.list) - 1; i >= 0; i-- {
		stop(p.list[i])
	}
	p.list = nil
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, what string, cond func() bool) error {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s", what, d)
		}
	}
	return nil
}

func isMounted(dir, fstype string) bool {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[1] == dir && strings.HasPrefix(f[2], fstype) {
			return true
		}
	}
	return false
}

// store is where the dataset lives, as the peers need to be told.
type store struct {
	endpoint string // the proxy: http://127.0.0.1:PORT
	bucket   string
	prefix   string
	ak, sk   string
}

// cisternStack is cistern-cache and cistern-csi as processes, a volume of
// the dataset staged and published through the real CSI socket.
type cisternStack struct {
	work    string
	procs   *procs
	cacheP  *exec.Cmd
	csiP    *exec.Cmd
	conn    *grpc.ClientConn
	node    csi.NodeClient
	ctrl    csi.ControllerClient
	cache   *api.Client
	st      store
	vol     *csi.Volume
	staging string
	target  string
}

// pid is cistern-cache's (the process that serves the mounts).
func (c *cisternStack) pid() int {
	if c.cacheP == nil || c.cacheP.Process == nil {
		return 0
	}
	return c.cacheP.Process.Pid
}

// cpu is the CPU time of the system's serving process (-1: none).
func (s *system) cpu() float64 {
	if s.pid == nil {
		return -1
	}
	return host.CPUSeconds(s.pid())
}

var roCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY},
}

func (c *cisternStack) secrets() map[string]string {
	return map[string]string{"access-key": c.st.ak, "secret-key": c.st.sk}
}

// startCistern starts both processes and provisions a read-only volume of
// the whole dataset.
func startCistern(ctx context.Context, work, binDir string, keeper bool, p *procs, st store, cacheSize int64) (*cisternStack, error) {
	c := &cisternStack{work: work, procs: p, st: st}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	cacheSock, csiSock := filepath.Join(work, "cache.sock"), filepath.Join(work, "csi.sock")
	args := []string{"--socket=" + cacheSock, "--state-dir=" + filepath.Join(work, "cache-state"),
		fmt.Sprintf("--cache-tiers=disk:%s:%d", filepath.Join(work, "cache-state", "cache"), cacheSize),
		"--grace=0s", "--v=1"}
	if keeper {
		keeperSock := filepath.Join(work, "keeper.sock")
		if _, err := p.start(filepath.Join(work, "cistern-keeper.log"), filepath.Join(binDir, "cistern"), os.Environ(),
			"keeper", "--socket="+keeperSock); err != nil {
			return nil, err
		}
		if err := waitFor(15*time.Second, "keeper socket", func() bool { _, err := os.Stat(keeperSock); return err == nil }); err != nil {
			return nil, err
		}
		args = append(args, "--keeper-socket="+keeperSock)
	}
	var err error
	c.cacheP, err = p.start(filepath.Join(work, "cistern-cache.log"), filepath.Join(binDir, "cistern-cache"), os.Environ(), args...)
	if err != nil {
		return nil, err
	}
	if err := waitFor(15*time.Second, "cistern-cache socket", func() bool { _, err := os.Stat(cacheSock); return err == nil }); err != nil {
		return nil, err
	}
	c.csiP, err = p.start(filepath.Join(work, "cistern-csi.log"), filepath.Join(binDir, "cistern-csi"), os.Environ(),
		"--mode=all", "--endpoint=unix://"+csiSock, "--node-id=bench-node", "--cache-socket="+cacheSock,
		"--state-dir="+filepath.Join(work, "csi-state"), "--v=1")
	if err != nil {
		return nil, err
	}
	if err := waitFor(15*time.Second, "cistern-csi socket", func() bool { _, err := os.Stat(csiSock); return err == nil }); err != nil {
		return nil, err
	}
	if c.conn, err = grpc.NewClient("unix://"+csiSock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return nil, err
	}
	c.node, c.ctrl, c.cache = csi.NewNodeClient(c.conn), csi.NewControllerClient(c.conn), api.NewClient(cacheSock)
	resp, err := c.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "bench-dataset", VolumeCapabilities: []*csi.VolumeCapability{roCap}, Secrets: c.secrets(),
		Parameters: map[string]string{
			"dataset": "bench", "source": "s3://" + st.bucket + "/" + st.prefix, "endpoint": st.endpoint,
			"region": "us-east-1", "addressing": "path", "access": "read-only", "shared": "true",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("CreateVolume: %w", err)
	}
	c.vol = resp.Volume
	c.staging, c.target = filepath.Join(work, "staging"), filepath.Join(work, "pod")
	return c, c.stageAndPublish(ctx)
}

func (c *cisternStack) stageAndPublish(ctx context.Context) error {
	if _, err := c.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: c.vol.VolumeId, StagingTargetPath: c.staging,
		VolumeCapability: roCap, VolumeContext: c.vol.VolumeContext, Secrets: c.secrets()}); err != nil {
		return fmt.Errorf("NodeStageVolume: %w", err)
	}
	return c.publish(ctx, c.target)
}

func (c *cisternStack) publish(ctx context.Context, target string) error {
	_, err := c.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: c.vol.VolumeId, StagingTargetPath: c.staging,
		TargetPath: target, VolumeCapability: roCap, VolumeContext: c.vol.VolumeContext, Readonly: true})
	if err != nil {
		return fmt.Errorf("NodePublishVolume %s: %w", target, err)
	}
	return nil
}

func (c *cisternStack) unpublish(ctx context.Context, target string) error {
	_, err := c.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: c.vol.VolumeId, TargetPath: target})
	return err
}

// cold empties the node cache and remounts the dataset (so listings are
// forgotten too): evict every file, unpublish, unstage (the daemon unmounts
// with no grace period), stage and publish again.
func (c *cisternStack) cold(ctx context.Context) error {
	st, err := c.cache.Stats(ctx)
	if err != nil {
		return err
	}
	for _, d := range st.Datasets {
		if _, err := c.cache.Evict(ctx, d.Key, ""); err != nil {
			return fmt.Errorf("evict: %w", err)
		}
	}
	if err := c.unpublish(ctx, c.target); err != nil {
		return err
	}
	if _, err := c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: c.vol.VolumeId, StagingTargetPath: c.staging}); err != nil {
		return err
	}
	// The release is asynchronous (a zero grace period): wait until the
	// dataset is gone.
	if err := waitFor(10*time.Second, "dataset release", func() bool {
		st, err := c.cache.Stats(ctx)
		return err == nil && len(st.Datasets) == 0
	}); err != nil {
		return err
	}
	return c.stageAndPublish(ctx)
}

// close unpublishes, unstages, deletes and stops both processes.
func (c *cisternStack) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if c.node != nil && c.vol != nil {
		errs = append(errs, c.unpublish(ctx, c.target))
		_, err := c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: c.vol.VolumeId, StagingTargetPath: c.staging})
		errs = append(errs, err)
		_, err = c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: c.vol.VolumeId, Secrets: c.secrets()})
		errs = append(errs, err)
	}
	if c.conn != nil {
		c.conn.Close()
	}
	stop(c.csiP)
	stop(c.cacheP)
	return errors.Join(errs...)
}

// fuseMount is one peer FUSE mount (rclone or s3fs) run as a process.
type fuseMount struct {
	kind   string // rclone or s3fs
	dir    string
	cache  string
	log    string
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been reaped
	start  func() (*exec.Cmd, error)
}

// peerEnv is the environment of a peer: this machine exports
// AWS_CA_BUNDLE, which rclone refuses to start with.
func peerEnv(extra ...string) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "AWS_") && !strings.HasPrefix(e, "RCLONE_") {
			env = append(env, e)
		}
	}
	return append(env, extra...)
}

// newRclone prepares `rclone mount --vfs-cache-mode full` of the dataset.
func newRclone(p *procs, st store, dir, cacheDir, log string) *fuseMount {
	m := &fuseMount{kind: "rclone", dir: dir, cache: cacheDir, log: log}
	env := peerEnv("RCLONE_CONFIG_BENCH_TYPE=s3", "RCLONE_CONFIG_BENCH_PROVIDER=Other",
		"RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="+st.ak, "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="+st.sk,
		"RCLONE_CONFIG_BENCH_ENDPOINT="+st.endpoint, "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true",
		"RCLONE_CONFIG_BENCH_REGION=us-east-1")
	m.start = func() (*exec.Cmd, error) {
		return p.start(log, "rclone", env, "mount", "bench:"+st.bucket+"/"+st.prefix, dir,
			"--vfs-cache-mode", "full", "--cache-dir", cacheDir, "--read-only", "--dir-cache-time", "1h")
	}
	return m
}

// newS3fs prepares an s3fs-fuse mount with use_cache.
func newS3fs(p *procs, st store, dir, cacheDir, log, passwd string) *fuseMount {
	m := &fuseMount{kind: "s3fs", dir: dir, cache: cacheDir, log: log}
	m.start = func() (*exec.Cmd, error) {
		return p.start(log, "s3fs", peerEnv(), st.bucket+":/"+st.prefix, dir, "-f",
			"-o", "url="+st.endpoint+",use_path_request_style,passwd_file="+passwd+",use_cache="+cacheDir+",ro,endpoint=us-east-1")
	}
	return m
}

// up starts the mount and waits for it.
// pid is the mount's process now (0 when it is down).
func (m *fuseMount) pid() int {
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

func (m *fuseMount) up() error {
	for _, d := range []string{m.dir, m.cache} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var err error
	if m.cmd, err = m.start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	m.exited = exited
	cmd := m.cmd
	go func() { _ = cmd.Wait(); close(exited) }()
	died := false
	err = waitFor(30*time.Second, m.kind+" mount at "+m.dir, func() bool {
		select {
		case <-exited:
			died = true
			return true
		default:
		}
		return isMounted(m.dir, "fuse")
	})
	if died {
		b, _ := os.ReadFile(m.log)
		return fmt.Errorf("%s exited before mounting: %s", m.kind, tail(string(b), 600))
	}
	return err
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// down stops the process and unmounts.
func (m *fuseMount) down() {
	if m.cmd != nil && m.cmd.Process != nil {
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.exited:
		case <-time.After(10 * time.Second):
			_ = m.cmd.Process.Kill()
			<-m.exited
		}
	}
	if isMounted(m.dir, "fuse") {
		_ = syscall.Unmount(m.dir, syscall.MNT_DETACH)
	}
	m.cmd = nil
}

// cold restarts the mount with an empty cache directory.
func (m *fuseMount) cold(context.Context) error {
	m.down()
	if err := os.RemoveAll(m.cache); err != nil {
		return err
	}
	return m.up()
}

// available reports why a peer binary cannot run, or "".
func available(bin string) string {
	if _, err := exec.LookPath(bin); err != nil {
		return bin + " is not installed (hack/install-deps.sh installs it)"
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "/dev/fuse is missing"
	}
	return ""
}
