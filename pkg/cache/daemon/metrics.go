package daemon

import (
	"net/http"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are read from the daemon's counters at scrape time. Labels are
// bounded: dataset names (one per mounted dataset) and tier names.
var (
	descHits         = prometheus.NewDesc("cistern_cache_hits_total", "Block reads served from a cache tier.", []string{"dataset"}, nil)
	descMisses       = prometheus.NewDesc("cistern_cache_misses_total", "Blocks fetched from the source.", []string{"dataset"}, nil)
	descSourceBytes  = prometheus.NewDesc("cistern_cache_source_bytes_total", "Bytes read from the source.", []string{"dataset"}, nil)
	descDSBytes      = prometheus.NewDesc("cistern_cache_dataset_bytes", "Bytes of a dataset held in a tier (warm datasets, for scheduling hints).", []string{"dataset", "tier"}, nil)
	descTierBytes    = prometheus.NewDesc("cistern_cache_tier_bytes", "Bytes held in a tier.", []string{"tier"}, nil)
	descEvictions    = prometheus.NewDesc("cistern_cache_evictions_total", "Cached files evicted.", nil, nil)
	descReadThrough  = prometheus.NewDesc("cistern_cache_read_through_total", "Blocks served without being stored (tier full or failing).", nil, nil)
	descCorrupt      = prometheus.NewDesc("cistern_cache_corrupt_blocks_total", "Cached blocks that failed their checksum and were refetched.", nil, nil)
	descServed       = prometheus.NewDesc("cistern_cache_served_bytes_total", "Bytes the daemon served from a tier (passthrough reads go to the kernel and are not counted).", []string{"tier"}, nil)
	descLatency      = prometheus.NewDesc("cistern_cache_source_fetch_seconds", "Latency of block fetches from sources.", nil, nil)
	descMounted      = prometheus.NewDesc("cistern_cache_mounted_datasets", "Datasets mounted on this node.", nil, nil)
	descGroupBytes   = prometheus.NewDesc("cistern_group_peer_bytes_total", "Block bytes exchanged with the cache group's other members: in (sent by them) and out (sent to them).", []string{"group", "direction"}, nil)
	descGroupBlocks  = prometheus.NewDesc("cistern_group_blocks_served_total", "Blocks this member sent to the cache group's other members.", []string{"group"}, nil)
	descGroupReplica = prometheus.NewDesc("cistern_group_replica_blocks_served_total", "Blocks this member sent to the cache group's other members as a hot block's replica.", []string{"group"}, nil)
	descGroupSize    = prometheus.NewDesc("cistern_group_members", "Members of the cache group as last read.", []string{"group"}, nil)
	descGroupPeer    = prometheus.NewDesc("cistern_group_peer_fetch_seconds", "Latency of the blocks the cache group's other members sent, asked to received.", []string{"group"}, nil)
	descGroupOwner   = prometheus.NewDesc("cistern_group_owner", "1 when this member owns blocks of its cache group (0: client-only, or not listed yet).", []string{"group"}, nil)
	descNodes        = prometheus.NewDesc("cistern_cache_inodes", "Files and directories the mounts hold in memory for the kernel (bounded by --max-inodes).", nil, nil)
)

// collector reads the daemon's stats at each scrape.
type collector struct{ stats func() api.StatsResponse }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHits, descMisses, descSourceBytes, descDSBytes, descTierBytes, descEvictions, descReadThrough, descCorrupt, descMounted, descServed, descLatency, descNodes, descGroupBytes, descGroupBlocks, descGroupReplica, descGroupSize, descGroupOwner, descGroupPeer} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v int64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	gauge := func(d *prometheus.Desc, v int64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), l...)
	}
	// Two mounts of one dataset name (say, two credentials) add up.
	type agg struct{ hits, misses, src int64 }
	per := map[string]*agg{}
	tiers := map[[2]string]int64{}
	for _, ds := range s.Datasets {
		a := per[ds.Dataset]
		if a == nil {
			a = &agg{}
			per[ds.Dataset] = a
		}
		a.hits += ds.Stats.Hits
		a.misses += ds.Stats.Misses
		a.src += ds.Stats.SourceBytes
		for t, b := range ds.Stats.TierBytes {
			tiers[[2]string{ds.Dataset, t}] += b
		}
	}
	for name, a := range per {
		counter(descHits, a.hits, name)
		counter(descMisses, a.misses, name)
		counter(descSourceBytes, a.src, name)
	}
	for k, b := range tiers {
		gauge(descDSBytes, b, k[0], k[1])
	}
	for t, b := range s.Cache.TierBytes {
		gauge(descTierBytes, b, t)
	}
	for t, b := range s.Cache.TierServed {
		counter(descServed, b, t)
	}
	if g := s.Group; g != nil {
		counter(descGroupBytes, g.PeerBytesIn, g.Name, "in")
		counter(descGroupBytes, g.PeerBytesOut, g.Name, "out")
		counter(descGroupBlocks, g.BlocksOut, g.Name)
		counter(descGroupReplica, g.ReplicaBlocksOut, g.Name)
		gauge(descGroupSize, int64(len(g.Members)), g.Name)
		owner := int64(0)
		if g.Owner {
			owner = 1
		}
		gauge(descGroupOwner, owner, g.Name)
		ch <- constHistogram(descGroupPeer, g.PeerLatency, g.Name)
	}
	ch <- constHistogram(descLatency, s.Cache.SourceLatency)
	counter(descEvictions, s.Cache.Evictions)
	counter(descReadThrough, s.Cache.ReadThrough)
	counter(descCorrupt, s.Cache.Corrupt)
	gauge(descMounted, int64(len(s.Datasets)))
	var nodes int64
	for _, ds := range s.Datasets {
		nodes += ds.Nodes
	}
	gauge(descNodes, nodes)
}

// constHistogram is h as a Prometheus histogram (cumulative buckets).
func constHistogram(d *prometheus.Desc, h api.Histogram, labels ...string) prometheus.Metric {
	buckets := map[float64]uint64{}
	var cum, total uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		buckets[b] = cum
	}
	for _, n := range h.Counts {
		total += n
	}
	return prometheus.MustNewConstHistogram(d, total, h.Sum, buckets, labels...)
}

// metricsHandler serves /metrics from stats, and /healthz (for the
// container's liveness probe) from health.
func metricsHandler(stats func() api.StatsResponse, health http.HandlerFunc) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{stats})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", health)
	return mux
}
