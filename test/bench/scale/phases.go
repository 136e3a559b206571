package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/test/bench/host"
)

// restart replaces the daemon d as an upgrade does (SIGTERM: it hands its
// mounts to the keeper; a new daemon takes them over) and records how
// long a pod's read of a cached file waited from the SIGTERM, how long
// the new daemon's index takes to load, and whether every file is still
// cached (no block fetched again). It releases the dataset at the end.
func restart(c config, r *row, d *daemon, dir, mnt string, names []string, keeperFlag string) error {
	start := time.Now()
	d.stop()
	read := make(chan error, 1)
	go func() {
		// Issued while no daemon serves: the kernel holds it until the
		// new one answers.
		b, err := os.ReadFile(filepath.Join(mnt, names[len(names)/2]))
		if err == nil && len(b) != 4096 {
			err = fmt.Errorf("read %d bytes, want 4096", len(b))
		}
		r.restartServe = time.Since(start)
		read <- err
	}()
	d2, err := startDaemon(c.binDir, dir, keeperFlag)
	if err != nil {
		return err
	}
	defer d2.stop()
	if err := <-read; err != nil {
		return fmt.Errorf("a read across the restart: %w", err)
	}
	ctx := context.Background()
	before, err := d2.client.Stats(ctx)
	if err != nil {
		return err
	}
	if _, err := readAll(mnt, names); err != nil {
		return err
	}
	for {
		st, err := d2.client.Stats(ctx)
		if err != nil {
			return err
		}
		if !st.Cache.IndexLoading {
			r.restartLoaded = time.Since(start)
			r.restartMisses = st.Cache.Misses - before.Cache.Misses
			break
		}
		if time.Since(start) > 10*time.Minute {
			return fmt.Errorf("the index was still loading after %s", time.Since(start))
		}
		time.Sleep(100 * time.Millisecond)
	}
	say("%d files: restart: a read waited %s from the SIGTERM, index loaded after %s, %d blocks fetched again reading every file",
		r.files, r.restartServe.Round(time.Millisecond), r.restartLoaded.Round(time.Millisecond), r.restartMisses)
	return d2.client.Release(ctx, "bench")
}

// bounded reads every file through a daemon started with --max-inodes at
// a tenth of the files and --cache-sleep-after 1s, and records, once it
// has pruned and its items sleep, the nodes it holds, its dormant files,
// its resident memory and its live heap: what an idle cached file costs.
func bounded(c config, r *row, dir, src string, names []string) error {
	r.limit = int64(max(1000, r.files/10))
	d, err := startDaemon(c.binDir, filepath.Join(dir, "bounded"), fmt.Sprintf("--max-inodes=%d", r.limit),
		"--cache-sleep-after=1s", "--debug-address=127.0.0.1:6062")
	if err != nil {
		return err
	}
	defer d.stop()
	ctx := context.Background()
	resp, err := d.client.Mount(ctx, api.MountRequest{Holder: "bench", Dataset: "scale", Source: "file://" + src, MetaCache: time.Second})
	if err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	if _, err := readAll(resp.MountPath, names); err != nil {
		return err
	}
	// The daemon compares with the bound every second (the kernel's
	// FORGETs follow the prune); its cleaner puts idle items to sleep
	// every 5 s; the Go runtime returns freed memory to the system within
	// seconds.
	start := time.Now()
	for deadline := start.Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		st, err := d.client.Stats(ctx)
		if err != nil {
			return err
		}
		r.limitNodes = 0
		for _, ds := range st.Datasets {
			r.limitNodes += ds.Nodes
		}
		r.dormant = st.Cache.Dormant
		if r.limitNodes <= r.limit && r.dormant >= int64(r.files) && time.Since(start) > 10*time.Second {
			break
		}
	}
	r.rssLimited = host.RSSKiB(d.cmd.Process.Pid) << 10
	if c.profiles != "" {
		if err := saveProfile("127.0.0.1:6062", "heap?gc=1", filepath.Join(c.profiles, fmt.Sprintf("heap-%d-idle.pprof", r.files))); err != nil {
			return err
		}
	}
	text, err := httpGet("http://127.0.0.1:6062/debug/pprof/heap?debug=1")
	if err != nil {
		return err
	}
	if c.profiles != "" {
		// The runtime's own account (heap in use against allocated:
		// fragmentation; released), at the end of the text.
		if i := strings.Index(text, "\n# runtime.MemStats"); i >= 0 {
			if err := os.WriteFile(filepath.Join(c.profiles, fmt.Sprintf("memstats-%d-idle.txt", r.files)), []byte(text[i+1:]), 0o644); err != nil {
				return err
			}
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			fmt.Sscan(v, &r.heapLimited)
		}
	}
	say("%d files, idle, with --max-inodes=%d: %d nodes held, %d files dormant, memory %d MiB (%.0f B per file read), live heap %d MiB (%.0f B per file)",
		r.files, r.limit, r.limitNodes, r.dormant, r.rssLimited>>20, float64(r.rssLimited-r.rssEmpty)/float64(r.files),
		r.heapLimited>>20, float64(r.heapLimited)/float64(r.files))
	return d.client.Release(ctx, "bench")
}

// dsRow is the many-datasets phase's figures.
type dsRow struct {
	n                    int
	rssEmpty, rssMounted int64         // bytes
	mount                time.Duration // per dataset: mount and first read
	scrape, stats        time.Duration // one metrics scrape, one stats call
	series               int           // metric series in a scrape
	release              time.Duration // releasing them all
	threads              int64         // the daemon's threads with all mounted
}

// manyDatasets mounts n read-write file:// datasets of one file each on
// one daemon (with a keeper, as the chart runs it), reads each file once,
// and measures memory per mounted dataset, a metrics scrape and a stats
// call.
func manyDatasets(c config, n int) (dr dsRow, err error) {
	dr.n = n
	dir := filepath.Join(c.work, "datasets")
	say("%d datasets: writing the sources", n)
	for i := range n {
		if err := os.MkdirAll(filepath.Join(dir, "src", fmt.Sprint(i)), 0o755); err != nil {
			return dr, err
		}
		if err := os.WriteFile(filepath.Join(dir, "src", fmt.Sprint(i), "f"), make([]byte, 4096), 0o644); err != nil {
			return dr, err
		}
	}
	keeper, keeperFlag, err := startKeeper(c.binDir, dir)
	if err != nil {
		return dr, err
	}
	defer stopProcess(keeper)
	addr, err := freeLoopbackAddr()
	if err != nil {
		return dr, err
	}
	args := []string{keeperFlag, "--metrics-address=" + addr}
	if c.profiles != "" {
		args = append(args, "--debug-address=127.0.0.1:6061")
	}
	d, err := startDaemon(c.binDir, dir, args...)
	if err != nil {
		return dr, err
	}
	defer d.stop()
	ctx := context.Background()
	dr.rssEmpty = host.RSSKiB(d.cmd.Process.Pid) << 10
	start := time.Now()
	for i := range n {
		resp, err := d.client.Mount(ctx, api.MountRequest{Holder: fmt.Sprint("bench-", i), Dataset: fmt.Sprint("ds-", i),
			Source: "file://" + filepath.Join(dir, "src", fmt.Sprint(i)), MetaCache: time.Second})
		if err != nil {
			return dr, fmt.Errorf("mount %d: %w", i, err)
		}
		if b, err := os.ReadFile(filepath.Join(resp.MountPath, "f")); err != nil || len(b) != 4096 {
			return dr, fmt.Errorf("dataset %d: read %d bytes, %v", i, len(b), err)
		}
	}
	dr.mount = time.Since(start) / time.Duration(n)
	time.Sleep(time.Second)
	dr.rssMounted = host.RSSKiB(d.cmd.Process.Pid) << 10
	dr.threads = host.Threads(d.cmd.Process.Pid)
	if c.profiles != "" {
		if err := saveHeap(filepath.Join(c.profiles, fmt.Sprintf("heap-%d-datasets.pprof", n))); err != nil {
			return dr, err
		}
	}
	start = time.Now()
	body, err := httpGet("http://" + addr + "/metrics")
	if err != nil {
		return dr, err
	}
	dr.scrape = time.Since(start)
	for _, line := range strings.Split(body, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			dr.series++
		}
	}
	start = time.Now()
	if _, err := d.client.Stats(ctx); err != nil {
		return dr, err
	}
	dr.stats = time.Since(start)
	start = time.Now()
	for i := range n {
		if err := d.client.Release(ctx, fmt.Sprint("bench-", i)); err != nil {
			return dr, fmt.Errorf("release %d: %w", i, err)
		}
	}
	dr.release = time.Since(start)
	say("%d datasets: %d threads, memory %d -> %d MiB (%.0f KiB per dataset), mount and first read %s each, metrics scrape %s (%d series), stats %s, releasing all %s",
		n, dr.threads, dr.rssEmpty>>20, dr.rssMounted>>20, float64(dr.rssMounted-dr.rssEmpty)/float64(n)/1024, dr.mount.Round(time.Microsecond),
		dr.scrape.Round(time.Millisecond), dr.series, dr.stats.Round(time.Millisecond), dr.release.Round(time.Millisecond))
	return dr, nil
}

// freeLoopbackAddr returns a loopback address with a port free now.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// httpGet returns the body of a GET of url.
func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}
