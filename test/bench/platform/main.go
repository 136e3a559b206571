// Command platform is Cistern's research-platform benchmark: N concurrent
// readers ("pods") read a dataset on a remote object store (a real S3 server
// behind a latency and bandwidth model) directly, through Cistern, through
// rclone mount and through s3fs, and the same bytes from local disk. It
// writes docs/benchmarks.md and PNG plots. It needs root (FUSE mounts).
//
//	go run ./test/bench/platform            # the default, under 10 minutes here
//	go run ./test/bench/platform --full     # 20,000 small files, 4 x 1 GiB
//	go run ./test/bench/platform --smoke    # tiny, every system, about a minute
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/cistern-csi/cistern/pkg/mounter"
	"github.com/cistern-csi/cistern/test/bench/storemodel"
	"github.com/cistern-csi/cistern/test/s3server"
)

type config struct {
	full, smoke    bool
	latency        time.Duration
	bandwidth      int64 // bits per second
	smallFiles     int
	smallSize      int64
	largeFiles     int
	largeSize      int64
	perReaderFiles int
	perReaderBytes int64
	metaFiles      int // files of the metadata tree (find and stat)
	levels         []int
	volumes        int // memory: published volumes / rclone processes
	publishes      int
	rounds         int
	work, out      string
	binDir         string
	keep           bool
	keeper         bool            // the cache daemon hands its FUSE connections to a keeper, as the chart runs it
	only           map[string]bool // --systems: the systems to run (nil: all)
}

// wants reports whether the system name runs (--systems).
func (c config) wants(name string) bool { return c.only == nil || c.only[name] }

func main() {
	var c config
	var levels, only string
	flag.BoolVar(&c.full, "full", false, "the large run: 20,000 x 64 KiB and 4 x 1 GiB, 200 files or 128 MiB per reader, 100,000 files to find and stat")
	flag.BoolVar(&c.smoke, "smoke", false, "tiny sizes, every system (CI: the harness cannot rot); writes under _output")
	flag.DurationVar(&c.latency, "latency", 10*time.Millisecond, "latency the store model adds in each direction")
	flag.Int64Var(&c.bandwidth, "bandwidth", 1_000_000_000, "the store model's bandwidth per direction, bits/s (0: unlimited)")
	flag.StringVar(&levels, "readers", "1,10,50,100", "the concurrency sweep: readers (pods) per step")
	flag.StringVar(&c.out, "out", "", "where the report and plots go (default docs, or _output/bench-smoke with --smoke)")
	flag.StringVar(&c.work, "work-dir", "", "work directory (default: a new one under /var/tmp)")
	flag.StringVar(&c.binDir, "bin-dir", "bin", "where cistern-csi and cistern-cache are (make build)")
	flag.BoolVar(&c.keeper, "keeper", true, "run cistern-cache with a keeper (cistern keeper), as the chart does: mounts are served by FUSE sessions a restart can take over")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory (data, caches and the daemons' logs) at the end")
	flag.StringVar(&only, "systems", "", "run only these systems, comma-separated (direct, cistern, rclone, s3fs, native; default all): a partial report, for working on one system")
	flag.Parse()
	if only != "" {
		c.only = map[string]bool{}
		for _, n := range strings.Split(only, ",") {
			switch n = strings.TrimSpace(n); n {
			case "direct", "cistern", "rclone", "s3fs", "native":
				c.only[n] = true
			default:
				fmt.Fprintf(os.Stderr, "platform: --systems: unknown system %q (known: direct, cistern, rclone, s3fs, native)\n", n)
				os.Exit(2)
			}
		}
	}
	c.smallSize, c.largeFiles = 64<<10, 4
	switch {
	case c.smoke:
		c.smallFiles, c.largeSize, c.perReaderFiles, c.perReaderBytes, c.metaFiles = 40, 8<<20, 5, 2<<20, 200
		c.volumes, c.publishes, c.rounds = 4, 10, 1
		if !isFlagSet("readers") {
			levels = "1,4"
		}
		if c.out == "" {
			c.out = "_output/bench-smoke"
		}
	case c.full:
		c.smallFiles, c.largeSize, c.perReaderFiles, c.perReaderBytes, c.metaFiles = 20_000, 1<<30, 200, 128<<20, 100_000
		c.volumes, c.publishes, c.rounds = 100, 100, 2
	default:
		c.smallFiles, c.largeSize, c.perReaderFiles, c.perReaderBytes, c.metaFiles = 1_000, 128<<20, 50, 16<<20, 10_000
		c.volumes, c.publishes, c.rounds = 100, 100, 2
	}
	if c.out == "" {
		c.out = "docs"
	}
	for _, l := range strings.Split(levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(l))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "platform: --readers %q: want a comma-separated list of positive numbers\n", levels)
			os.Exit(2)
		}
		c.levels = append(c.levels, n)
	}
	if err := runBench(c); err != nil {
		fmt.Fprintf(os.Stderr, "platform: %v\n", err)
		os.Exit(1)
	}
}

func isFlagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// bench holds what runBench started, for cleanup.
type bench struct {
	c       config
	work    string
	procs   procs
	srv     *s3server.Server
	px      *storemodel.Proxy
	cistern *cisternStack
	mounts  []*fuseMount
	mu      sync.Mutex
	cleaned bool
}

// cleanup stops and unmounts everything, once; it runs at the end, on
// failure and on Ctrl-C.
func (b *bench) cleanup() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cleaned {
		return
	}
	b.cleaned = true
	if b.cistern != nil {
		if err := b.cistern.close(); err != nil {
			fmt.Fprintf(os.Stderr, "platform: cistern teardown: %v\n", err)
		}
	}
	for _, m := range b.mounts {
		m.down()
	}
	b.procs.stopAll()
	if b.px != nil {
		b.px.Close()
	}
	if b.srv != nil {
		_ = b.srv.Stop()
	}
	m := mounter.New()
	if refs, err := mounter.MountRefs(m, b.work); err == nil {
		for _, r := range refs {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			if err := mounter.Cleanup(ctx, m, r, 5*time.Second); err != nil {
				fmt.Fprintf(os.Stderr, "platform: unmount %s: %v\n", r, err)
			}
			cancel()
		}
	}
	if b.c.keep {
		fmt.Fprintf(os.Stderr, "platform: work directory kept: %s\n", b.work)
		return
	}
	os.RemoveAll(b.work)
}

func say(format string, a ...any) {
	fmt.Printf("%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func runBench(c config) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (FUSE mounts): sudo make bench")
	}
	for _, b := range []string{"cistern-csi", "cistern-cache", "cistern"} {
		if _, err := os.Stat(filepath.Join(c.binDir, b)); err != nil {
			return fmt.Errorf("%s: %w (run make build, or set --bin-dir)", b, err)
		}
	}
	if c.binDir, err = filepath.Abs(c.binDir); err != nil {
		return err
	}
	b := &bench{c: c}
	if c.work == "" {
		if c.work, err = os.MkdirTemp("/var/tmp", "cistern-platform-"); err != nil {
			return err
		}
	}
	b.work = c.work
	defer b.cleanup()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "platform: interrupted; cleaning up")
		b.cleanup()
		os.Exit(130)
	}()
	ctx := context.Background()
	started := time.Now()

	// The dataset, on local disk (the native system) and in the store.
	native := filepath.Join(b.work, "native")
	ds, err := generate(native, c)
	if err != nil {
		return err
	}
	if err := generateMeta(native, c.metaFiles); err != nil {
		return err
	}
	total := int64(len(ds.small))*ds.smallSize + int64(len(ds.large))*ds.largeSize
	say("dataset: %d x %d KiB and %d x %d MiB (%d MiB) in %s", len(ds.small), ds.smallSize>>10, len(ds.large), ds.largeSize>>20, total>>20, native)
	if b.srv, err = s3server.Start(filepath.Join(b.work, "s3")); err != nil {
		return err
	}
	if err := upload(ctx, b.srv, native); err != nil {
		return err
	}
	if b.px, err = storemodel.Start(b.srv.Addr, c.latency, c.bandwidth); err != nil {
		return err
	}
	st := store{endpoint: "http://" + b.px.Addr, bucket: "bench", prefix: "ds", ak: b.srv.AccessKey, sk: b.srv.SecretKey}
	say("store: versitygw on %s behind a model of a remote store on %s (+%s each way, %d Mbit/s)", b.srv.Addr, b.px.Addr, c.latency, c.bandwidth/1_000_000)

	// The systems.
	mc, err := minio.New(b.px.Addr, &minio.Options{Creds: credentials.NewStaticV4(st.ak, st.sk, ""), BucketLookup: minio.BucketLookupPath,
		Transport: directTransport()})
	if err != nil {
		return err
	}
	var systems []*system
	if c.wants("direct") {
		systems = append(systems, &system{name: "direct", acc: s3Access{mc: mc, bucket: st.bucket, prefix: st.prefix}})
	}
	// Cistern always starts: the control-plane and memory figures are its.
	b.cistern, err = startCistern(ctx, filepath.Join(b.work, "cistern"), c.binDir, c.keeper, &b.procs, st, 2*total+1<<30)
	if err != nil {
		return fmt.Errorf("cistern: %w", err)
	}
	if c.wants("cistern") {
		systems = append(systems, &system{name: "cistern", acc: fileAccess{b.cistern.target}, cold: b.cistern.cold, pid: b.cistern.pid})
	}
	passwd := filepath.Join(b.work, "s3fs.passwd")
	if err := os.WriteFile(passwd, []byte(st.ak+":"+st.sk+"\n"), 0o600); err != nil {
		return err
	}
	for _, peer := range []string{"rclone", "s3fs"} {
		if !c.wants(peer) {
			continue
		}
		sys := &system{name: peer, skip: available(peer)}
		if sys.skip == "" {
			dir, cache, log := filepath.Join(b.work, peer, "mnt"), filepath.Join(b.work, peer, "cache"), filepath.Join(b.work, peer+".log")
			var m *fuseMount
			if peer == "rclone" {
				m = newRclone(&b.procs, st, dir, cache, log)
			} else {
				m = newS3fs(&b.procs, st, dir, cache, log, passwd)
			}
			b.mounts = append(b.mounts, m)
			if err := m.up(); err != nil {
				sys.skip = err.Error()
			} else {
				sys.acc, sys.cold, sys.pid = fileAccess{dir}, m.cold, m.pid
			}
		}
		if sys.skip != "" {
			say("%s cannot run here: %s", peer, sys.skip)
		}
		systems = append(systems, sys)
	}
	if c.wants("native") {
		systems = append(systems, &system{name: "native", acc: fileAccess{native}})
	}

	// The concurrency sweep, interleaved system by system.
	var results []result
	for _, n := range c.levels {
		for _, kind := range []string{"small", "large"} {
			p := makePlan(ds, kind, n, c.perReaderFiles, c.perReaderBytes)
			for _, sys := range systems {
				if sys.skip != "" {
					continue
				}
				for _, phase := range sys.phases() {
					if phase == "cold" {
						if err := sys.makeCold(ctx); err != nil {
							return err
						}
					}
					if sys.name == "native" {
						warmNative(native, p) // the limit: page cache warm
					}
					before := b.px.BytesDown.Load()
					cpu := sys.cpu()
					r := run(sys.acc, p)
					r.system, r.phase, r.storeBytes = sys.name, phase, b.px.BytesDown.Load()-before
					if after := sys.cpu(); cpu >= 0 && after >= 0 {
						r.cpu = after - cpu
					} else {
						r.cpu = -1
					}
					results = append(results, r)
					status := ""
					if r.err != "" {
						status = " ERROR " + r.err
					}
					say("%-6s %3d readers  %-13s avg %8s  p99 %8s  %7.1f MiB/s  store/dataset %.2f%s", kind, n, r.label(),
						r.avg.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.mibps(), ratio(r.storeBytes, r.unique), status)
				}
			}
		}
	}

	// One reader of a whole large file, cold.
	seq, err := measureColdSeq(ctx, systems, ds, b.px)
	if err != nil {
		return err
	}

	// Warm single-node rates against native.
	var rs []rates
	for _, sys := range systems {
		if sys.skip != "" || sys.name == "direct" && c.smoke {
			continue
		}
		if sys.name != "direct" {
			// Warm it: every small file and the large file once.
			_ = measureRates(sys.name, sys.acc, ds, 1)
		}
		r := measureRates(sys.name, sys.acc, ds, c.rounds)
		rs = append(rs, r)
		say("warm rates %-8s seq %8.0f MiB/s  rand4k %9.0f IOPS  small16 %8.0f files/s %s", r.system, r.seq, r.rand4k, r.small16, r.err)
	}

	// Metadata: find and stat of the meta tree.
	meta, err := measureMeta(ctx, systems, c.metaFiles)
	if err != nil {
		return err
	}

	// Control plane and memory.
	cp, err := controlPlane(ctx, b, ds, st)
	if err != nil {
		return err
	}

	rep := report{c: c, ds: ds, results: results, seq: seq, rates: rs, meta: meta, cp: cp, systems: systems, took: time.Since(started)}
	if err := rep.write(); err != nil {
		return err
	}
	say("report: %s (took %s)", filepath.Join(c.out, "benchmarks.md"), time.Since(started).Round(time.Second))
	fmt.Println("cold-path goals:")
	for _, g := range rep.goals() {
		fmt.Println(g)
	}
	for _, r := range results {
		if r.err != "" {
			return fmt.Errorf("%s with %d readers (%s) failed: %s", r.label(), r.readers, r.kind, r.err)
		}
	}
	return nil
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// warmNative reads the files of a plan once so native reads hit the page
// cache.
func warmNative(root string, p plan) {
	acc := fileAccess{root}
	buf := make([]byte, 1<<20)
	for _, fs := range p.files {
		for _, f := range fs {
			_, _ = acc.readFile(f, buf)
		}
	}
	for _, s := range p.ranges {
		_ = acc.readRange(s.file, s.off, s.len, buf, func(time.Duration) {})
	}
}

// generate writes the dataset: seeded random bytes, so runs compare.
func generate(root string, c config) (dataset, error) {
	ds := dataset{smallSize: c.smallSize, largeSize: c.largeSize}
	r := rand.New(rand.NewPCG(2026, 11))
	fill := func(b []byte) {
		for i := 0; i+8 <= len(b); i += 8 {
			v := r.Uint64()
			for k := range 8 {
				b[i+k] = byte(v >> (8 * k))
			}
		}
	}
	buf := make([]byte, 4<<20)
	for i := range c.largeFiles {
		name := fmt.Sprintf("large/shard-%d.bin", i)
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return ds, err
		}
		f, err := os.Create(p)
		if err != nil {
			return ds, err
		}
		for off := int64(0); off < c.largeSize; off += int64(len(buf)) {
			fill(buf)
			if _, err := f.Write(buf[:min(int64(len(buf)), c.largeSize-off)]); err != nil {
				f.Close()
				return ds, err
			}
		}
		if err := f.Close(); err != nil {
			return ds, err
		}
		ds.large = append(ds.large, name)
	}
	small := make([]byte, c.smallSize)
	for i := range c.smallFiles {
		name := fmt.Sprintf("small/%03d/sample-%05d.bin", i%100, i)
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return ds, err
		}
		fill(small)
		if err := os.WriteFile(p, small, 0o644); err != nil {
			return ds, err
		}
		ds.small = append(ds.small, name)
	}
	slices.Sort(ds.small)
	return ds, nil
}

// upload puts the tree into bucket "bench" under "ds/", straight to the
// server (not through the store model).
func upload(ctx context.Context, srv *s3server.Server, root string) error {
	if err := srv.CreateBucket(ctx, "bench"); err != nil {
		return err
	}
	start := time.Now()
	n, err := srv.UploadTree(ctx, "bench", "ds", root)
	say("uploaded %d objects in %s", n, time.Since(start).Round(time.Millisecond))
	return err
}
