package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/driver"
	"github.com/cistern-csi/cistern/pkg/mounter"
)

// stage does what the kubelet does before the first pod: NodeStageVolume.
func (d *demo) stage(ctx context.Context, v *csi.Volume, mode csi.VolumeCapability_AccessMode_Mode) error {
	staging := filepath.Join(d.work, "kubelet", "staging", driver.NameHash(v.VolumeId))
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: capability(mode), VolumeContext: v.VolumeContext,
		Secrets: d.secrets(),
	}); err != nil {
		return fmt.Errorf("NodeStageVolume %s: %w", v.VolumeId, err)
	}
	d.staged[v.VolumeId] = staging
	d.contexts[v.VolumeId] = v.VolumeContext
	d.modes[v.VolumeId] = mode
	return nil
}

// publish does what the kubelet does for each pod: NodePublishVolume.
func (d *demo) publish(ctx context.Context, ns, pod, pvc string) error {
	id := d.volumes[ns+"/"+pvc]
	target := filepath.Join(d.work, "kubelet", "pods", ns+"-"+pod, "volumes", pvc)
	mode := d.modes[id]
	start := time.Now()
	if _, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: d.staged[id], TargetPath: target,
		VolumeCapability: capability(mode), VolumeContext: d.contexts[id],
	}); err != nil {
		return fmt.Errorf("NodePublishVolume %s/%s %s: %w", ns, pod, pvc, err)
	}
	d.publishD = append(d.publishD, time.Since(start))
	d.pubs = append(d.pubs, podVolume{ns: ns, pod: pod, name: pvc, volumeID: id, target: target, readOnly: mode == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY})
	return nil
}

// publishInline publishes an ephemeral inline volume of the shared dataset.
func (d *demo) publishInline(ctx context.Context, ns, pod string) error {
	target := filepath.Join(d.work, "kubelet", "pods", ns+"-"+pod, "volumes", "public")
	id := "csi-inline-" + ns + "-" + pod
	attrs := d.sourceParams("public", map[string]string{
		"dataset": "public", "shared": "true",
		driver.MetaEphemeral: "true", driver.MetaPodNamespace: ns, "csi.storage.k8s.io/pod.name": pod,
	})
	d.say("-- inline volume for %s/%s: %v", ns, pod, attrs)
	if _, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: id, TargetPath: target, VolumeContext: attrs, Secrets: d.secrets(),
		VolumeCapability: capability(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY),
	}); err != nil {
		return fmt.Errorf("NodePublishVolume inline %s/%s: %w", ns, pod, err)
	}
	d.pubs = append(d.pubs, podVolume{ns: ns, pod: pod, name: "public", volumeID: id, target: target, readOnly: true})
	return nil
}

// checkIsolation shows what the platform promises: a namespace sees only its
// own data, pods of one PVC share it, read-only datasets refuse writes.
func (d *demo) checkIsolation() ([]check, error) {
	var checks []check
	d.say("\n-- isolation")
	view := d.view
	for _, ns := range namespaces {
		foreign := 0
		err := filepath.WalkDir(view(ns, "pod-1", "research"), func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			first, err := firstLine(p)
			if err != nil {
				return err
			}
			if !strings.Contains(first, "namespace="+ns) {
				foreign++
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		d.say("   %s/pod-1 research: %d files of another namespace visible", ns, foreign)
		checks = append(checks, check{fmt.Sprintf("%s sees only its own research files", ns), foreign == 0})
	}

	// A writes a feature file; A's other pod sees it, B's pods do not.
	sig := filepath.Join(view("quant-a", "pod-1", "features"), "signals.csv")
	if err := os.WriteFile(sig, []byte("symbol,signal\nAAPL,0.42\n"), 0o644); err != nil {
		return nil, fmt.Errorf("write a feature file: %w", err)
	}
	_, errSame := os.Stat(filepath.Join(view("quant-a", "pod-2", "features"), "signals.csv"))
	_, errOther := os.Stat(filepath.Join(view("quant-b", "pod-1", "features"), "signals.csv"))
	d.say("   quant-a/pod-1 wrote features/signals.csv: quant-a/pod-2 sees it: %t; quant-b/pod-1 sees it: %t", errSame == nil, errOther == nil)
	checks = append(checks,
		check{"pods of one PVC share its read-write directory", errSame == nil},
		check{"quant-b cannot see quant-a's features", errors.Is(errOther, fs.ErrNotExist)})

	for _, vol := range []struct{ ns, pod, name string }{{"quant-a", "pod-1", "research"}, {"quant-b", "pod-2", "public"}} {
		err := os.WriteFile(filepath.Join(view(vol.ns, vol.pod, vol.name), "oops.txt"), []byte("x"), 0o644)
		d.say("   %s/%s write into read-only %s: %v", vol.ns, vol.pod, vol.name, err)
		checks = append(checks, check{fmt.Sprintf("a write to read-only %s fails with EROFS", vol.name), errors.Is(err, syscall.EROFS)})
	}
	return checks, nil
}

// indent prefixes every line written through it, for nested output.
type indent struct {
	w       io.Writer
	midLine bool
}

func (i *indent) Write(p []byte) (int, error) {
	var b strings.Builder
	for _, c := range p {
		if !i.midLine && c != '\n' {
			b.WriteString("   ")
		}
		b.WriteByte(c)
		i.midLine = c != '\n' && c != '\r'
	}
	if _, err := io.WriteString(i.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// view returns where pod ns/pod sees volume vol.
func (d *demo) view(ns, pod, vol string) string {
	for _, p := range d.pubs {
		if p.ns == ns && p.pod == pod && p.name == vol {
			return p.target
		}
	}
	return ""
}

// cachePasses reads one namespace's research data three times: cold (from
// the source through the daemon), warm (the kernel's page cache of the one
// FUSE mount, shared by every pod on the node), and from the node cache
// after the page cache was dropped.
func (d *demo) cachePasses(ctx context.Context) ([]check, error) {
	d.say("\n-- the node cache")
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return nil, err
	}
	mnts := 0
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[2] == "fuse.cistern" && strings.HasPrefix(f[1], filepath.Join(d.work, "cache-state", "datasets")+"/") {
			mnts++
		}
	}
	st, err := d.cache.Stats(ctx)
	if err != nil {
		return nil, err
	}
	d.say("   FUSE mounts of the cache daemon: %d, for %d datasets and %d volumes (research is mounted once for both namespaces)", mnts, len(st.Datasets), len(d.staged)+1)
	checks := []check{{"one FUSE mount per dataset, however many volumes use it", mnts == 3 && len(st.Datasets) == 3}}

	type pass struct {
		name, pod string
		drop      bool
	}
	d.say("   %-34s %7s %8s %11s %10s %13s", "pass", "MiB", "MiB/s", "source MiB", "hit ratio", "daemon READs")
	var warmSource float64
	for _, p := range []pass{{"cold (source -> cache)", "pod-1", false}, {"warm (page cache, another pod)", "pod-2", false}, {"node cache (page cache dropped)", "pod-1", true}} {
		dir := d.view("quant-a", p.pod, "research")
		if p.drop {
			if err := dropPageCache(dir); err != nil {
				return nil, err
			}
		}
		before, err := d.cache.Stats(ctx)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		n, err := readTree(dir)
		if err != nil {
			return nil, err
		}
		el := time.Since(start)
		// Files read from the source's own file (passthrough) are
		// cached after close: wait for that, so the pass's source
		// bytes count it. A fill may begin a moment after the close:
		// done is no fill running and the source bytes still for
		// 200 ms (waiting on the running fills alone once let one
		// start after the check and count in the next pass).
		after, err := d.cache.Stats(ctx)
		for deadline, still := time.Now().Add(30*time.Second), time.Now(); err == nil && time.Now().Before(deadline); {
			if after.Cache.Filling == 0 && time.Since(still) >= 200*time.Millisecond {
				break
			}
			time.Sleep(10 * time.Millisecond)
			prev := after.Cache.SourceBytes
			if after, err = d.cache.Stats(ctx); err == nil && (after.Cache.SourceBytes != prev || after.Cache.Filling > 0) {
				still = time.Now()
			}
		}
		if err != nil {
			return nil, err
		}
		hits := after.Cache.Hits - before.Cache.Hits
		misses := after.Cache.Misses - before.Cache.Misses
		ratio := "-"
		if hits+misses > 0 {
			ratio = fmt.Sprintf("%.2f", float64(hits)/float64(hits+misses))
		}
		var reads int64
		for i, ds := range after.Datasets {
			if i < len(before.Datasets) && before.Datasets[i].Key == ds.Key {
				reads += ds.Reads - before.Datasets[i].Reads
			}
		}
		src := float64(after.Cache.SourceBytes-before.Cache.SourceBytes) / (1 << 20)
		if p.pod == "pod-2" || p.drop {
			warmSource += src
		}
		d.say("   %-34s %7.1f %8.0f %11.1f %10s %13d", p.name, float64(n)/(1<<20), float64(n)/(1<<20)/el.Seconds(), src, ratio, reads)
	}
	d.say("   (complete files are handed to the kernel with FUSE passthrough: their reads never reach the daemon)")
	checks = append(checks, check{"warm passes read nothing from the source", warmSource == 0})

	// Warm quant-b's tree ahead of its pods, as `cistern warmup` would.
	d.say("\n   $ cistern warmup --dataset research quant-b")
	sock := filepath.Join(d.work, "cache.sock")
	if err := runWarmup(ctx, []string{"--socket", sock, "--dataset", "research", "quant-b"}, &indent{w: d.out}); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	before, err := d.cache.Stats(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := readTree(d.view("quant-b", "pod-1", "research")); err != nil {
		return nil, err
	}
	after, err := d.cache.Stats(ctx)
	if err != nil {
		return nil, err
	}
	d.say("   quant-b/pod-1 first read after the warm-up: %d bytes from the source", after.Cache.SourceBytes-before.Cache.SourceBytes)
	checks = append(checks, check{"after cistern warmup, a namespace's first read comes from the cache", after.Cache.SourceBytes == before.Cache.SourceBytes})
	d.say("\n   $ cistern stats")
	if err := runStats(ctx, []string{"--socket", sock}, &indent{w: d.out}); err != nil {
		return nil, err
	}
	return checks, nil
}

// eachFile opens every regular file under dir and calls fn with it.
func eachFile(dir string, fn func(f *os.File) error) error {
	return filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return fn(f)
	})
}

// readTree reads every file under dir and returns the bytes read.
func readTree(dir string) (int64, error) {
	var total int64
	buf := make([]byte, 1<<20)
	err := eachFile(dir, func(f *os.File) error {
		n, err := io.CopyBuffer(io.Discard, f, buf)
		total += n
		return err
	})
	return total, err
}

// dropPageCache drops the kernel's cached pages of every file under dir.
func dropPageCache(dir string) error {
	return eachFile(dir, func(f *os.File) error { return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED) })
}

// teardownVolumes unpublishes, unstages and deletes, as the kubelet and the
// provisioner would when the pods and PVCs go away.
func (d *demo) teardownVolumes(ctx context.Context) error {
	for len(d.pubs) > 0 {
		p := d.pubs[len(d.pubs)-1]
		if _, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: p.volumeID, TargetPath: p.target}); err != nil {
			return fmt.Errorf("NodeUnpublishVolume %s: %w", p.target, err)
		}
		d.pubs = d.pubs[:len(d.pubs)-1]
	}
	for id, staging := range d.staged {
		if _, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			return fmt.Errorf("NodeUnstageVolume %s: %w", id, err)
		}
		delete(d.staged, id)
	}
	for key, id := range d.volumes {
		if _, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: d.secrets()}); err != nil {
			return fmt.Errorf("DeleteVolume %s: %w", key, err)
		}
		delete(d.volumes, key)
	}
	d.say("   all volumes unpublished, unstaged and deleted")
	return nil
}

// teardown runs last, also after a failure or Ctrl-C: it unmounts whatever
// is still mounted under the work directory and stops the driver.
func (d *demo) teardown() error {
	var errs []error
	if d.node != nil && (len(d.pubs) > 0 || len(d.staged) > 0) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		errs = append(errs, d.teardownVolumes(ctx))
		cancel()
	}
	errs = append(errs, d.stopDriver())
	if d.store != nil {
		errs = append(errs, d.store.srv.Stop())
	}
	m := mounter.New()
	refs, err := mounter.MountRefs(m, d.work)
	errs = append(errs, err)
	for _, r := range refs {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		errs = append(errs, mounter.Cleanup(ctx, m, r, 5*time.Second))
		cancel()
	}
	return errors.Join(errs...)
}

// stopDriver stops the driver, then the cache daemon (which unmounts its
// datasets and the memory tier).
func (d *demo) stopDriver() error {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	var errs []error
	for _, p := range []**proc{&d.csiProc, &d.cacheProc} {
		if *p == nil {
			continue
		}
		err := (*p).stop()
		if err == nil {
			d.say("-- %s (pid %d) stopped", (*p).name, (*p).cmd.Process.Pid)
		}
		errs = append(errs, err)
		*p = nil
	}
	return errors.Join(errs...)
}

// leftoverMounts lists mount table lines that mention cistern or the work
// directory, but for those in except (the lines there before the demo: a
// crashed test's mounts are not the demo's to answer for).
func leftoverMounts(work string, except []string) ([]string, error) {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return nil, err
	}
	var left []string
	for _, l := range strings.Split(string(b), "\n") {
		if (strings.Contains(l, "cistern") || strings.Contains(l, work)) && !slices.Contains(except, l) {
			left = append(left, l)
		}
	}
	return left, nil
}

// generateDatasets writes the demo's datasets: research holds daily price
// files per namespace, public holds shared reference data, features starts
// empty. Content is seeded, so every run is the same.
func generateDatasets(research, features, public string) (files int, bytes int64, err error) {
	rng := rand.New(rand.NewPCG(2026, 11))
	symbols := []string{"AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "BRK", "JPM", "V"}
	write := func(p, content string) error {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		files++
		bytes += int64(len(content))
		return os.WriteFile(p, []byte(content), 0o644)
	}
	for i, ns := range namespaces {
		// One larger file per namespace, so throughput means something.
		ticks := make([]byte, 48<<20)
		r := rand.New(rand.NewPCG(uint64(i), 7))
		for j := 0; j+8 <= len(ticks); j += 8 {
			v := r.Uint64()
			for k := range 8 {
				ticks[j+k] = byte(v >> (8 * k))
			}
		}
		header := fmt.Sprintf("# namespace=%s ticks\n", ns)
		if err := write(filepath.Join(research, ns, "ticks", "ticks.bin"), header+string(ticks)); err != nil {
			return 0, 0, err
		}
		for day := 1; day <= 15; day++ {
			for _, sym := range symbols {
				var b strings.Builder
				fmt.Fprintf(&b, "# namespace=%s symbol=%s day=2026-11-%02d\nminute,price,volume\n", ns, sym, day)
				price := 100 + rng.Float64()*400
				for minute := 0; minute < 30; minute++ {
					price *= 1 + (rng.Float64()-0.5)/100
					fmt.Fprintf(&b, "%d,%.2f,%d\n", minute, price, rng.IntN(10000))
				}
				p := filepath.Join(research, ns, "prices", fmt.Sprintf("2026-11-%02d", day), sym+".csv")
				if err := write(p, b.String()); err != nil {
					return 0, 0, err
				}
			}
		}
	}
	for _, sym := range symbols {
		if err := write(filepath.Join(public, "reference", "symbols", sym+".txt"), fmt.Sprintf("# namespace=public\n%s listed\n", sym)); err != nil {
			return 0, 0, err
		}
	}
	if err := write(filepath.Join(public, "reference", "calendar.csv"), "# namespace=public\nday,open\n2026-11-27,true\n"); err != nil {
		return 0, 0, err
	}
	return files, bytes, os.MkdirAll(features, 0o755)
}

func countFiles(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			n++
		}
		return err
	})
	return n, err
}

func firstLine(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	return sc.Text(), sc.Err()
}
