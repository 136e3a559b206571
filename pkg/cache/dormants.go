package cache

import (
	"bytes"
	"iter"
	"slices"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/internal/sorted"
)

// dormants are the dormant records by item hash, kept small: at a million
// sleeping files they were most of the daemon's memory (a Go map of 56-byte
// entries, 130 bytes a record with its slack). A record is 40 bytes: its
// 16-byte key, its files' generation, its bytes, and its last use in
// milliseconds packed with an index into a table of the (dataset, tier)
// pairs seen. The records live in a slice sorted by key (binary search)
// and a map of those added since the slice was last merged (at most a
// 32nd of it; the slice grows a 32nd at a time). A removed record is
// marked dead in the slice until the next compaction. A merge holds the
// cache's lock: at a million records it takes about 20 ms (with an
// eighth, 40 ms), once every 30,000 records put to sleep.
type dormants struct {
	sorted []dormantRec // by key
	dead   int          // records of sorted marked dead
	fresh  map[[16]byte]sleeper
	pairs  []dormantPair          // by index
	pairIx map[dormantPair]uint32 // the index of each pair
	// more: the records of pairs past the packed index's bound (never
	// in practice: a pair is a dataset and a tier).
	more map[[16]byte]dormant
}

type dormantRec struct {
	key [16]byte
	sleeper
}

type sleeper struct {
	gen   uint64
	bytes int64
	// use is the last use in Unix milliseconds << pairBits | the pair's
	// index in dormants.pairs (deadPair: a removed record).
	use uint64
}

const (
	pairBits = 20
	deadPair = 1<<pairBits - 1
	// minMerge is how many fresh records wait at least before a merge.
	minMerge = 1024
)

type dormantPair struct {
	ctr  *counters
	tier *tier
}

func newDormants() dormants {
	return dormants{fresh: map[[16]byte]sleeper{}, pairIx: map[dormantPair]uint32{}, more: map[[16]byte]dormant{}}
}

func (s *dormants) len() int { return len(s.sorted) - s.dead + len(s.fresh) + len(s.more) }

// recAt orders a record against key k.
func recAt(r dormantRec, k [16]byte) int { return bytes.Compare(r.key[:], k[:]) }

// find returns where hk is in sorted, if it is there and alive.
func (s *dormants) find(hk [16]byte) (int, bool) {
	i, ok := slices.BinarySearchFunc(s.sorted, hk, recAt)
	return i, ok && s.sorted[i].use&deadPair != deadPair
}

func (s *dormants) get(hk [16]byte) (dormant, bool) {
	if r, ok := s.fresh[hk]; ok {
		return s.unpack(r), true
	}
	if i, ok := s.find(hk); ok {
		return s.unpack(s.sorted[i].sleeper), true
	}
	d, ok := s.more[hk]
	return d, ok
}

func (s *dormants) unpack(r sleeper) dormant {
	p := s.pairs[r.use&deadPair]
	return dormant{ctr: p.ctr, tier: p.tier, gen: r.gen, bytes: r.bytes, atime: int64(r.use>>pairBits) * int64(time.Millisecond)}
}

func (s *dormants) set(hk [16]byte, d dormant) {
	s.delete(hk)
	k := dormantPair{d.ctr, d.tier}
	ix, ok := s.pairIx[k]
	if !ok && len(s.pairs) < deadPair {
		ix, ok = uint32(len(s.pairs)), true
		s.pairs = append(s.pairs, k)
		s.pairIx[k] = ix
	}
	if !ok {
		s.more[hk] = d
		return
	}
	ms := uint64(max(d.atime, 0) / int64(time.Millisecond))
	r := sleeper{gen: d.gen, bytes: d.bytes, use: ms<<pairBits | uint64(ix)}
	if i, found := slices.BinarySearchFunc(s.sorted, hk, recAt); found {
		// Its dead place in the slice takes it back.
		s.sorted[i].sleeper = r
		s.dead--
		return
	}
	s.fresh[hk] = r
	if len(s.fresh) > max(minMerge, (len(s.sorted)-s.dead)/32) {
		s.merge()
	}
}

func (s *dormants) delete(hk [16]byte) {
	if _, ok := s.fresh[hk]; ok {
		delete(s.fresh, hk)
		return
	}
	if i, ok := s.find(hk); ok {
		s.sorted[i].use |= deadPair
		s.dead++
		if s.dead > max(minMerge, len(s.sorted)/4) {
			s.compact()
		}
		return
	}
	delete(s.more, hk)
}

// compact drops the dead records from sorted.
func (s *dormants) compact() {
	if s.dead == 0 {
		return
	}
	s.sorted = slices.DeleteFunc(s.sorted, func(r dormantRec) bool { return r.use&deadPair == deadPair })
	s.dead = 0
}

// merge moves the fresh records into sorted (in place, from the end).
func (s *dormants) merge() {
	s.compact()
	add := make([]dormantRec, 0, len(s.fresh))
	for k, r := range s.fresh {
		add = append(add, dormantRec{k, r})
	}
	s.sorted = sorted.Merge(s.sorted, add, func(a, b dormantRec) int { return bytes.Compare(a.key[:], b.key[:]) })
	s.fresh = map[[16]byte]sleeper{}
}

// all yields every record; the records must not change meanwhile.
func (s *dormants) all() iter.Seq2[[16]byte, dormant] {
	return func(yield func([16]byte, dormant) bool) {
		for _, r := range s.sorted {
			if r.use&deadPair != deadPair && !yield(r.key, s.unpack(r.sleeper)) {
				return
			}
		}
		for hk, r := range s.fresh {
			if !yield(hk, s.unpack(r)) {
				return
			}
		}
		for hk, d := range s.more {
			if !yield(hk, d) {
				return
			}
		}
	}
}

// shrink gives back the room of records removed (many at once: the end
// of a mass eviction).
func (s *dormants) shrink() {
	s.compact()
	if cap(s.sorted) > 2*len(s.sorted) {
		s.sorted = slices.Clone(s.sorted)
	}
}
