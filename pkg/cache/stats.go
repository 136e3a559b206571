package cache

import (
	"sort"
	"sync/atomic"
	"time"
)

// Stats are the cache's counters.
type Stats struct {
	Hits        int64 // block reads served from a tier
	Misses      int64 // blocks fetched from the source
	ReadThrough int64 // blocks served without storing (tier full or failing)
	Corrupt     int64 // blocks whose checksum failed
	SourceBytes int64 // bytes read from the source
	Evictions   int64 // items evicted
	TierBytes   map[string]int64
	// TierServed counts bytes served from each tier by the engine (reads
	// of passthrough files go to the kernel and are not seen).
	TierServed map[string]int64
	// SourceLatency is a histogram of source block fetches.
	SourceLatency Histogram
	// Filling is how many files read from a POSIX source in passthrough
	// wait to be cached, or are being cached (see Dataset.Fill).
	Filling int
	// IndexLoading is true until the index kept on disk is loaded (a
	// file read meanwhile loads its own entry first).
	IndexLoading bool
	// Dormant counts cached files whose items sleep (see dormant.go).
	Dormant int64
	// PeerBytes counts bytes other members of a cache group sent.
	PeerBytes int64
}

// DatasetStats are one dataset's share of the cache.
type DatasetStats struct {
	Hits        int64
	Misses      int64
	SourceBytes int64
	Files       int
	TierBytes   map[string]int64
}

// counters count what the engine did, node-wide or for one dataset. A
// dataset's also say what it holds, kept as items come and go so that
// stats and metrics cost the same at a thousand cached files as at a
// million.
type counters struct {
	hits, misses, readThrough, corrupt, sourceBytes, evictions atomic.Int64
	indexWrites                                                atomic.Int64 // node-wide: index files written
	peerBytes                                                  atomic.Int64 // bytes other members of a cache group sent

	// group is the dataset's cache group, or nil (JoinGroup).
	group atomic.Pointer[group]

	// INVARIANT: a dataset's files is the number of its items in the
	// map, and tierBytes[i] the sum of their bytes in tier i.
	files     atomic.Int64
	tierBytes []atomic.Int64 // by tier index
}

// latencyBuckets are the upper bounds, in seconds, of SourceLatency.
var latencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Histogram is a snapshot: Counts[i] observations fell in (Bounds[i-1],
// Bounds[i]]; the last count is above every bound. Sum is in seconds.
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Sum    float64
}

// LatencyHistogram counts latencies in the buckets of latencyBuckets; its
// zero value is ready to use.
type LatencyHistogram struct {
	counts [14]atomic.Uint64
	sumNs  atomic.Int64
}

// Observe counts one latency.
func (h *LatencyHistogram) Observe(d time.Duration) {
	i := sort.SearchFloat64s(latencyBuckets, d.Seconds())
	h.counts[i].Add(1)
	h.sumNs.Add(int64(d))
}

// Snapshot returns the counts so far.
func (h *LatencyHistogram) Snapshot() Histogram {
	out := Histogram{Bounds: latencyBuckets, Counts: make([]uint64, len(h.counts)), Sum: float64(h.sumNs.Load()) / 1e9}
	for i := range h.counts {
		out.Counts[i] = h.counts[i].Load()
	}
	return out
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	t := c.env.total
	s := Stats{
		Hits: t.hits.Load(), Misses: t.misses.Load(), ReadThrough: t.readThrough.Load(),
		Corrupt: t.corrupt.Load(), SourceBytes: t.sourceBytes.Load(), Evictions: t.evictions.Load(),
		TierBytes: map[string]int64{}, TierServed: map[string]int64{}, SourceLatency: c.env.fetch.latency.Snapshot(),
		Filling: c.Filling(), IndexLoading: !c.loadedAll.Load(), Dormant: c.asleep.Load(), PeerBytes: t.peerBytes.Load(),
	}
	for _, t := range c.tiers {
		s.TierBytes[t.Name] = t.used.Load()
		s.TierServed[t.Name] = t.served.Load()
	}
	return s
}

// countersLocked returns dataset's counters; c.mu is held.
func (c *Cache) countersLocked(dataset string) *counters {
	ct := c.perDS[dataset]
	if ct == nil {
		ct = &counters{tierBytes: make([]atomic.Int64, len(c.tiers))}
		c.perDS[dataset] = ct
	}
	return ct
}

// datasetStats returns the counters and cached bytes of one dataset.
func (c *Cache) datasetStats(dataset string) DatasetStats {
	c.mu.Lock()
	ct := c.countersLocked(dataset)
	c.mu.Unlock()
	s := DatasetStats{Hits: ct.hits.Load(), Misses: ct.misses.Load(), SourceBytes: ct.sourceBytes.Load(),
		Files: int(ct.files.Load()), TierBytes: map[string]int64{}}
	for _, t := range c.tiers {
		s.TierBytes[t.Name] = ct.tierBytes[t.index].Load()
	}
	return s
}
