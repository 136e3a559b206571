package cache

import (
	"sync/atomic"

	"k8s.io/klog/v2"
)

// tier is one directory of cached blocks with a byte quota.
type tier struct {
	TierOptions
	index int // in Cache.tiers

	// INVARIANT: used is the sum of Item.bytes over the items of this
	// tier (in the map, or being removed by the one goroutine that took
	// them out of it).
	used   atomic.Int64 // bytes of present blocks
	served atomic.Int64 // bytes served from this tier
	failed atomic.Bool  // a write failed; logged once
}

// writeFailed logs the first write failure of the tier: it then serves by
// reading through, and says so once rather than on every block.
func (t *tier) writeFailed(log klog.Logger, err error) {
	if !t.failed.Swap(true) {
		log.Error(err, "Cache tier cannot store blocks; reading through", "tier", t.Name)
	}
}
