// Command cachebench measures warm reads through a Cistern mount against
// reading the same bytes natively from the page cache, side by side in one
// process, and prints a table of ratios. It needs root (FUSE).
//
//	go run ./test/bench/cachebench [-size 2Gi] [-files 2000] [-rounds 3] [-source posix|s3]
//
// With -source s3 the files are objects on a local S3 server (versitygw on
// loopback), and the first pass (cold: every byte from the store) is
// reported too.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/daemon"
	"github.com/cistern-csi/cistern/pkg/cache/fusefs"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
	s3source "github.com/cistern-csi/cistern/pkg/cache/source/s3"
	"github.com/cistern-csi/cistern/test/bench/readers"
	"github.com/cistern-csi/cistern/test/s3server"
)

func main() {
	size := flag.String("size", "2Gi", "size of the large file")
	files := flag.Int("files", 2000, "number of 64 KiB files")
	rounds := flag.Int("rounds", 3, "measurements per row and system (the best is kept)")
	dir := flag.String("dir", "", "work directory (default: a new one under /var/tmp)")
	only := flag.String("rows", "", "comma-separated rows to run (default: all)")
	tier := flag.String("tier", "mem", "where the cache keeps the files: mem (tmpfs, huge=within_size) or disk")
	source := flag.String("source", "posix", "where the dataset lives: posix (a local directory) or s3 (a local S3 server)")
	server := flag.String("server", "go-fuse", "what serves the mounts: go-fuse (its own server) or session (the server a connection kept across daemon restarts gets, as with a keeper)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file (the FUSE servers run in this process)")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cachebench: -cpuprofile: %v\n", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	if *source != "posix" && *source != "s3" {
		fmt.Fprintf(os.Stderr, "cachebench: -source %q: want posix or s3\n", *source)
		os.Exit(2)
	}
	if *server != "go-fuse" && *server != "session" {
		fmt.Fprintf(os.Stderr, "cachebench: -server %q: want go-fuse or session\n", *server)
		os.Exit(2)
	}
	if *tier != "mem" && *tier != "disk" {
		fmt.Fprintf(os.Stderr, "cachebench: -tier %q: want mem or disk\n", *tier)
		os.Exit(2)
	}
	mountFS = fusefs.Mount
	if *server == "session" {
		mountFS = fusefs.MountSession
	}
	if err := run(*size, *files, *rounds, *dir, *tier, *only, *source); err != nil {
		fmt.Fprintf(os.Stderr, "cachebench: %v\n", err)
		os.Exit(1)
	}
}

// mountFS mounts a dataset: go-fuse's server or a session (-server).
var mountFS = fusefs.Mount

type env struct {
	big   string   // path of the large file
	small []string // paths of the small files
}

func run(sizeSpec string, nFiles, rounds int, work, tierName, only, from string) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root to mount FUSE")
	}
	size, err := daemon.ParseSize(sizeSpec)
	if err != nil {
		return err
	}
	if work == "" {
		if work, err = os.MkdirTemp("/var/tmp", "cistern-bench-"); err != nil {
			return err
		}
	}
	defer os.RemoveAll(work)
	src := filepath.Join(work, "src")
	fmt.Printf("cachebench: generating %s and %d x 64 KiB files in %s (cache tier: %s)\n", sizeSpec, nFiles, src, tierName)
	native, err := generate(src, size, nFiles)
	if err != nil {
		return err
	}

	var p source.Source
	if from == "s3" {
		srv, src3, err := startS3(filepath.Join(work, "s3"), src)
		if err != nil {
			return err
		}
		defer srv.Stop()
		p = src3
		fmt.Printf("cachebench: uploaded to versitygw on %s\n", srv.Endpoint)
	} else if p, err = posix.New(src); err != nil {
		return err
	}
	// The product's default: a memory tier on a dedicated tmpfs
	// (huge=within_size), then disk.
	memDir := filepath.Join(work, "mem")
	memQuota := 4*size + 1<<30
	if err := daemon.MountTmpfs(memDir, memQuota); err != nil {
		return err
	}
	defer func() { _ = syscall.Unmount(memDir, syscall.MNT_DETACH) }()
	tiers := []cache.TierOptions{{Name: "disk", Dir: filepath.Join(work, "cache"), Quota: 2*size + 1<<30}}
	if tierName == "mem" {
		tiers = append([]cache.TierOptions{{Name: "mem", Dir: memDir, Quota: memQuota}}, tiers...)
	}
	c, err := cache.New(cache.Options{Tiers: tiers})
	if err != nil {
		return err
	}
	defer c.Close()
	mounts := []*fusefs.FS{}
	defer func() {
		for _, m := range mounts {
			if uerr := m.Unmount(); uerr != nil {
				fmt.Fprintf(os.Stderr, "unmount: %v\n", uerr)
			}
		}
	}()
	// Unmount on Ctrl-C too.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		for _, m := range mounts {
			_ = m.Unmount()
		}
		_ = syscall.Unmount(memDir, syscall.MNT_DETACH)
		os.RemoveAll(work)
		os.Exit(130)
	}()
	ds := c.Dataset("bench", p)
	mount := func(name string, o fusefs.Options) (string, error) {
		mnt := filepath.Join(work, name)
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			return "", err
		}
		o.Name, o.ReadOnly, o.MetaCache = "bench", true, time.Hour
		m, err := mountFS(mnt, ds, o)
		if err != nil {
			return "", err
		}
		mounts = append(mounts, m)
		return mnt, nil
	}
	mntDefault, err := mount("mnt", fusefs.Options{Passthrough: true})
	if err != nil {
		return err
	}
	mntSmall, err := mount("mnt-small", fusefs.Options{SmallFiles: true})
	if err != nil {
		return err
	}
	rebase := func(root string) env {
		e := env{big: filepath.Join(root, filepath.Base(native.big))}
		for _, f := range native.small {
			rel, _ := filepath.Rel(src, f)
			e.small = append(e.small, filepath.Join(root, rel))
		}
		return e
	}
	cst, small := rebase(mntDefault), rebase(mntSmall)

	// Warm: the native page cache and the Cistern cache (the first pass
	// through a mount fetches every block; then files are complete and
	// open with passthrough).
	start := time.Now()
	var cold [2]float64 // the first pass through the mount: MiB/s, files/s
	for i, e := range []env{cst, native, small} {
		v, err := readers.ReadSeq(e.big, 1)
		if err != nil {
			return err
		}
		f, err := readers.ReadSmall(e.small, 16)
		if err != nil {
			return err
		}
		if i == 0 {
			cold = [2]float64{v, f}
		}
	}
	for c.Filling() > 0 { // files read from a POSIX source are cached after close
		time.Sleep(10 * time.Millisecond)
	}
	st := c.Stats()
	fmt.Printf("cachebench: warmed in %s (source bytes %d MiB, cache %d MiB)\n\n", time.Since(start).Round(time.Millisecond), st.SourceBytes>>20, (st.TierBytes["mem"]+st.TierBytes["disk"])>>20)

	type row struct {
		name, unit string
		run        func(e env) (float64, error)
		cistern    env
		target     float64
	}
	rows := []row{
		{"seq", "MiB/s", func(e env) (float64, error) { return readers.ReadSeq(e.big, 1) }, cst, 0.95},
		{"parallel16", "MiB/s", func(e env) (float64, error) { return readers.ReadSeq(e.big, 16) }, cst, 0.95},
		{"rand4k", "IOPS", func(e env) (float64, error) { return readers.ReadRand(e.big, 1_000_000) }, cst, 0.95},
		{"small1", "files/s", func(e env) (float64, error) { return readers.ReadSmall(e.small, 1) }, small, 0.85},
		{"small16", "files/s", func(e env) (float64, error) { return readers.ReadSmall(e.small, 16) }, small, 0.85},
	}
	// Cold, against native page-cache reads of the same bytes.
	nSeq, err := readers.ReadSeq(native.big, 1)
	if err != nil {
		return err
	}
	nSmall, err := readers.ReadSmall(native.small, 16)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "cold row (%s source)\tunit\tnative\tcistern\tratio\t\n", from)
	fmt.Fprintf(tw, "cold-seq\tMiB/s\t%.0f\t%.0f\t%.3f\t\n", nSeq, cold[0], cold[0]/nSeq)
	fmt.Fprintf(tw, "cold-small16\tfiles/s\t%.0f\t%.0f\t%.3f\t\n", nSmall, cold[1], cold[1]/nSmall)
	tw.Flush()
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "row\tunit\tnative\tcistern\tratio\ttarget\t")
	for _, r := range rows {
		if only != "" && !slices.Contains(strings.Split(only, ","), r.name) {
			continue
		}
		var bestN, bestC float64
		for range rounds { // interleaved, best of rounds
			n, err := r.run(native)
			if err != nil {
				return err
			}
			cv, err := r.run(r.cistern)
			if err != nil {
				return err
			}
			bestN, bestC = max(bestN, n), max(bestC, cv)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.2f\t>= %.2f\t\n", r.name, r.unit, bestN, bestC, bestC/bestN, r.target)
	}
	tw.Flush()
	st2 := c.Stats()
	fmt.Printf("\ncache: hits %d, misses %d, source MiB read during the measurements: %d\n", st2.Hits-st.Hits, st2.Misses-st.Misses, (st2.SourceBytes-st.SourceBytes)>>20)
	fmt.Println("seq, parallel16, rand4k: default mount (fully cached files open with FUSE passthrough);")
	fmt.Println("small1, small16: accessPattern small-files (no-open mode, kernel page cache).")
	return nil
}

func generate(dir string, size int64, nFiles int) (env, error) {
	e := env{big: filepath.Join(dir, "big.bin")}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return e, err
	}
	f, err := os.Create(e.big)
	if err != nil {
		return e, err
	}
	buf := make([]byte, 4<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for off := int64(0); off < size; off += int64(len(buf)) {
		for i := 0; i+8 <= len(buf); i += 8 {
			v := r.Uint64()
			for k := range 8 {
				buf[i+k] = byte(v >> (8 * k))
			}
		}
		n := min(int64(len(buf)), size-off)
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return e, err
		}
	}
	if err := f.Close(); err != nil {
		return e, err
	}
	for i := range nFiles {
		p := filepath.Join(dir, "small", fmt.Sprintf("%02d", i%50), fmt.Sprintf("f%05d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return e, err
		}
		if err := os.WriteFile(p, buf[(i%60)*4096:(i%60)*4096+64<<10], 0o644); err != nil {
			return e, err
		}
		e.small = append(e.small, p)
	}
	return e, nil
}

// startS3 starts versitygw in dir, uploads every file under root to bucket
// "bench" and returns the server and a source for it.
func startS3(dir, root string) (*s3server.Server, source.Source, error) {
	srv, err := s3server.Start(dir)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*s3server.Server, source.Source, error) {
		srv.Stop()
		return nil, nil, err
	}
	ctx := context.Background()
	if err := srv.CreateBucket(ctx, "bench"); err != nil {
		return fail(err)
	}
	if _, err := srv.UploadTree(ctx, "bench", "", root); err != nil {
		return fail(err)
	}
	loc := s3store.Location{Bucket: "bench", Endpoint: srv.Endpoint, Region: "us-east-1", Addressing: "path"}
	c, err := s3store.New(loc, s3store.Credentials{AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}, s3store.Config{})
	if err != nil {
		return fail(err)
	}
	return srv, s3source.New(c, s3source.Options{MetaCache: time.Hour}), nil
}
