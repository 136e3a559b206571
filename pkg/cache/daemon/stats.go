package daemon

import (
	"sort"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// Stats returns the daemon's stats.
func (d *Daemon) Stats() api.StatsResponse {
	d.mu.Lock()
	ms := make([]*mounted, 0, len(d.datasets))
	for _, m := range d.datasets {
		ms = append(ms, m)
	}
	holders := map[string]int{}
	warm := map[string]*api.WarmupProgress{}
	for _, m := range ms {
		holders[m.key] = len(m.holders)
		if m.warm != nil {
			w := *m.warm
			warm[m.key] = &w
		}
	}
	d.mu.Unlock()
	cs := d.cache.Stats()
	resp := api.StatsResponse{Cache: cacheStats(cs), Group: d.groupStats(cs.PeerBytes)}
	for _, m := range ms {
		s := m.ds.Stats()
		resp.Datasets = append(resp.Datasets, api.DatasetInfo{Key: m.key, Dataset: m.req.Dataset, Source: m.req.Source, ReadOnly: m.req.ReadOnly,
			AccessPattern: m.pattern, MountPath: m.mnt, Holders: holders[m.key], Reads: m.fs.Reads.Load(), Nodes: m.fs.Nodes(), Warmup: warm[m.key],
			Stats: api.DatasetStats{Hits: s.Hits, Misses: s.Misses, SourceBytes: s.SourceBytes, Files: s.Files, TierBytes: s.TierBytes}})
	}
	sort.Slice(resp.Datasets, func(i, j int) bool { return resp.Datasets[i].Dataset < resp.Datasets[j].Dataset })
	return resp
}

// cacheStats is the engine's counters on the wire.
func cacheStats(s cache.Stats) api.CacheStats {
	return api.CacheStats{Hits: s.Hits, Misses: s.Misses, ReadThrough: s.ReadThrough, Corrupt: s.Corrupt,
		SourceBytes: s.SourceBytes, Evictions: s.Evictions, TierBytes: s.TierBytes, TierServed: s.TierServed,
		SourceLatency: apiHistogram(s.SourceLatency),
		Filling:       s.Filling, IndexLoading: s.IndexLoading, Dormant: s.Dormant}
}

// apiHistogram is an engine histogram on the wire.
func apiHistogram(h cache.Histogram) api.Histogram {
	return api.Histogram{Bounds: h.Bounds, Counts: h.Counts, Sum: h.Sum}
}
