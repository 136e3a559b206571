package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// compareSizes is the dataset the comparison reads: files of size bytes,
// one per reader of a node.
type compareSizes struct {
	files   int
	size    int64
	nodes   int
	readers int // per node
}

// compareResult is one mode's run.
type compareResult struct {
	storeBytes int64
	reads      []time.Duration // each 1 MiB read, cold
	took       time.Duration
	errors     int
}

// compare has the same readers read the same cold dataset on nodes that
// form a cache group and on as many independent nodes (real daemons in
// the lab, the store model in front of the store), and prints the store
// bytes and the read latency of each (make bench's cache-group section,
// and a figure of make bench-group); md, if set, gets the section as
// markdown.
func compare(dir, binDir string, block int64, c compareSizes, md string) error {
	files := map[string][]byte{}
	var names []string
	for i := range c.files {
		name := fmt.Sprintf("shards/shard-%03d", i)
		files[name] = pattern(c.size, uint64(1000+i))
		names = append(names, name)
	}
	dataset := int64(c.files) * c.size
	results := map[bool]compareResult{}
	for _, grouped := range []bool{false, true} {
		sub := filepath.Join(dir, map[bool]string{false: "independent", true: "group"}[grouped])
		r, err := compareRun(sub, binDir, block, c, files, names, grouped)
		if err != nil {
			return err
		}
		results[grouped] = r
	}
	ind, grp := results[false], results[true]
	value := fmt.Sprintf("store bytes %.2fx the dataset (independent %.2fx); 1 MiB reads p50/p99 %s (independent %s); %d nodes x %d readers, %d MiB",
		float64(grp.storeBytes)/float64(dataset), float64(ind.storeBytes)/float64(dataset), pq(grp.reads), pq(ind.reads), c.nodes, c.readers, dataset>>20)
	if n := ind.errors + grp.errors; n > 0 {
		value += fmt.Sprintf("; %d read errors", n)
	}
	pass := grp.errors == 0 && ind.errors == 0 && float64(grp.storeBytes) <= 1.05*float64(dataset)
	line(fmt.Sprintf("%d members vs %d independent nodes, %d readers reading the same cold dataset", c.nodes, c.nodes, c.nodes*c.readers), value,
		"the group reads the dataset from the store once (<= 1.05x), independent nodes once each", pass)
	if md == "" {
		return nil
	}
	if !pass {
		return fmt.Errorf("the comparison failed (%s): not written to %s", value, md)
	}
	f, err := os.OpenFile(md, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "\n## Cache group: %d members against %d independent nodes\n\n", c.nodes, c.nodes)
	fmt.Fprintf(f, "`make bench-group`'s comparison (`test/bench/group/compare.go`): %d real `cistern-cache` daemons, each in a network namespace of its own, read the same cold dataset (%d files of %d MiB, %d MiB) with %d readers each (%d in all, one file per reader, 1 MiB reads), from versitygw behind the store model (+%s each way, %d Mbit/s); once as independent nodes (no group), once as one cache group.\n\n",
		c.nodes, c.files, c.size>>20, dataset>>20, c.readers, c.nodes*c.readers, storeLatency, storeBandwidth/1_000_000)
	fmt.Fprintln(f, "| nodes | store bytes | of the dataset | 1 MiB read p50 | p99 | all readers done |")
	fmt.Fprintln(f, "|---|---|---|---|---|---|")
	for _, row := range []struct {
		name string
		r    compareResult
	}{{"independent", ind}, {"cache group", grp}} {
		fmt.Fprintf(f, "| %s | %d MiB | %.2fx | %.1f ms | %.1f ms | %s |\n", row.name, row.r.storeBytes>>20, float64(row.r.storeBytes)/float64(dataset),
			ms(quantile(row.r.reads, 0.5)), ms(quantile(row.r.reads, 0.99)), row.r.took.Round(100*time.Millisecond))
	}
	return f.Close()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// compareRun starts the nodes (a group, or independent), has every
// node's readers read the dataset at once, and returns what it cost.
func compareRun(dir, binDir string, block int64, c compareSizes, files map[string][]byte, names []string, grouped bool) (r compareResult, err error) {
	g, err := startNetGroup(dir, binDir, 4*int64(len(names))*int64(len(files[names[0]])), block, files)
	if err != nil {
		return r, err
	}
	defer g.close()
	g.independent = !grouped
	var ids []int
	for i := range c.nodes {
		ids = append(ids, i)
	}
	if err := g.setListed(ids...); err != nil {
		return r, err
	}
	for _, i := range ids {
		if _, err := g.start(i); err != nil {
			return r, err
		}
	}
	if grouped {
		if err := g.settle(ids...); err != nil {
			return r, err
		}
	}
	before := g.px.BytesDown.Load()
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for _, i := range ids {
		mnt := g.members[i].mnt
		for k := range c.readers {
			name := names[k%len(names)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				reads, err := readTimed(filepath.Join(mnt, name), files[name])
				mu.Lock()
				defer mu.Unlock()
				r.reads = append(r.reads, reads...)
				if err != nil {
					r.errors++
					fmt.Fprintf(os.Stderr, "compare: %v\n", err)
				}
			}()
		}
	}
	wg.Wait()
	r.took = time.Since(start)
	r.storeBytes = g.px.BytesDown.Load() - before
	return r, nil
}

// readTimed reads path whole in 1 MiB reads, checks it is want, and
// returns how long each read took.
func readTimed(path string, want []byte) ([]time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []time.Duration
	buf := make([]byte, 1<<20)
	for off := int64(0); off < int64(len(want)); off += int64(len(buf)) {
		start := time.Now()
		n, err := f.ReadAt(buf, off)
		out = append(out, time.Since(start))
		if m := min(int64(len(buf)), int64(len(want))-off); int64(n) != m || !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
			return out, fmt.Errorf("%s at %d: %d bytes (%v), or not the file's", path, off, n, err)
		}
	}
	return out, nil
}
