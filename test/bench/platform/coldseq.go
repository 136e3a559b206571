package main

import (
	"context"
	"time"

	"github.com/cistern-csi/cistern/test/bench/storemodel"
)

// The cold sequential step: one reader reads a whole large file, cold, in
// 1 MiB reads (`direct`: one streamed GET of it), as a training job's
// first pass over a shard does. Its throughput against the store model's
// bandwidth is the "one reader of a cold 1 GiB object" figure
// (the sweep's single reader reads only perReaderBytes of a file, too
// little for a window that grows to fill the link).

// measureColdSeq reads the first large file once through every system
// with a cold phase, and through direct.
func measureColdSeq(ctx context.Context, systems []*system, ds dataset, px *storemodel.Proxy) ([]result, error) {
	p := plan{kind: "large", readers: 1, ranges: []span{{ds.large[0], 0, ds.largeSize}}, unique: ds.largeSize}
	var out []result
	for _, sys := range systems {
		if sys.skip != "" || sys.name == "native" {
			continue
		}
		phase := sys.phases()[0]
		if phase == "cold" {
			if err := sys.makeCold(ctx); err != nil {
				return nil, err
			}
		}
		before := px.BytesDown.Load()
		r := run(sys.acc, p)
		r.system, r.phase, r.storeBytes = sys.name, phase, px.BytesDown.Load()-before
		out = append(out, r)
		say("cold seq %-13s %5d MiB in %8s: %7.1f MiB/s %s", r.label(), r.bytes>>20, r.elapsed.Round(time.Millisecond), r.mibps(), r.err)
	}
	return out, nil
}
