// Package sorted holds what the daemon's packed maps share: their entries
// live in a slice sorted by key, and those added since the last merge wait
// in a Go map until they are a 32nd of it (see pkg/cache dormants and
// fusefs inoMap).
package sorted

import "slices"

// Merge sorts add and merges it into s, which cmp already orders, in
// place from the end; a slice without room grows by a 32nd more than it
// needs (append's growth, a quarter at these sizes, left an eighth of it
// unused on average). Keys must not be in both.
func Merge[S ~[]E, E any](s, add S, cmp func(a, b E) int) S {
	slices.SortFunc(add, cmp)
	n := len(s)
	if need := n + len(add); cap(s) < need {
		grown := make(S, n, need+need/32)
		copy(grown, s)
		s = grown
	}
	s = s[:n+len(add)]
	i, j := n-1, len(add)-1
	for k := len(s) - 1; j >= 0; k-- {
		if i >= 0 && cmp(s[i], add[j]) > 0 {
			s[k] = s[i]
			i--
		} else {
			s[k] = add[j]
			j--
		}
	}
	return s
}
