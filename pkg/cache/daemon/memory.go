package daemon

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// memoryEvery is how often the daemon looks whether it is idle with
// memory to give back.
const memoryEvery = 5 * time.Second

// Thresholds of returnMemory.
const (
	// idleAllocs: a period that allocated less is idle.
	idleAllocs = 4 << 20
	// minReturn: less free heap than this stays with the process (nor
	// less than an eighth of the live heap: a return costs a collection,
	// whose work grows with the live heap).
	minReturn = 8 << 20
)

// memoryLoop gives the heap's free pages back to the system once the
// daemon is idle. Go's own scavenger keeps up to about the next GC's goal
// (twice the live heap): after a pass over many files, whose nodes and
// items the prune and the cleaner then free, the daemon stayed at 280 to
// 320 bytes a file it held 190 to 210 of (bench-scale, 100,000 idle
// files), depending on when the last return happened. Busy, it forces no
// collection.
func (d *Daemon) memoryLoop() {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/memory/classes/heap/free:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
	var last uint64
	d.every(memoryEvery, nil, func() bool {
		metrics.Read(s)
		allocs, free, live := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64()
		if returnMemory(allocs-last, free, live) {
			start := time.Now()
			debug.FreeOSMemory()
			d.log.V(3).Info("Idle: free memory returned to the system", "bytes", free, "took", time.Since(start))
			metrics.Read(s) // the collection's own allocations are not activity
			allocs = s[0].Value.Uint64()
		}
		last = allocs
		return true
	})
}

// returnMemory says whether free bytes of heap go back to the system
// after a period that allocated allocated bytes, with live bytes in use.
func returnMemory(allocated, free, live uint64) bool {
	return allocated < idleAllocs && free >= max(minReturn, live/8)
}
