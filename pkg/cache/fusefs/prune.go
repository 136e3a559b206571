package fusefs

import (
	"cmp"
	"slices"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// A node costs the daemon about 0.7 KiB (go-fuse's inode and its place in
// its parent's children, the node and its attributes) for as long as the
// kernel holds the file: its dentry cache keeps every file looked up
// until memory runs short, so the daemon would grow with every file ever
// touched. Prune bounds that: it asks the kernel to forget the least
// recently used files no process uses (FUSE_NOTIFY_PRUNE), which it does
// by sending FORGET; a later access looks the file up again.

var _ gofs.NodeOnForgetter = (*node)(nil)

// counted marks n as one of the nodes the file system holds (Nodes).
func (f *FS) counted(in *gofs.Inode, n *node) {
	if in.Operations() == gofs.InodeEmbedder(n) {
		f.nodes.Add(1)
	}
}

// OnForget implements gofs.NodeOnForgetter: the kernel forgot n.
func (n *node) OnForget() {
	if !n.IsRoot() && !n.forgotten.Swap(true) {
		n.fsys.nodes.Add(-1)
	}
}

// Nodes returns how many files and directories the file system holds in
// memory for the kernel.
func (f *FS) Nodes() int64 { return f.nodes.Load() }

// touch records that the kernel used n now (to the second).
func (n *node) touch() {
	n.used.Store(n.fsys.seconds())
}

// pruneBatch is the most node IDs one notification carries.
const pruneBatch = 256

// Prune asks the kernel to forget the k least recently used files and
// empty directories it holds (a directory goes once what was under it has
// gone: a later prune); it skips open files, and the kernel keeps what a
// process uses. It returns
// how many it asked about; the count of Nodes falls as the kernel's
// FORGETs arrive. ENOSYS: the kernel cannot prune (older than Linux 6.18).
func (f *FS) Prune(k int) (int, error) {
	if k <= 0 {
		return 0, nil
	}
	type cand struct {
		used  uint32
		depth int
		ino   uint64
	}
	var cands []cand
	var walk func(children map[string]*gofs.Inode, depth int)
	walk = func(children map[string]*gofs.Inode, depth int) {
		for _, c := range children {
			n, ok := c.Operations().(*node)
			if !ok {
				continue
			}
			kids := c.Children()
			walk(kids, depth+1)
			if len(kids) > 0 {
				// The kernel keeps a directory while it holds what
				// is in it: asking would spend the count on it.
				continue
			}
			n.mu.Lock()
			open := n.cachedOpens+n.passthroughOpens > 0
			n.mu.Unlock()
			if !open {
				cands = append(cands, cand{used: n.used.Load(), depth: depth, ino: c.StableAttr().Ino})
			}
		}
	}
	walk(f.root.EmbeddedInode().Children(), 0)
	// Oldest first; of the same second, the deepest first (the kernel
	// cannot forget a directory while it holds what is in it), then the
	// lowest number: numbers are given in turn, so the nodes kept are the
	// newest, side by side in the heap. In map order they were scattered
	// over the spans of the last second's nodes, which stayed in use.
	slices.SortFunc(cands, func(a, b cand) int {
		return cmp.Or(cmp.Compare(a.used, b.used), cmp.Compare(b.depth, a.depth), cmp.Compare(a.ino, b.ino))
	})
	cands = cands[:min(k, len(cands))]
	ids := make([]uint64, 0, pruneBatch)
	sent := 0
	for i, c := range cands {
		ids = append(ids, c.ino)
		if len(ids) < pruneBatch && i < len(cands)-1 {
			continue
		}
		if err := f.prune(ids); err != nil {
			return sent, err
		}
		sent += len(ids)
		ids = ids[:0]
	}
	return sent, nil
}

// prune sends one FUSE_NOTIFY_PRUNE.
func (f *FS) prune(ids []uint64) error {
	if f.sess != nil {
		return f.sess.Prune(ids)
	}
	if st := f.srv.PruneNotify(ids); !st.Ok() {
		return syscall.Errno(st)
	}
	return nil
}
