package fusefs

import (
	"math/rand/v2"
	"testing"
)

// TestInoMapIsAMap: through merges, deletions, compactions and numbers
// given again, the packed map answers as a Go map of the same operations
// does, and its sorted slice stays sorted with no key twice.
func TestInoMapIsAMap(t *testing.T) {
	m, want := newInoMap(), map[devIno]uint64{}
	r := rand.New(rand.NewPCG(1, 2))
	key := func() devIno { return devIno{uint64(r.IntN(3)), uint64(r.IntN(30000))} }
	for i := range 200000 {
		k := key()
		switch r.IntN(10) {
		case 0, 1, 2:
			m.delete(k)
			delete(want, k)
		default:
			n := uint64(i + 1)
			m.set(k, n)
			want[k] = n
		}
	}
	if m.len() != len(want) {
		t.Errorf("len %d, want %d", m.len(), len(want))
	}
	for k, n := range want {
		if got, ok := m.get(k); !ok || got != n {
			t.Fatalf("get %v = %d, %t; want %d", k, got, ok, n)
		}
	}
	for range 10000 {
		k := key()
		_, in := want[k]
		if _, ok := m.get(k); ok != in {
			t.Fatalf("get %v: found %t, want %t", k, ok, in)
		}
	}
	for i := 1; i < len(m.sorted); i++ {
		if cmpDevIno(m.sorted[i-1].key, m.sorted[i].key) >= 0 {
			t.Fatalf("sorted slice out of order at %d: %v then %v", i, m.sorted[i-1].key, m.sorted[i].key)
		}
	}
	if len(m.fresh) > max(inoMinMerge, len(m.sorted)/32) {
		t.Errorf("%d fresh entries beside %d sorted: not merged", len(m.fresh), len(m.sorted))
	}
	// Most keys deleted: the slice gives their room back.
	before := cap(m.sorted)
	kept := 0
	for k := range want {
		if kept < 100 {
			kept++
			continue
		}
		m.delete(k)
		delete(want, k)
	}
	if m.len() != len(want) || cap(m.sorted) > 4*inoMinMerge {
		t.Errorf("after deleting all but %d keys: len %d, room for %d entries (%d before)", len(want), m.len(), cap(m.sorted), before)
	}
	for k, n := range want {
		if got, ok := m.get(k); !ok || got != n {
			t.Fatalf("after the deletions: get %v = %d, %t; want %d", k, got, ok, n)
		}
	}
}
