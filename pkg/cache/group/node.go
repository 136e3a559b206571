package group

import (
	"context"
	"sync/atomic"
)

// Node is a member as its cache sees the group: it places each block and
// asks the block's owner (then the next in its ranking) for it. It
// implements the cache engine's Peers.
type Node struct {
	// Self is this member's ID.
	Self string
	// Client reaches the other members.
	Client *Client
	// Fallbacks is how many members after the owner are asked when it
	// fails, before the source (default 1).
	Fallbacks int

	ring atomic.Pointer[Ring]
}

// SetRing sets the members (on a join or a leave).
func (n *Node) SetRing(r *Ring) { n.ring.Store(r) }

// Block asks the members ranked before this one for block index (size
// bytes) of name at version object of the group's dataset. owned: this member is the
// owner, or the next in line once those before it failed: it reads the
// source and stores the block.
func (n *Node) Block(ctx context.Context, dataset, name, object string, index int64, size int) ([]byte, bool, error) {
	r := n.ring.Load()
	if r == nil {
		return nil, true, nil
	}
	fallbacks := n.Fallbacks
	if fallbacks <= 0 {
		fallbacks = 1
	}
	var ask []Member
	self := false
	for _, m := range r.Rank(Block{Dataset: dataset, Object: object, Index: index}, fallbacks+1) {
		if m.ID == n.Self {
			self = true
			break
		}
		ask = append(ask, m)
	}
	if len(ask) == 0 {
		return nil, true, nil
	}
	b, _, err := n.Client.Fetch(ctx, ask, dataset, name, object, index, size)
	if err != nil {
		// Those before it failed: a member next in line owns the
		// block now; one further down, or a client-only member,
		// reads the source too (until the owner is back).
		return nil, self, err
	}
	return b, false, nil
}
