package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/driver"
)

type demoOptions struct {
	WorkDir   string
	CSIBinary string
	Keep      bool
	Source    string // file or s3
}

func (o *demoOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.WorkDir, "work-dir", "", "directory for the dataset, sockets and mounts (default: a new temporary directory)")
	fs.StringVar(&o.CSIBinary, "csi-binary", "", "path of cistern-csi (default: next to this binary)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the work directory (datasets and driver log) at the end")
	fs.StringVar(&o.Source, "source", "file", "where the datasets live: file (local directories) or s3 (a local S3 server, versitygw)")
}

func (o *demoOptions) Validate() error {
	if o.Source != "file" && o.Source != "s3" {
		return fmt.Errorf("--source %q: want file or s3", o.Source)
	}
	if os.Geteuid() != 0 {
		return errors.New("the demo makes real bind mounts and needs root (run: sudo make demo)")
	}
	if o.CSIBinary == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find cistern-csi: %w", err)
		}
		o.CSIBinary = filepath.Join(filepath.Dir(self), "cistern-csi")
	}
	if _, err := os.Stat(o.CSIBinary); err != nil {
		return fmt.Errorf("--csi-binary: %w (build it with make build)", err)
	}
	return nil
}

var namespaces = []string{"quant-a", "quant-b"}

// podVolume is one published volume of one pod.
type podVolume struct {
	ns, pod, name string
	volumeID      string
	target        string
	readOnly      bool
}

type demo struct {
	out       io.Writer
	work      string
	csiProc   *proc
	cacheProc *proc
	cache     *api.Client
	conn      *grpc.ClientConn
	ctrl      csi.ControllerClient
	node      csi.NodeClient
	staged    map[string]string // volume ID -> staging path
	contexts  map[string]map[string]string
	modes     map[string]csi.VolumeCapability_AccessMode_Mode
	pubs      []podVolume
	volumes   map[string]string // "ns/pvc" -> volume ID
	publishD  []time.Duration
	store     *demoStore // the S3 server, with --source=s3
	dirs      map[string]string
	mounts0   []string // cistern's lines of the mount table before the demo (another run's, not this one's)
}

func (d *demo) say(format string, a ...any) { fmt.Fprintf(d.out, format+"\n", a...) }

func runDemo(ctx context.Context, o demoOptions, out io.Writer) (err error) {
	start := time.Now()
	d := &demo{out: out, dirs: map[string]string{}, staged: map[string]string{}, volumes: map[string]string{}, contexts: map[string]map[string]string{}, modes: map[string]csi.VolumeCapability_AccessMode_Mode{}}
	d.work = o.WorkDir
	if d.work == "" {
		if d.work, err = os.MkdirTemp("", "cistern-demo-"); err != nil {
			return err
		}
	}
	if d.work, err = filepath.Abs(d.work); err != nil {
		return err
	}
	if d.mounts0, err = leftoverMounts(d.work, nil); err != nil {
		return err
	}
	if len(d.mounts0) > 0 {
		d.say("note: %d cistern mounts were there before the demo (another run's); the last check leaves them out", len(d.mounts0))
	}
	defer func() {
		// Whatever happened, leave nothing mounted and nothing running.
		if terr := d.teardown(); terr != nil && err == nil {
			err = terr
		}
		if !o.Keep && err == nil {
			os.RemoveAll(d.work)
		} else {
			d.say("work directory kept: %s (driver log: %s)", d.work, filepath.Join(d.work, "cistern-csi.log"))
		}
	}()

	d.say("== Cistern demo: %s", d.work)
	research := filepath.Join(d.work, "datasets", "research")
	features := filepath.Join(d.work, "datasets", "features")
	public := filepath.Join(d.work, "datasets", "public")
	n, size, err := generateDatasets(research, features, public)
	if err != nil {
		return fmt.Errorf("generate datasets: %w", err)
	}
	d.say("-- generated datasets: %d files, %d MiB (research: one tree per namespace; public: shared reference data)", n, size>>20)
	d.dirs = map[string]string{"research": research, "features": features, "public": public}
	if o.Source == "s3" {
		if d.store, err = startDemoStore(ctx, filepath.Join(d.work, "s3"), d.dirs); err != nil {
			return err
		}
		d.say("-- S3 server versitygw (pid %d) on %s: bucket %s, %d objects uploaded", d.store.srv.PID(), d.store.srv.Endpoint, demoBucket, d.store.uploaded)
	}

	if err := d.startDriver(ctx, o.CSIBinary); err != nil {
		return err
	}

	// The StorageClasses, as a platform team would write them.
	classes := map[string]map[string]string{
		"research-ro": d.sourceParams("research", map[string]string{"dataset": "research", "access": "read-only", "subPath": "${pvc.namespace}"}),
		"features-rw": d.sourceParams("features", map[string]string{"dataset": "features", "access": "read-write", "onDelete": "delete"}),
	}
	d.say("-- StorageClass research-ro: %v", classes["research-ro"])
	d.say("-- StorageClass features-rw: %v", classes["features-rw"])

	// The provisioner: one PVC of each class per namespace.
	for _, ns := range namespaces {
		for _, pvc := range []struct{ name, class string }{{"research", "research-ro"}, {"features", "features-rw"}} {
			params := map[string]string{}
			for k, v := range classes[pvc.class] {
				params[k] = v
			}
			params[driver.MetaPVCNamespace] = ns
			params[driver.MetaPVCName] = pvc.name
			mode := csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
			if pvc.class == "research-ro" {
				mode = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
			}
			resp, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
				Name:               fmt.Sprintf("pvc-%s-%s", ns, pvc.name),
				Parameters:         params,
				VolumeCapabilities: []*csi.VolumeCapability{capability(mode)},
				Secrets:            d.secrets(),
			})
			if err != nil {
				return fmt.Errorf("CreateVolume %s/%s: %w", ns, pvc.name, err)
			}
			d.volumes[ns+"/"+pvc.name] = resp.Volume.VolumeId
			d.say("   CreateVolume %-18s -> %s", ns+"/"+pvc.name, resp.Volume.VolumeId)
			if err := d.stage(ctx, resp.Volume, mode); err != nil {
				return err
			}
		}
	}

	// The kubelet: two pods per namespace, each with both PVCs.
	for _, ns := range namespaces {
		for _, pod := range []string{"pod-1", "pod-2"} {
			for _, pvc := range []string{"research", "features"} {
				if err := d.publish(ctx, ns, pod, pvc); err != nil {
					return err
				}
			}
		}
	}
	// One inline ephemeral volume of the shared public dataset.
	if err := d.publishInline(ctx, "quant-b", "pod-2"); err != nil {
		return err
	}

	d.say("\n-- what each pod sees")
	for _, p := range d.pubs {
		files, err := countFiles(p.target)
		if err != nil {
			return fmt.Errorf("%s/%s %s: %w", p.ns, p.pod, p.name, err)
		}
		top, _ := os.ReadDir(p.target)
		var names []string
		for _, e := range top {
			names = append(names, e.Name())
		}
		if len(names) > 5 {
			names = append(names[:5], "...")
		}
		mode := "rw"
		if p.readOnly {
			mode = "ro"
		}
		d.say("   %-7s %-5s %-8s %s %4d files  %v", p.ns, p.pod, p.name, mode, files, names)
	}

	nVolumes, nPublished := len(d.volumes), len(d.pubs)
	checks, err := d.cachePasses(ctx)
	if err != nil {
		return err
	}
	iso, err := d.checkIsolation()
	if err != nil {
		return err
	}
	checks = append(checks, iso...)

	d.say("\n-- teardown: unpublish, unstage, delete")
	if err := d.teardownVolumes(ctx); err != nil {
		return err
	}
	deleted, kept, err := d.afterDelete()
	if err != nil {
		return err
	}
	checks = append(checks,
		check{"features volume deleted with onDelete=delete", deleted},
		check{"research data retained (read-only dataset)", kept > 0})

	if err := d.stopDriver(); err != nil {
		return err
	}
	left, err := leftoverMounts(d.work, d.mounts0)
	if err != nil {
		return err
	}
	checks = append(checks, check{"no mount left behind (grep cistern /proc/mounts has nothing new)", len(left) == 0})

	slices.Sort(d.publishD)
	d.say("\n== Summary")
	d.say("   datasets (%s): research (read-only, per namespace), features (read-write, per PVC), public (shared, inline)", o.Source)
	d.say("   volumes: %d created, %d staged, %d published (one inline); NodePublishVolume p50 %s, max %s",
		nVolumes, nVolumes, nPublished, d.publishD[len(d.publishD)/2].Round(time.Microsecond), d.publishD[len(d.publishD)-1].Round(time.Microsecond))
	failed := 0
	for _, c := range checks {
		mark := "ok  "
		if !c.ok {
			mark = "FAIL"
			failed++
		}
		d.say("   [%s] %s", mark, c.what)
	}
	d.say("   %d checks, %d failed, in %s", len(checks), failed, time.Since(start).Round(time.Millisecond))
	if failed > 0 {
		return fmt.Errorf("%d checks failed", failed)
	}
	if len(left) > 0 {
		return fmt.Errorf("mounts left behind: %v", left)
	}
	return nil
}

type check struct {
	what string
	ok   bool
}

func capability(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func (d *demo) startDriver(ctx context.Context, csiBin string) error {
	cacheBin := filepath.Join(filepath.Dir(csiBin), "cistern-cache")
	cacheSock := filepath.Join(d.work, "cache.sock")
	// The public dataset is the node's shared inline source (read-only to
	// every namespace).
	inline := "shared:file://" + filepath.Join(d.work, "datasets", "public")
	if d.store != nil {
		inline = "shared:" + d.store.location("public").String()
	}
	var err error
	d.cacheProc, err = startProc(ctx, "cistern-cache", cacheBin, filepath.Join(d.work, "cistern-cache.log"), cacheSock,
		"--socket="+cacheSock, "--state-dir="+filepath.Join(d.work, "cache-state"),
		"--cache-tiers=mem:256Mi,disk:"+filepath.Join(d.work, "cache-state", "cache")+":2Gi",
		"--grace=0s", "--v=2", "--logtostderr")
	if err != nil {
		return err
	}
	d.say("-- started cistern-cache (pid %d): tiers mem 256Mi (tmpfs), disk 2Gi", d.cacheProc.cmd.Process.Pid)
	sock := filepath.Join(d.work, "csi.sock")
	d.csiProc, err = startProc(ctx, "cistern-csi", csiBin, filepath.Join(d.work, "cistern-csi.log"), sock,
		"--mode=all", "--endpoint=unix://"+sock, "--node-id=demo-node", "--cache-socket="+cacheSock,
		"--state-dir="+filepath.Join(d.work, "state"), "--inline-sources="+inline,
		"--v=2", "--logtostderr")
	if err != nil {
		return err
	}
	d.say("-- started cistern-csi --mode=all (pid %d) on unix://%s", d.csiProc.cmd.Process.Pid, sock)
	if d.conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return err
	}
	d.ctrl, d.node = csi.NewControllerClient(d.conn), csi.NewNodeClient(d.conn)
	d.cache = api.NewClient(cacheSock)
	info, err := csi.NewIdentityClient(d.conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		return fmt.Errorf("GetPluginInfo: %w", err)
	}
	d.say("-- driver %s %s is ready", info.Name, info.VendorVersion)
	return nil
}

// proc is a child process the demo started and stops, by PID.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan error
}

// startProc starts bin and waits until it opens sock.
func startProc(ctx context.Context, name, bin, logPath, sock string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	p := &proc{name: name, cmd: exec.Command(bin, args...), exited: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	for deadline := time.Now().Add(15 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			return p, nil
		}
		select {
		case err := <-p.exited:
			return nil, fmt.Errorf("%s exited early (%v); see %s", name, err, logPath)
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%s did not open %s within 15s", name, sock)
		}
	}
}

// stop sends SIGTERM, waits up to 10 s, then kills.
func (p *proc) stop() error {
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			return fmt.Errorf("%s (pid %d) exited with %v", p.name, p.cmd.Process.Pid, err)
		}
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for 10s and was killed", p.name, p.cmd.Process.Pid)
}
