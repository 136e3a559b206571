package sorted

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestMerge: merging batches of random keys into a slice gives the same
// slice as sorting them all, and its room stays within a 32nd of it.
func TestMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var s, all []int
	seen := map[int]bool{}
	for batch := range 100 {
		var add []int
		for range 1 + rng.IntN(batch*20+1) {
			k := rng.IntN(1 << 30)
			if !seen[k] {
				seen[k] = true
				add = append(add, k)
			}
		}
		all = append(all, add...)
		s = Merge(s, add, cmp.Compare[int])
		want := slices.Sorted(slices.Values(all))
		if !slices.Equal(s, want) {
			t.Fatalf("batch %d: merged %d keys out of order or lost", batch, len(s))
		}
		if len(s)+len(s)/32+1 < cap(s) {
			t.Fatalf("batch %d: %d keys in a slice of room for %d", batch, len(s), cap(s))
		}
	}
}
