package group

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// replicaOf is blocksOf that also answers as a hot block's replica,
// counting those asks.
type replicaOf struct {
	blocksOf
	replicaAsks atomic.Int64
}

func (s *replicaOf) ReplicaBlock(ctx context.Context, name, object string, index int64) ([]byte, error) {
	s.replicaAsks.Add(1)
	return s.blocksOf.Block(ctx, name, object, index)
}

// TestHotBlocksAreSpreadOverTheirReplica: once a block's owner says it is
// hot, half the members ask its replica (the next in its ranking) first,
// and the owner serves the others; until then every ask goes to the
// owner. Each member asks the same one each time.
func TestHotBlocksAreSpreadOverTheirReplica(t *testing.T) {
	stc, ctc := groupTLS(t)
	key := DatasetKey("s3://bucket/research", []byte("secret"))
	srcs := map[string]*replicaOf{}
	var ms []Member
	for _, id := range []string{"a", "b"} {
		s := NewServer()
		s.HotAsks = 1 // every answer says hot
		srcs[id] = &replicaOf{blocksOf: blocksOf{version: "v1"}}
		s.Serve(key, srcs[id])
		ms = append(ms, startPeer(t, id, s, stc))
	}
	ring, err := NewRing(ms)
	if err != nil {
		t.Fatal(err)
	}
	blk := Block{Dataset: key, Object: "v1", Index: 3}
	rank := ring.Rank(blk, 2)
	owner, replica := srcs[rank[0].ID], srcs[rank[1].ID]
	const askers = 40
	first := 0
	for i := range askers {
		n := &Node{Self: fmt.Sprint("asker-", i), Client: client(ctc)}
		n.SetRing(ring)
		for ask := range 3 {
			b, owned, err := n.Block(context.Background(), key, "f", "v1", 3, 1000)
			if err != nil || owned || !bytes.Equal(b, bytes.Repeat([]byte{3}, 1000)) {
				t.Fatalf("%s, ask %d: %d bytes, owned %v, %v", n.Self, ask, len(b), owned, err)
			}
		}
		if replicaFirst(n.Self, blk) {
			first++
		}
	}
	if first < askers/4 || first > askers*3/4 {
		t.Errorf("%d of %d members ask the replica first; want about half", first, askers)
	}
	// The first ask of each went to the owner; the two after it to the
	// replica for those that ask it first.
	if got := replica.replicaAsks.Load(); got != int64(2*first) {
		t.Errorf("the replica was asked %d times as a replica; want %d", got, 2*first)
	}
	if got, want := owner.served.Load(), int64(askers+2*(askers-first)); got != want {
		t.Errorf("the owner served %d blocks; want %d", got, want)
	}
	if got := owner.replicaAsks.Load() + replica.served.Load() - replica.replicaAsks.Load(); got != 0 {
		t.Errorf("%d asks went elsewhere", got)
	}
}

// TestHeat: a block is hot once its asks in this window and the one
// before reach the bound; asks older than that are forgotten.
func TestHeat(t *testing.T) {
	var h heat
	b := Block{Dataset: "d", Object: "v", Index: 1}
	const w = time.Minute
	t0 := time.Now()
	if n := h.ask(b, w, t0); n != 1 {
		t.Fatalf("first ask: %d", n)
	}
	if n := h.ask(b, w, t0.Add(time.Second)); n != 2 {
		t.Fatalf("second ask: %d", n)
	}
	if n := h.ask(Block{Dataset: "d", Object: "v", Index: 2}, w, t0.Add(time.Second)); n != 1 {
		t.Fatalf("another block's first ask: %d", n)
	}
	if n := h.ask(b, w, t0.Add(w)); n != 3 {
		t.Fatalf("an ask in the next window: %d; want 3 (this window's and the last's)", n)
	}
	if n := h.ask(b, w, t0.Add(3*w)); n != 1 {
		t.Fatalf("an ask two windows later: %d; want 1", n)
	}
	const short = 50 * time.Millisecond
	var s hotSet
	s.mark(b, short)
	if !s.hot(b) || s.hot(Block{Dataset: "d", Object: "v", Index: 2}) {
		t.Fatal("marked hot: not so; or another block hot")
	}
	time.Sleep(short + 10*time.Millisecond)
	if s.hot(b) {
		t.Fatal("still hot after its time")
	}
}
