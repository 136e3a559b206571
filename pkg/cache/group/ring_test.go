package group

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

func members(n int) []Member {
	var ms []Member
	for i := range n {
		ms = append(ms, Member{ID: fmt.Sprintf("node-%d", i), Weight: 1})
	}
	return ms
}

func blocks(n int) []Block {
	var bs []Block
	for i := range n {
		bs = append(bs, Block{Dataset: "ds", Object: fmt.Sprintf("etag-%d", i/64), Index: int64(i % 64)})
	}
	return bs
}

func mustRing(t *testing.T, ms []Member) *Ring {
	t.Helper()
	r, err := NewRing(ms)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func owners(t *testing.T, r *Ring, bs []Block) []string {
	t.Helper()
	out := make([]string, len(bs))
	for i, b := range bs {
		m, ok := r.Owner(b)
		if !ok {
			t.Fatal("no owner")
		}
		out[i] = m.ID
	}
	return out
}

// TestBalance: with equal weights, the most loaded of 4 members owns at
// most 10% more than the mean (100,000 blocks).
func TestBalance(t *testing.T) {
	r := mustRing(t, members(4))
	count := map[string]int{}
	bs := blocks(100_000)
	for _, o := range owners(t, r, bs) {
		count[o]++
	}
	mean := float64(len(bs)) / 4
	for id, n := range count {
		if float64(n)/mean > 1.10 {
			t.Errorf("%s owns %d blocks, %.2f of the mean (goal <= 1.10): %v", id, n, float64(n)/mean, count)
		}
	}
}

// TestWeights: shares follow the weights within 10%; a client-only member
// (weight 0) owns nothing.
func TestWeights(t *testing.T) {
	ms := []Member{{ID: "a", Weight: 1}, {ID: "b", Weight: 2}, {ID: "c", Weight: 4}, {ID: "client", Weight: 0}}
	r := mustRing(t, ms)
	count := map[string]int{}
	bs := blocks(70_000)
	for _, o := range owners(t, r, bs) {
		count[o]++
	}
	for _, m := range ms {
		want := float64(len(bs)) * m.Weight / 7
		got := float64(count[m.ID])
		if m.Weight == 0 {
			if got != 0 {
				t.Errorf("client-only member owns %v blocks", got)
			}
			continue
		}
		if math.Abs(got-want)/want > 0.10 {
			t.Errorf("%s (weight %v) owns %v blocks; want %v within 10%%", m.ID, m.Weight, got, want)
		}
	}
}

// TestJoinAndLeaveMoveOnlyTheirShare: 4 -> 5 moves about a fifth of the
// blocks, all to the newcomer, none between old members; a leave moves
// only the leaver's blocks.
func TestJoinAndLeaveMoveOnlyTheirShare(t *testing.T) {
	bs := blocks(100_000)
	before := owners(t, mustRing(t, members(4)), bs)
	after := owners(t, mustRing(t, members(5)), bs)
	moved := 0
	for i := range bs {
		if before[i] == after[i] {
			continue
		}
		moved++
		if after[i] != "node-4" {
			t.Fatalf("block %v moved from %s to %s: between two members that stayed", bs[i], before[i], after[i])
		}
	}
	if share := float64(moved) / float64(len(bs)); share < 0.18 || share > 0.22 {
		t.Errorf("a join moved %.3f of the blocks; want about 0.20", share)
	}
	// node-1 leaves: only its blocks move.
	var rest []Member
	for _, m := range members(4) {
		if m.ID != "node-1" {
			rest = append(rest, m)
		}
	}
	left := owners(t, mustRing(t, rest), bs)
	for i := range bs {
		if before[i] != left[i] && before[i] != "node-1" {
			t.Fatalf("block %v moved from %s, which stayed, to %s", bs[i], before[i], left[i])
		}
	}
}

// TestRankStartsWithTheOwner: the ranking starts with the owner, lists
// each owner once, and its second is the owner once the first is gone.
func TestRankStartsWithTheOwner(t *testing.T) {
	ms := members(5)
	r := mustRing(t, ms)
	for _, b := range blocks(2000) {
		rank := r.Rank(b, 5)
		o, _ := r.Owner(b)
		if len(rank) != 5 || rank[0].ID != o.ID {
			t.Fatalf("rank of %v = %v; owner %s", b, rank, o.ID)
		}
		seen := map[string]bool{}
		for _, m := range rank {
			if seen[m.ID] {
				t.Fatalf("rank of %v lists %s twice", b, m.ID)
			}
			seen[m.ID] = true
		}
		var without []Member
		for _, m := range ms {
			if m.ID != o.ID {
				without = append(without, m)
			}
		}
		if next, _ := mustRing(t, without).Owner(b); next.ID != rank[1].ID {
			t.Fatalf("without %s, %v is owned by %s; the rank says %s", o.ID, b, next.ID, rank[1].ID)
		}
	}
}

// TestPlacementIsStable: the hash is part of the protocol; members of
// different versions must place alike, or an upgrade moves every block.
func TestPlacementIsStable(t *testing.T) {
	r := mustRing(t, members(4))
	got := owners(t, r, []Block{{"ds", "etag-0", 0}, {"ds", "etag-0", 1}, {"ds", "etag-1", 0}, {"other", "etag-0", 0}})
	want := []string{"node-1", "node-1", "node-0", "node-0"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("owners %v; the placement changed (was %v): members of different versions would disagree", got, want)
	}
}

func TestBadMembers(t *testing.T) {
	for _, ms := range [][]Member{
		{{ID: ""}},
		{{ID: "a", Weight: 1}, {ID: "a", Weight: 1}},
		{{ID: "a", Weight: -1}},
		{{ID: "a", Weight: math.NaN()}},
	} {
		if _, err := NewRing(ms); err == nil {
			t.Errorf("NewRing(%v) accepted", ms)
		}
	}
	r := mustRing(t, []Member{{ID: "client", Weight: 0}})
	if _, ok := r.Owner(Block{}); ok {
		t.Error("a ring of client-only members has an owner")
	}
}

// TestRingsPerDataset: a dataset's blocks go only to the members that
// serve it.
func TestRingsPerDataset(t *testing.T) {
	ms := []Member{{ID: "a", Addr: "a:1", Weight: 1}, {ID: "b", Addr: "b:1", Weight: 1}, {ID: "c", Addr: "c:1", Weight: 1}}
	rings, err := Rings(ms, map[string][]string{"a": {"d1"}, "b": {"d1", "d2"}})
	if err != nil {
		t.Fatal(err)
	}
	ids := func(r *Ring) (out []string) {
		for _, m := range r.Owners() {
			out = append(out, m.ID)
		}
		return out
	}
	if len(rings) != 2 || !slices.Equal(ids(rings["d1"]), []string{"a", "b"}) || !slices.Equal(ids(rings["d2"]), []string{"b"}) {
		t.Fatalf("rings: %d, d1 %v, d2 %v", len(rings), ids(rings["d1"]), ids(rings["d2"]))
	}
}

// TestHandoffPerDataset: a change of one dataset's ring starts its
// hand-off; a later change of another dataset's ring leaves it running
// (a member that joined one dataset then another fetched its share of
// the first from the store).
func TestHandoffPerDataset(t *testing.T) {
	ring := func(ids ...string) *Ring {
		var ms []Member
		for _, id := range ids {
			ms = append(ms, Member{ID: id, Addr: id + ":1", Weight: 1})
		}
		r, err := NewRing(ms)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	d1, d2 := DatasetKey("s3://b/one", nil), DatasetKey("s3://b/two", nil)
	n := &Node{Self: "b"}
	n.SetRings(map[string]*Ring{DatasetID(d1): ring("a")})
	if _, prev := n.rings(d1); prev != nil {
		t.Fatal("a hand-off before any change")
	}
	n.SetRings(map[string]*Ring{DatasetID(d1): ring("a", "b")}) // b joins d1
	n.SetRings(map[string]*Ring{DatasetID(d1): ring("a", "b"), DatasetID(d2): ring("b")})
	cur, prev := n.rings(d1)
	if cur == nil || len(cur.Owners()) != 2 || prev == nil || len(prev.Owners()) != 1 || prev.Owners()[0].ID != "a" {
		t.Fatalf("d1 after d2 was added: ring %v, previous %v; want previous [a]", cur, prev)
	}
	if _, prev := n.rings(d2); prev != nil {
		t.Fatal("d2 is new: nothing to hand off from")
	}
}
