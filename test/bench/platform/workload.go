package main

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/cistern-csi/cistern/test/bench/readers"
)

// dataset describes the generated data (names relative to the root).
type dataset struct {
	small     []string
	smallSize int64
	large     []string
	largeSize int64
}

// plan is what each reader ("pod") of a sweep step reads.
type plan struct {
	kind    string // small or large
	readers int
	// small: the files of reader i; large: the file and range of reader i.
	files  [][]string
	ranges []span
	unique int64 // bytes of the dataset the step touches
}

type span struct {
	file     string
	off, len int64
}

// makePlan seeds every reader's choice, so every system reads the same.
func makePlan(ds dataset, kind string, readers, perReaderFiles int, perReaderBytes int64) plan {
	p := plan{kind: kind, readers: readers}
	switch kind {
	case "small":
		seen := map[string]bool{}
		for i := range readers {
			perm := rand.New(rand.NewPCG(uint64(i), 42)).Perm(len(ds.small))
			var fs []string
			for _, j := range perm[:min(perReaderFiles, len(perm))] {
				fs = append(fs, ds.small[j])
				if !seen[ds.small[j]] {
					seen[ds.small[j]] = true
					p.unique += ds.smallSize
				}
			}
			p.files = append(p.files, fs)
		}
	case "large":
		type key struct {
			f   string
			off int64
		}
		seen := map[key]bool{}
		slots := max(1, ds.largeSize/perReaderBytes)
		for i := range readers {
			f := ds.large[i%len(ds.large)]
			off := (int64(i/len(ds.large)) % slots) * perReaderBytes
			p.ranges = append(p.ranges, span{f, off, perReaderBytes})
			if !seen[key{f, off}] {
				seen[key{f, off}] = true
				p.unique += perReaderBytes
			}
		}
	}
	return p
}

// result is one system's run of one plan.
type result struct {
	system, phase string // phase: cold, warm or "" (direct, native)
	kind          string
	readers       int
	reads         int
	avg, p99      time.Duration
	elapsed       time.Duration
	bytes         int64 // read by the readers
	storeBytes    int64 // sent by the store (through the proxy)
	unique        int64
	cpu           float64 // CPU seconds of the system's serving process (-1: none, or not measured)
	err           string
}

func (r result) label() string {
	if r.phase == "" {
		return r.system
	}
	return r.system + "-" + r.phase
}

// mibps is the aggregate throughput.
func (r result) mibps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.bytes) / (1 << 20) / r.elapsed.Seconds()
}

// run executes the plan with one goroutine per reader.
func run(acc access, p plan) result {
	res := result{kind: p.kind, readers: p.readers, unique: p.unique}
	lats := make([][]time.Duration, p.readers)
	bytes := make([]int64, p.readers)
	start := time.Now()
	err := readers.Parallel(p.readers, func(i int) error {
		buf := make([]byte, 1<<20)
		switch p.kind {
		case "small":
			for _, f := range p.files[i] {
				t := time.Now()
				n, err := acc.readFile(f, buf)
				if err != nil {
					return err
				}
				lats[i] = append(lats[i], time.Since(t))
				bytes[i] += n
			}
		case "large":
			s := p.ranges[i]
			return acc.readRange(s.file, s.off, s.len, buf, func(d time.Duration) {
				lats[i] = append(lats[i], d)
				bytes[i] += min(int64(len(buf)), s.len)
			})
		}
		return nil
	})
	res.elapsed = time.Since(start)
	if err != nil {
		res.err = err.Error()
	}
	var all []time.Duration
	for i := range lats {
		all = append(all, lats[i]...)
		res.bytes += bytes[i]
	}
	res.reads = len(all)
	if len(all) > 0 {
		slices.Sort(all)
		var sum time.Duration
		for _, d := range all {
			sum += d
		}
		res.avg = sum / time.Duration(len(all))
		res.p99 = all[min(len(all)-1, len(all)*99/100)]
	}
	return res
}

// rates are the warm single-node rates of one system.
type rates struct {
	system  string
	seq     float64 // MiB/s, one reader, a whole large file
	rand4k  float64 // IOPS
	small16 float64 // files/s, 16 readers over every small file
	err     string
}

func measureRates(name string, acc access, ds dataset, rounds int) rates {
	r := rates{system: name}
	buf := make([]byte, 1<<20)
	for range rounds {
		start := time.Now()
		err := acc.readRange(ds.large[0], 0, ds.largeSize, buf, func(time.Duration) {})
		if err != nil {
			r.err = err.Error()
			return r
		}
		r.seq = max(r.seq, float64(ds.largeSize)/(1<<20)/time.Since(start).Seconds())

		iops, err := acc.rand4k(ds.large[0], ds.largeSize, 200_000, 3*time.Second)
		if err != nil {
			r.err = err.Error()
			return r
		}
		r.rand4k = max(r.rand4k, iops)

		// Passes over every small file for at least a second (one pass
		// of a fast system takes milliseconds: its rate was noise).
		start = time.Now()
		var mu sync.Mutex
		var firstErr error
		files := 0
		for files == 0 || firstErr == nil && time.Since(start) < time.Second {
			_ = readers.Parallel(16, func(i int) error {
				b := make([]byte, 128<<10)
				for j := i; j < len(ds.small); j += 16 {
					if _, err := acc.readFile(ds.small[j], b); err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return err
					}
				}
				return nil
			})
			files += len(ds.small)
		}
		if firstErr != nil {
			r.err = fmt.Sprint(firstErr)
			return r
		}
		r.small16 = max(r.small16, float64(files)/time.Since(start).Seconds())
	}
	return r
}
