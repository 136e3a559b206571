package group

import (
	"context"
	"slices"
	"sync"
	"time"
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
	// Handoff is how long after a change of members a block's new owner
	// asks its previous owner before the source (default 2m): a member
	// that joins takes over its blocks from those that held them, not
	// from the store.
	Handoff time.Duration

	hot hotSet // the blocks owners said are hot (hot.go)

	mu   sync.Mutex
	cur  *placement         // guarded by mu
	prev map[string]handoff // guarded by mu; by dataset ID ("" under SetRing): its ring before it last changed
	ids  sync.Map           // dataset key -> its ID
}

// placement is where blocks go: one ring for every dataset, or one per
// dataset (by its ID) over the members that serve it.
type placement struct {
	all *Ring
	by  map[string]*Ring
}

// key is the dataset's key in the placement and in Node.prev.
func (p *placement) key(id func() string) string {
	if p == nil || p.by == nil {
		return ""
	}
	return id()
}

func (p *placement) ring(key string) *Ring {
	switch {
	case p == nil:
		return nil
	case p.by != nil:
		return p.by[key]
	}
	return p.all
}

// handoff is a dataset's ring before its last change, asked until then.
type handoff struct {
	ring  *Ring
	until time.Time
}

// SetRing places every dataset's blocks over the ring's members.
func (n *Node) SetRing(r *Ring) { n.set(&placement{all: r}) }

// SetRings places each dataset's blocks over its own ring (by dataset
// ID, Rings); a dataset without one is read from the source.
func (n *Node) SetRings(by map[string]*Ring) { n.set(&placement{by: by}) }

// set changes the placement; each dataset whose ring changed hands off
// from its ring before (the others keep the hand-off they were in).
func (n *Node) set(p *placement) {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	for k, h := range n.prev {
		if now.After(h.until) {
			delete(n.prev, k)
		}
	}
	if old := n.cur; old != nil {
		period := n.Handoff
		if period <= 0 {
			period = 2 * time.Minute
		}
		keys := []string{""}
		if old.by != nil {
			keys = nil
			for k := range old.by {
				keys = append(keys, k)
			}
		}
		for _, k := range keys {
			was := old.ring(k)
			if was != nil && !sameRing(was, p.ring(k)) {
				if n.prev == nil {
					n.prev = map[string]handoff{}
				}
				n.prev[k] = handoff{ring: was, until: now.Add(period)}
			}
		}
	}
	n.cur = p
}

// sameRing: a and b have the same owners with the same weights.
func sameRing(a, b *Ring) bool {
	return a != nil && b != nil && slices.Equal(a.owners, b.owners)
}

// rings returns the dataset's ring and, within the hand-off period after
// it changed, its ring before.
func (n *Node) rings(dataset string) (cur, prev *Ring) {
	id := func() string {
		if v, ok := n.ids.Load(dataset); ok {
			return v.(string)
		}
		v := DatasetID(dataset)
		n.ids.Store(dataset, v)
		return v
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	k := n.cur.key(id)
	if h, ok := n.prev[k]; ok && time.Now().Before(h.until) {
		prev = h.ring
	}
	return n.cur.ring(k), prev
}

// Block asks the members ranked before this one for block index (size
// bytes) of name at version object of the group's dataset. owned: this
// member is the owner, or the next in line once those before it failed:
// it stores the block, which it reads from the source unless b holds it
// (sent by the block's owner before the last change of members, or by
// its owner to this member, the hot block's replica).
func (n *Node) Block(ctx context.Context, dataset, name, object string, index int64, size int) ([]byte, bool, error) {
	r, prev := n.rings(dataset)
	if r == nil {
		return nil, true, nil
	}
	fallbacks := n.Fallbacks
	if fallbacks <= 0 {
		fallbacks = 1
	}
	blk := Block{Dataset: dataset, Object: object, Index: index}
	var asks []ask
	self := false
	for _, m := range r.Rank(blk, fallbacks+1) {
		if m.ID == n.Self {
			self = true
			break
		}
		asks = append(asks, ask{Member: m})
	}
	if len(asks) == 0 {
		// This member owns the block: its previous owner may hold it.
		b, _ := n.fromPrevious(ctx, prev, blk, name, size)
		return b, true, nil
	}
	if len(asks) >= 2 && n.hot.hot(blk) && replicaFirst(n.Self, blk) {
		// A hot block: half the members ask its replica first.
		asks[0], asks[1] = ask{asks[1].Member, "replica"}, asks[0]
	}
	b, _, hot, err := n.Client.fetch(ctx, asks, dataset, name, object, index, size)
	if err != nil {
		// Those before it failed: a member next in line owns the
		// block now; one further down, or a client-only member,
		// reads the source too (until the owner is back).
		return nil, self, err
	}
	if hot {
		n.hot.mark(blk, HotFor)
		if self && len(asks) == 1 {
			// This member is the hot block's replica (the next after
			// the owner, which answered): it keeps what was sent.
			return b, true, nil
		}
	}
	return b, false, nil
}

// FromPrevious returns the block from the member that owned it before the
// last change of members, if this member owns it now and the hand-off
// period runs: for a block a peer asked this member for (the owner does
// not ask the group in turn, but takes over what was its predecessor's).
func (n *Node) FromPrevious(ctx context.Context, dataset, name, object string, index int64, size int) ([]byte, error) {
	r, prev := n.rings(dataset)
	blk := Block{Dataset: dataset, Object: object, Index: index}
	if r == nil || prev == nil {
		return nil, ErrNoPeer
	}
	if owner, ok := r.Owner(blk); !ok || owner.ID != n.Self {
		return nil, ErrNoPeer
	}
	return n.fromPrevious(ctx, prev, blk, name, size)
}

// fromPrevious asks the block's owner in the previous placement (if any,
// and not this member) for it.
func (n *Node) fromPrevious(ctx context.Context, prev *Ring, blk Block, name string, size int) ([]byte, error) {
	if prev == nil {
		return nil, ErrNoPeer
	}
	was, ok := prev.Owner(blk)
	if !ok || was.ID == n.Self {
		return nil, ErrNoPeer
	}
	b, _, err := n.Client.FetchCached(ctx, []Member{was}, blk.Dataset, name, blk.Object, blk.Index, size)
	return b, err
}

// Owns tells whether this member owns the block (or the dataset has no
// ring: it reads the source itself).
func (n *Node) Owns(dataset, object string, index int64) bool {
	r, _ := n.rings(dataset)
	if r == nil {
		return true
	}
	owner, ok := r.Owner(Block{Dataset: dataset, Object: object, Index: index})
	return !ok || owner.ID == n.Self
}
