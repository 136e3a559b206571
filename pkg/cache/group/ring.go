// Package group places a cache group's blocks on its members: the daemons
// of a node pool (and cache-only members) that form one cache, each block
// owned by one member, which fetches it from the source once and serves it
// to the others.
//
// Placement is weighted rendezvous hashing (highest random weight): every
// member scores every block, the highest score owns it, and the ranking
// gives the fallback owners. A join or a leave moves only the blocks whose
// highest score changed hands (about 1/N of them), never one between two
// members that stayed; a member of weight w owns a w/sum share. The score
// of member m for block b is -w / ln(u(m, b)), u uniform in (0, 1) from a
// hash of both (the logarithmic method: shares follow the weights exactly,
// however few the members). The hashes are fixed functions (FNV-1a and a
// 64-bit finaliser), so every member, in any process, ranks alike.
package group

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
)

// Member is one daemon of the group.
type Member struct {
	// ID names the member for placement: it must stay the same across its
	// restarts (the node name, or a StatefulSet pod's name), or its
	// blocks move.
	ID string
	// Addr is where its peers reach it (host:port).
	Addr string
	// Weight is its share of the blocks relative to the others (its
	// cache size, say); 0 is a client-only member, which uses the group
	// and owns nothing.
	Weight float64
}

// Block names one block of one version of a file of a dataset.
type Block struct {
	// Dataset is the dataset's key in the group (the same on every
	// member; it never contains credentials).
	Dataset string
	// Object is the version's identity: an ETag, or a POSIX file's
	// fingerprint.
	Object string
	// Index is the block's index in the file.
	Index int64
}

// hash is the block's 64-bit hash, the same in every process.
func (b Block) hash() uint64 {
	h := fnv.New64a()
	h.Write([]byte(b.Dataset))
	h.Write([]byte{0})
	h.Write([]byte(b.Object))
	var ix [8]byte
	binary.LittleEndian.PutUint64(ix[:], uint64(b.Index))
	h.Write(ix[:])
	return h.Sum64()
}

// Ring is an immutable placement over a set of members.
type Ring struct {
	owners []Member // Weight > 0, sorted by ID
	seeds  []uint64 // per owner: the hash of its ID
}

// NewRing returns the placement over members. IDs must be unique; members
// of weight 0 own nothing.
func NewRing(members []Member) (*Ring, error) {
	r := &Ring{}
	seen := map[string]bool{}
	for _, m := range members {
		switch {
		case m.ID == "":
			return nil, errors.New("cache group: a member has no ID")
		case seen[m.ID]:
			return nil, fmt.Errorf("cache group: member %q listed twice", m.ID)
		case m.Weight < 0 || math.IsNaN(m.Weight) || math.IsInf(m.Weight, 0):
			return nil, fmt.Errorf("cache group: member %q has weight %v; want a finite weight >= 0", m.ID, m.Weight)
		}
		seen[m.ID] = true
		if m.Weight > 0 {
			r.owners = append(r.owners, m)
		}
	}
	slices.SortFunc(r.owners, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	for _, m := range r.owners {
		h := fnv.New64a()
		h.Write([]byte(m.ID))
		r.seeds = append(r.seeds, h.Sum64())
	}
	return r, nil
}

// Owners returns the members that own blocks, by ID.
func (r *Ring) Owners() []Member { return slices.Clone(r.owners) }

// mix is a 64-bit finaliser (splitmix64's): nearby inputs give unrelated
// outputs.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// score is owner i's score for a block of hash bh.
func (r *Ring) score(i int, bh uint64) float64 {
	// 53 bits into (0, 1): never 0 or 1, so ln(u) is finite and < 0.
	u := (float64(mix(bh^r.seeds[i])>>11) + 0.5) / (1 << 53)
	return -r.owners[i].Weight / math.Log(u)
}

// Owner returns the member that owns b; false when no member owns blocks.
func (r *Ring) Owner(b Block) (Member, bool) {
	if len(r.owners) == 0 {
		return Member{}, false
	}
	bh := b.hash()
	best, bestScore := 0, r.score(0, bh)
	for i := 1; i < len(r.owners); i++ {
		if s := r.score(i, bh); s > bestScore {
			best, bestScore = i, s
		}
	}
	return r.owners[best], true
}

// Rank returns up to n members in the order they own b: the owner, then
// the member that would own it without the owner, and so on (where a
// reader turns when the owner is slow or gone, and where replicas of a
// hot block go).
func (r *Ring) Rank(b Block, n int) []Member {
	bh := b.hash()
	type scored struct {
		i int
		s float64
	}
	all := make([]scored, len(r.owners))
	for i := range r.owners {
		all[i] = scored{i, r.score(i, bh)}
	}
	slices.SortFunc(all, func(a, b scored) int { return cmp.Compare(b.s, a.s) })
	out := make([]Member, 0, min(n, len(all)))
	for _, s := range all[:min(n, len(all))] {
		out = append(out, r.owners[s.i])
	}
	return out
}
