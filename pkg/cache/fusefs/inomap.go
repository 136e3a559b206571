package fusefs

import (
	"cmp"
	"slices"

	"github.com/cistern-csi/cistern/pkg/cache/internal/sorted"
)

// inoMap maps a POSIX file's device and inode to the number the kernel
// sees it by, packed: the entries (24 bytes) live in a slice sorted by key
// (binary search) and a map of those set since the slice was last merged
// (at most a 32nd of it). A Go map of them cost 40 to 56 bytes an entry
// with its tables' slack, at a hundred thousand files and more most of an
// idle file's inode-table cost. A deleted entry is marked (number 0) until
// the next compaction. Not safe for concurrent use (inodes.mu guards it).
type inoMap struct {
	sorted []inoEntry // by key; number 0: deleted
	dead   int        // entries of sorted marked deleted
	fresh  map[devIno]uint64
}

type inoEntry struct {
	key devIno
	n   uint64
}

// inoMinMerge is how many fresh entries wait at least before a merge.
const inoMinMerge = 1024

func newInoMap() inoMap { return inoMap{fresh: map[devIno]uint64{}} }

func cmpDevIno(a, b devIno) int { return cmp.Or(cmp.Compare(a.dev, b.dev), cmp.Compare(a.ino, b.ino)) }

func (m *inoMap) find(k devIno) (int, bool) {
	return slices.BinarySearchFunc(m.sorted, k, func(e inoEntry, k devIno) int { return cmpDevIno(e.key, k) })
}

// get returns k's number.
func (m *inoMap) get(k devIno) (uint64, bool) {
	if n, ok := m.fresh[k]; ok {
		return n, true
	}
	if i, ok := m.find(k); ok && m.sorted[i].n != 0 {
		return m.sorted[i].n, true
	}
	return 0, false
}

// set gives k the number n (never 0).
func (m *inoMap) set(k devIno, n uint64) {
	if i, ok := m.find(k); ok {
		if m.sorted[i].n == 0 {
			m.dead--
		}
		m.sorted[i].n = n
		return
	}
	m.fresh[k] = n
	if len(m.fresh) > max(inoMinMerge, len(m.sorted)/32) {
		m.merge()
	}
}

// delete forgets k.
func (m *inoMap) delete(k devIno) {
	if _, ok := m.fresh[k]; ok {
		delete(m.fresh, k)
		return
	}
	if i, ok := m.find(k); ok && m.sorted[i].n != 0 {
		m.sorted[i].n = 0
		m.dead++
		if m.dead > max(inoMinMerge, len(m.sorted)/4) {
			m.merge()
		}
	}
}

// len is the number of keys.
func (m *inoMap) len() int { return len(m.sorted) - m.dead + len(m.fresh) }

// merge drops the deleted entries and merges the fresh ones into the
// slice (at a million entries a few milliseconds under inodes.mu).
func (m *inoMap) merge() {
	add := make([]inoEntry, 0, len(m.fresh))
	for k, n := range m.fresh {
		add = append(add, inoEntry{k, n})
	}
	if m.dead > 0 {
		m.sorted = slices.DeleteFunc(m.sorted, func(e inoEntry) bool { return e.n == 0 })
		if cap(m.sorted) > 2*(len(m.sorted)+len(add)) {
			m.sorted = slices.Clone(m.sorted) // most were deleted: their room goes
		}
	}
	m.sorted, m.dead = sorted.Merge(m.sorted, add, func(a, b inoEntry) int { return cmpDevIno(a.key, b.key) }), 0
	if len(m.fresh) > 4*inoMinMerge {
		m.fresh = map[devIno]uint64{} // a map does not shrink: its tables held the last batch
	} else {
		clear(m.fresh)
	}
}
