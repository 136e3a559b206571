// Command scale measures what one node's cache daemon costs as the number of
// cached files grows (make bench-scale): resident memory per cached file,
// the cost of create, rename and unlink above the source's own, warm reads
// of small files and find-and-stat of the tree against native, on a
// read-write file:// dataset served by the real cistern-cache binary.
//
// It prints one table row per size and then the goals, one per line as
// `<figure>: <value> (goal <goal>) pass|fail`. Goals it does not measure
// yet are printed as such, and fail.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/test/bench/host"
	"github.com/cistern-csi/cistern/test/bench/readers"
)

type config struct {
	sizes  []int
	binDir string
	work   string
	keep   bool
	ops    int // creates, renames and unlinks per size
	// profiles: write the daemon's heap profile here after the cold
	// read of each size ("" = none).
	profiles string
	datasets int // datasets mounted at once in the many-datasets phase
}

// row is one size's figures.
type row struct {
	files                      int
	rssEmpty, rssCached        int64   // bytes
	coldRate, warmRate, native float64 // files/s
	walk, walkNative           time.Duration
	walkRO                     time.Duration // a read-only mount of the same tree, metacache 1h
	// Warm reads with one round trip per file (a LOOKUP; no-open mode,
	// metacache 1s): the most any per-file revalidation can give.
	lookupRate                float64
	create, rename, unlink    time.Duration // per op, through the mount
	nCreate, nRename, nUnlink time.Duration // per op, natively
	// A second daemon with --max-inodes limit, after reading every file:
	// the nodes its mount holds and its resident memory.
	limit, limitNodes int64
	rssLimited        int64
	heapLimited       int64 // live heap, bytes
	dormant           int64 // files whose items sleep
	// After a restart on the same state: time to serve a cached file
	// (start, mount, read), time until the whole index is loaded, and
	// blocks fetched again reading every file (0: the cache stayed warm).
	restartServe, restartLoaded time.Duration
	restartMisses               int64
}

func (r row) perFile() float64 {
	return float64(r.rssCached-r.rssEmpty) / float64(r.files)
}

func main() {
	var c config
	var sizes string
	smoke := flag.Bool("smoke", false, "1,000 files only (make test)")
	full := flag.Bool("full", false, "also 1,000,000 files")
	flag.StringVar(&sizes, "files", "", "comma-separated numbers of files (default 1000,100000)")
	flag.StringVar(&c.binDir, "bin-dir", "bin", "where cistern-cache is (make build)")
	flag.StringVar(&c.work, "work-dir", "", "work directory (default: a new one under /var/tmp)")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory")
	flag.IntVar(&c.datasets, "datasets", 0, "datasets mounted at once in the many-datasets phase (default 1000; --smoke 50)")
	flag.StringVar(&c.profiles, "heap-profiles", "", "write the daemon's heap profile after the cold read of each size to this directory (heap-<files>.pprof)")
	flag.Parse()
	if c.datasets == 0 {
		c.datasets = 1000
		if *smoke {
			c.datasets = 50
		}
	}
	switch {
	case sizes != "":
	case *smoke:
		sizes = "1000"
	case *full:
		sizes = "1000,100000,1000000"
	default:
		sizes = "1000,100000"
	}
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 100 {
			fmt.Fprintf(os.Stderr, "scale: --files %q: want numbers of at least 100\n", sizes)
			os.Exit(2)
		}
		c.sizes = append(c.sizes, n)
	}
	c.ops = 200
	if err := run(c); err != nil {
		fmt.Fprintf(os.Stderr, "scale: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Printf("%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(c config) error {
	if c.work == "" {
		var err error
		if c.work, err = os.MkdirTemp("/var/tmp", "cistern-scale-"); err != nil {
			return err
		}
	}
	defer func() {
		// Stopped processes first (deferred in measure), then what they
		// may have left mounted, then the files.
		if n := host.UnmountUnder(c.work); n > 0 {
			say("detached %d mounts left under %s", n, c.work)
		}
		if !c.keep {
			os.RemoveAll(c.work)
		}
	}()
	var rows []row
	for _, n := range c.sizes {
		r, err := measure(c, n)
		if err != nil {
			return fmt.Errorf("%d files: %w", n, err)
		}
		rows = append(rows, r)
	}
	dr, err := manyDatasets(c, c.datasets)
	if err != nil {
		return fmt.Errorf("%d datasets: %w", c.datasets, err)
	}
	report(rows, dr)
	return nil
}

// measure runs one size against a fresh daemon and dataset.
func measure(c config, n int) (r row, err error) {
	r.files = n
	dir := filepath.Join(c.work, strconv.Itoa(n))
	src := filepath.Join(dir, "src")
	say("%d files: writing the source tree", n)
	names, err := makeTree(src, n)
	if err != nil {
		return r, err
	}
	keeper, keeperFlag, err := startKeeper(c.binDir, dir)
	if err != nil {
		return r, err
	}
	defer stopProcess(keeper)
	args := []string{keeperFlag}
	if c.profiles != "" {
		args = append(args, "--debug-address=127.0.0.1:6061")
	}
	d, err := startDaemon(c.binDir, dir, args...)
	if err != nil {
		return r, err
	}
	defer d.stop()
	ctx := context.Background()
	resp, err := d.client.Mount(ctx, api.MountRequest{Holder: "bench", Dataset: "scale", Source: "file://" + src, MetaCache: time.Second})
	if err != nil {
		return r, fmt.Errorf("mount: %w", err)
	}
	mnt := resp.MountPath
	r.rssEmpty = host.RSSKiB(d.cmd.Process.Pid) << 10
	// Cold: the first read of every file, through the daemon.
	if err := host.DropCaches(); err != nil {
		return r, err
	}
	if r.coldRate, err = readAll(mnt, names); err != nil {
		return r, err
	}
	time.Sleep(time.Second) // index writes, the cleaner
	r.rssCached = host.RSSKiB(d.cmd.Process.Pid) << 10
	if c.profiles != "" {
		if err := saveHeap(filepath.Join(c.profiles, fmt.Sprintf("heap-%d.pprof", n))); err != nil {
			return r, err
		}
	}
	if r.warmRate, err = readAll(mnt, names); err != nil {
		return r, err
	}
	if _, err = readAll(src, names); err != nil { // the page cache, as the mount had it
		return r, err
	}
	if r.native, err = readAll(src, names); err != nil {
		return r, err
	}
	say("%d files: memory %d -> %d MiB (%.0f B per file); read cold %.0f, warm %.0f, native %.0f files/s",
		n, r.rssEmpty>>20, r.rssCached>>20, r.perFile(), r.coldRate, r.warmRate, r.native)
	// find and stat, warm: a walk to warm it, then the measured one; on
	// the read-write mount (metacache 1s), a read-only mount of the same
	// tree (metacache 1h, read-only datasets' default) and natively.
	ro, err := d.client.Mount(ctx, api.MountRequest{Holder: "bench-ro", Dataset: "scale-ro", Source: "file://" + src, ReadOnly: true, MetaCache: time.Hour})
	if err != nil {
		return r, fmt.Errorf("mount read-only: %w", err)
	}
	for _, p := range []struct {
		root string
		out  *time.Duration
	}{{mnt, &r.walk}, {ro.MountPath, &r.walkRO}, {src, &r.walkNative}} {
		if _, err := walk(p.root); err != nil {
			return r, err
		}
		if *p.out, err = walk(p.root); err != nil {
			return r, err
		}
	}
	say("%d files: find and stat warm %s, read-only %s, native %s", n, r.walk.Round(time.Millisecond), r.walkRO.Round(time.Millisecond), r.walkNative.Round(time.Millisecond))
	// Create, rename, unlink, through the mount and natively (before the
	// read-only mount goes: the daemon's teardown of its nodes would
	// share the CPUs with them).
	if r.create, r.rename, r.unlink, err = ops(filepath.Join(mnt, "ops"), c.ops); err != nil {
		return r, err
	}
	if r.nCreate, r.nRename, r.nUnlink, err = ops(filepath.Join(dir, "native-ops"), c.ops); err != nil {
		return r, err
	}
	say("%d files: create %s, rename %s, unlink %s per op (native %s, %s, %s)", n,
		r.create, r.rename, r.unlink, r.nCreate, r.nRename, r.nUnlink)
	if err := d.client.Release(ctx, "bench-ro"); err != nil {
		return r, fmt.Errorf("unmount read-only: %w", err)
	}
	if r.lookupRate, err = lookupOnly(ctx, d, src, names); err != nil {
		return r, err
	}
	say("%d files: warm reads with one LOOKUP per file (read-only, no-open, metacache 1s) %.0f files/s", n, r.lookupRate)
	if err := restart(c, &r, d, dir, mnt, names, keeperFlag); err != nil {
		return r, fmt.Errorf("restart: %w", err)
	}
	return r, bounded(c, &r, dir, src, names)
}

// saveHeap writes the daemon's heap profile (after a collection) to path,
// and its goroutines beside it (.goroutines).
func saveHeap(path string) error {
	if err := saveProfile("127.0.0.1:6061", "heap?gc=1", path); err != nil {
		return err
	}
	return saveProfile("127.0.0.1:6061", "goroutine?debug=1", strings.TrimSuffix(path, ".pprof")+".goroutines")
}

// saveProfile writes the profile (pprof's name and query) of the daemon
// serving them at addr to path.
func saveProfile(addr, profile, path string) error {
	resp, err := http.Get("http://" + addr + "/debug/pprof/" + profile)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("heap profile: %s", resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// makeTree writes n files of 4 KiB, 1,000 per directory, and returns
// their names.
func makeTree(root string, n int) ([]string, error) {
	buf := make([]byte, 4096)
	names := make([]string, 0, n)
	for i := range n {
		name := fmt.Sprintf("d%04d/f%07d", i/1000, i)
		if i%1000 == 0 {
			if err := os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o755); err != nil {
				return nil, err
			}
		}
		copy(buf, name)
		if err := os.WriteFile(filepath.Join(root, name), buf, 0o644); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

// readAll reads every file with 4 readers and returns files per second.
func readAll(root string, names []string) (float64, error) {
	start := time.Now()
	err := readers.Parallel(4, func(i int) error {
		b := make([]byte, 64<<10)
		for j := i; j < len(names); j += 4 {
			fd, err := readers.OpenRO(filepath.Join(root, names[j]))
			if err != nil {
				return err
			}
			m, err := readers.Read(fd, b)
			syscall.Close(fd)
			if err != nil {
				return err
			}
			if m != 4096 {
				return fmt.Errorf("%s: read %d bytes, want 4096", names[j], m)
			}
		}
		return nil
	})
	return float64(len(names)) / time.Since(start).Seconds(), err
}

// lookupOnly measures warm reads that cost one round trip per file: a
// read-only mount of src in no-open mode (no OPEN, FLUSH or RELEASE; the
// kernel keeps the pages) whose entries, trusted for a second, have all
// expired, so each open of a file is one LOOKUP. No design that checks
// each file on the source when it is opened can do better; a read-write
// dataset's open also needs OPEN and RELEASE (its handles keep unlinked
// and renamed files working).
func lookupOnly(ctx context.Context, d *daemon, src string, names []string) (float64, error) {
	m, err := d.client.Mount(ctx, api.MountRequest{Holder: "bench-lookup", Dataset: "scale-lookup", Source: "file://" + src,
		ReadOnly: true, AccessPattern: api.PatternSmallFiles, MetaCache: time.Second})
	if err != nil {
		return 0, fmt.Errorf("mount no-open: %w", err)
	}
	defer d.client.Release(ctx, "bench-lookup")
	if _, err := readAll(m.MountPath, names); err != nil { // into the kernel's page cache
		return 0, err
	}
	time.Sleep(1100 * time.Millisecond)
	return readAll(m.MountPath, names)
}

// walk lists and lstats every entry under root, as find -ls does.
func walk(root string) (time.Duration, error) {
	start := time.Now()
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		_, err = os.Lstat(p)
		return err
	})
	return time.Since(start), err
}

// ops creates and writes n files of 4 KiB in dir, renames each, then
// unlinks each, and returns the average time of each kind.
func ops(dir string, n int) (create, rename, unlink time.Duration, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, 0, err
	}
	buf := make([]byte, 4096)
	start := time.Now()
	for i := range n {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("new-%d", i)), buf, 0o644); err != nil {
			return 0, 0, 0, err
		}
	}
	create = time.Since(start) / time.Duration(n)
	start = time.Now()
	for i := range n {
		if err := os.Rename(filepath.Join(dir, fmt.Sprintf("new-%d", i)), filepath.Join(dir, fmt.Sprintf("moved-%d", i))); err != nil {
			return 0, 0, 0, err
		}
	}
	rename = time.Since(start) / time.Duration(n)
	start = time.Now()
	for i := range n {
		if err := os.Remove(filepath.Join(dir, fmt.Sprintf("moved-%d", i))); err != nil {
			return 0, 0, 0, err
		}
	}
	unlink = time.Since(start) / time.Duration(n)
	return create, rename, unlink, os.Remove(dir)
}
