// Command group measures the cache group (make bench-group) and prints
// each figure of issue 16 as `<figure>: <value> (goal <goal>) pass|fail`,
// starting with source GETs per block. Source amplification and capacity
// are measured on members in this process (real caches on disk, the real
// peer protocol over loopback TLS, a POSIX source whose reads are
// counted); the placement's figures over a dataset's blocks; latency
// against a store model and churn on real cistern-cache daemons, each in a
// network namespace of its own (netlab.go), reading an S3 dataset through
// FUSE.
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/group"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

func main() {
	smoke := flag.Bool("smoke", false, "fewer blocks and smaller files (make test)")
	work := flag.String("work-dir", "", "where the members' caches and the source go (default: a new directory under /var/tmp)")
	binDir := flag.String("bin-dir", "bin", "where cistern-cache is (make build)")
	netOnly := flag.Bool("net-only", false, "only the figures measured on daemons in network namespaces (latency, churn, the comparison)")
	compareOnly := flag.Bool("compare-only", false, "only the comparison of a group with independent nodes (make bench)")
	compareMD := flag.String("compare-md", "", "append the comparison as a markdown section to this file (make bench: docs/benchmarks.md)")
	flag.Parse()
	// Placement: a 10 TiB dataset of 4 MiB blocks is 2.6 million blocks;
	// 200,000 by default, 20,000 for the smoke run. The in-process group:
	// a cold 512 MiB file and a 768 MiB dataset on 4 x 256 MiB caches
	// (smoke: 32 MiB, 48 MiB, 4 x 16 MiB, 256 KiB blocks: as many blocks
	// per member as the full sizes).
	n, mib, block := 200_000, int64(1<<20), int64(4<<20)
	// Daemons in network namespaces: 4 MiB blocks (the default), a file
	// of 64 blocks for the latency, 192 MiB for the churn readers (12
	// times what a member keeps of other members' blocks in memory).
	ns := netSizes{block: 4 << 20, latBlocks: 64, churnFiles: 6, churnSize: 32 << 20, quota: 1 << 30, period: 5 * time.Second}
	// The comparison: 4 nodes x 25 readers, a file each: 400 MiB.
	cs := compareSizes{files: 25, size: 16 << 20, nodes: 4, readers: 25}
	if *smoke {
		n, mib, block = 20_000, 1<<16, 1<<18
		ns = netSizes{block: 1 << 20, latBlocks: 32, churnFiles: 6, churnSize: 8 << 20, quota: 256 << 20, period: 2 * time.Second}
		cs.size = 2 << 20
	}
	dir := *work
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("/var/tmp", "cistern-group-"); err != nil {
			fmt.Fprintf(os.Stderr, "group: %v\n", err)
			os.Exit(1)
		}
	}
	// Interrupted: the namespaces, daemons and mounts go first.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "group: %v: cleaning up\n", sig)
		closeAll()
		if *work == "" {
			os.RemoveAll(dir)
		}
		os.Exit(130)
	}()
	err := runAll(dir, *binDir, !*netOnly && !*compareOnly, !*compareOnly, n, mib, block, ns, cs, *compareMD)
	if *work == "" {
		os.RemoveAll(dir)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "group: %v\n", err)
		os.Exit(1)
	}
}

// runAll measures what is asked: the in-process members and placement,
// the figures on daemons in network namespaces, and the comparison.
func runAll(dir, binDir string, inproc, netfig bool, n int, mib, block int64, ns netSizes, cs compareSizes, md string) error {
	if inproc {
		if err := inProcess(dir, mib, block); err != nil {
			return err
		}
		if err := run(n); err != nil {
			return err
		}
		// The in-process members wrote gigabytes: written back now,
		// before the daemons are measured.
		syscall.Sync()
	}
	if netfig {
		if err := netFigures(filepath.Join(dir, "net"), binDir, ns); err != nil {
			return err
		}
		// The members' caches written back before the comparison too:
		// a busy disk slowed owners past their askers' deadline, which
		// then read the source themselves (1.12-1.14x in full runs,
		// 1.00x alone).
		syscall.Sync()
	}
	return compare(filepath.Join(dir, "compare"), binDir, ns.block, cs, md)
}

// inProcess measures source amplification and capacity on four members in
// this process; mib scales the sizes (1 MiB: the issue's).
func inProcess(dir string, mib, block int64) error {
	root := filepath.Join(dir, "source")
	if err := writeFile(filepath.Join(root, "cold"), 512*mib, 1); err != nil {
		return err
	}
	var names []string
	for i := range 8 {
		name := fmt.Sprintf("dataset/shard-%d", i)
		if err := writeFile(filepath.Join(root, name), 96*mib, uint64(10+i)); err != nil {
			return err
		}
		names = append(names, name)
	}
	p, err := posix.New(root)
	if err != nil {
		return err
	}
	src := &countingSource{Source: p}
	key := group.DatasetKey("file://"+root, nil)

	ms, stop, err := startMembers(4, 4, filepath.Join(dir, "amplification"), src, key, 4*512*mib, block)
	if err != nil {
		return err
	}
	start := time.Now()
	err = readAll(ms, src, []string{"cold"})
	took := time.Since(start)
	stop()
	if err != nil {
		return err
	}
	blocks := (512*mib + block - 1) / block
	per := float64(src.reads.Load()) / float64(blocks)
	line(fmt.Sprintf("source GETs per block, 4 members reading the same cold %d MiB at once", 512*mib>>20),
		fmt.Sprintf("%.2f (%d reads of %d blocks, %s)", per, src.reads.Load(), blocks, took.Round(time.Millisecond)), "1.00", per <= 1.0)

	// A join: four members read the file, a fifth joins and all five
	// read it again; the fifth takes its share from the previous owners.
	ms, stop, err = startMembers(5, 4, filepath.Join(dir, "join"), src, key, 4*512*mib, block)
	if err != nil {
		return err
	}
	if err := readAll(ms[:4], src, []string{"cold"}); err != nil {
		stop()
		return err
	}
	if err := setRing(ms); err != nil {
		stop()
		return err
	}
	before := src.reads.Load()
	err = readAll(ms, src, []string{"cold"})
	stop()
	if err != nil {
		return err
	}
	again := src.reads.Load() - before
	line("join 4 -> 5: source re-fetches after the join (all five read the file again)", fmt.Sprintf("%d of %d blocks", again, blocks), "about 0", float64(again) <= 0.01*float64(blocks))

	if err := hotFile(dir, src, key, block); err != nil {
		return err
	}

	ms, stop, err = startMembers(4, 4, filepath.Join(dir, "capacity"), src, key, 256*mib, block)
	if err != nil {
		return err
	}
	defer stop()
	refused, how := rogue(ms[0], key)
	line("a client without a certificate of the group's CA", how, "refused", refused)
	if err := readAll(ms, src, names); err != nil {
		return err
	}
	before = src.bytes.Load()
	if err := readAll(ms, src, names); err != nil {
		return err
	}
	second := src.bytes.Load() - before
	line(fmt.Sprintf("capacity: second pass over %d MiB on 4 x %d MiB members, source bytes", 768*mib>>20, 256*mib>>20),
		fmt.Sprint(second), "0", second == 0)
	return nil
}

func line(figure, value, goal string, pass bool) {
	v := "fail"
	if pass {
		v = "pass"
	}
	fmt.Printf("%s: %s (goal %s) %s\n", figure, value, goal, v)
}

func members(n int, weight func(i int) float64) []group.Member {
	var ms []group.Member
	for i := range n {
		ms = append(ms, group.Member{ID: fmt.Sprintf("node-%d", i), Weight: weight(i)})
	}
	return ms
}

func equal(int) float64 { return 1 }

func blocks(n int) []group.Block {
	bs := make([]group.Block, n)
	for i := range bs {
		// Files of 256 blocks (1 GiB), as a dataset of large shards.
		bs[i] = group.Block{Dataset: "research", Object: fmt.Sprintf("\"etag-%d\"", i/256), Index: int64(i % 256)}
	}
	return bs
}

func owners(ms []group.Member, bs []group.Block) ([]string, error) {
	r, err := group.NewRing(ms)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(bs))
	for i, b := range bs {
		m, ok := r.Owner(b)
		if !ok {
			return nil, fmt.Errorf("no owner for %v", b)
		}
		out[i] = m.ID
	}
	return out, nil
}

func run(n int) error {
	bs := blocks(n)
	four, err := owners(members(4, equal), bs)
	if err != nil {
		return err
	}
	count := map[string]int{}
	for _, o := range four {
		count[o]++
	}
	worst := 0
	for _, c := range count {
		worst = max(worst, c)
	}
	balance := float64(worst) / (float64(n) / 4)
	line(fmt.Sprintf("balance, 4 members, %d blocks: bytes owned max/mean", n), fmt.Sprintf("%.3f", balance), "<= 1.10", balance <= 1.10)

	weights := []float64{1, 2, 3, 4}
	weighted, err := owners(members(4, func(i int) float64 { return weights[i] }), bs)
	if err != nil {
		return err
	}
	count = map[string]int{}
	for _, o := range weighted {
		count[o]++
	}
	worstErr := 0.0
	for i, w := range weights {
		want := float64(n) * w / 10
		worstErr = max(worstErr, math.Abs(float64(count[fmt.Sprintf("node-%d", i)])-want)/want)
	}
	line("weighted shares (weights 1:2:3:4): largest deviation from the weight", fmt.Sprintf("%.1f%%", 100*worstErr), "<= 10%", worstErr <= 0.10)

	five, err := owners(members(5, equal), bs)
	if err != nil {
		return err
	}
	moved, between := 0, 0
	for i := range bs {
		if four[i] != five[i] {
			moved++
			if five[i] != "node-4" {
				between++
			}
		}
	}
	share := float64(moved) / float64(n)
	line("join 4 -> 5: blocks that change owner", fmt.Sprintf("%.1f%%, %d between old members", 100*share, between),
		"about 20%, none between old members", share >= 0.18 && share <= 0.22 && between == 0)

	var rest []group.Member
	for _, m := range members(4, equal) {
		if m.ID != "node-1" {
			rest = append(rest, m)
		}
	}
	three, err := owners(rest, bs)
	if err != nil {
		return err
	}
	others := 0
	for i := range bs {
		if four[i] != three[i] && four[i] != "node-1" {
			others++
		}
	}
	line("leave 4 -> 3: blocks moved that the leaver did not own", fmt.Sprint(others), "0", others == 0)

	return nil
}
