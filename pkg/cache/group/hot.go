package group

import (
	"hash/fnv"
	"sync"
	"time"
)

// Hot blocks. A block many members read (a shared index, a model's
// weights, the first shard every worker opens) is asked of its owner over
// and over: the owner counts the asks of each block it answers, and once a
// block's reach HotAsks within a HotWindow its answer says so. An asker
// told so remembers the block as hot for a while and sends half its asks
// (half the members, by a hash of each member and the block) to the
// block's replica, the next member in its ranking, which keeps a copy
// (fetched from the owner once, then from its cache). The owner serves
// half the asks, and when it dies its askers' next choice already holds
// the block: no fetch from the source.
//
//	GET /v1/blocks/<dataset ID>/<index>?q=<sealed>&replica=1
//
// asks the replica: from its cache, or from the owner once and kept.
// An owner's answer of a hot block carries the header Cistern-Hot: 1.

// HotHeader marks an owner's answer of a hot block.
const HotHeader = "Cistern-Hot"

// DefaultHotAsks is Server.HotAsks's default; asks are counted over
// HotWindow (and the one before), and an asker asks a hot block's replica
// for HotFor after its owner last said it is hot.
const (
	DefaultHotAsks = 8
	HotWindow      = time.Minute
	HotFor         = 2 * time.Minute
)

// heatCap bounds the blocks counted in a window: past it, new blocks are
// not counted until the next (a scan of a huge dataset is not hot).
const heatCap = 1 << 16

// heat counts the asks of each block over the current and the previous
// window.
type heat struct {
	mu        sync.Mutex
	cur, prev map[Block]int // guarded by mu
	since     time.Time     // guarded by mu; when cur began
}

// ask counts one ask of b at now and returns its asks in this window and
// the one before.
func (h *heat) ask(b Block, window time.Duration, now time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cur == nil || now.Sub(h.since) >= window {
		h.prev = h.cur
		if now.Sub(h.since) >= 2*window {
			h.prev = nil // no ask in the whole window before
		}
		h.cur, h.since = map[Block]int{}, now
	}
	n, ok := h.cur[b]
	if ok || len(h.cur) < heatCap {
		h.cur[b] = n + 1
		n++
	}
	return n + h.prev[b]
}

// hotSet is the blocks an asker was told are hot, each until a time.
type hotSet struct {
	mu    sync.Mutex
	until map[Block]time.Time // guarded by mu
}

func (s *hotSet) mark(b Block, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.until == nil {
		s.until = map[Block]time.Time{}
	}
	if _, ok := s.until[b]; !ok && len(s.until) >= heatCap {
		for k, t := range s.until {
			if now.After(t) {
				delete(s.until, k)
			}
		}
		if len(s.until) >= heatCap {
			return
		}
	}
	s.until[b] = now.Add(d)
}

func (s *hotSet) hot(b Block) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.until[b]
	if ok && time.Now().After(t) {
		delete(s.until, b)
		return false
	}
	return ok
}

// replicaFirst tells whether member self asks block b's replica before
// its owner: half the members do, the same half for a block every time.
func replicaFirst(self string, b Block) bool {
	h := fnv.New64a()
	h.Write([]byte(self))
	return mix(h.Sum64()^b.hash())&1 == 1
}
