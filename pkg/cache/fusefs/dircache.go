package fusefs

import (
	"context"
	"errors"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Directory listings in the kernel's page cache (FOPEN_CACHE_DIR): a
// directory listed less than the metacache period ago is opened with the
// kernel's copy kept, and reading it again costs no READDIR at all (a
// walk of a tree the kernel holds then runs at the speed of its caches,
// as the entries' attributes are trusted for the same period). An open
// after the period first drops the kernel's copy, and the listing the
// kernel reads next (with each entry's attributes) starts a new one.
// Changes made through this mount reset the kernel's copy by themselves;
// a change made elsewhere shows once the period is over, as attributes
// and lookups do.
//
// Only a POSIX source's directories are kept so: the kernel also drops
// its copy when it sees the directory's modification time change (once
// the directory's attributes are older than the period), which bounds a
// copy's age where the invalidation cannot: a directory held open and
// rewound reads the copy without an OPENDIR, and the kernel keeps the
// copy of an empty directory whatever it is told (it has no page to
// drop). An object store's directories have no modification time that
// changes: every listing of one reaches the daemon, which answers from the
// source's own copy of it for the period.

var _ gofs.NodeOpendirHandler = (*node)(nil)

// OpendirHandle implements gofs.NodeOpendirHandler.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	mc := n.fsys.opts.MetaCache
	if _, posix := n.fsys.src.(source.Writable); !posix || mc < time.Second {
		// Listings are not trusted for a second, or a changed
		// directory would not show it: the kernel keeps none.
		return &dirHandle{n: n}, 0, 0
	}
	now := n.fsys.seconds()
	listed := n.listed.Load()
	// Whole seconds: the kernel's copy is less than now-listed+1
	// seconds old.
	if listed != 0 && listed <= now && time.Duration(now-listed+1)*time.Second <= mc {
		return &dirHandle{n: n}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
	}
	// The kernel's copy, if any, is older than the period, or of unknown
	// age (listed by an earlier server of a connection taken over):
	// dropped before the kernel reads a new one.
	if err := n.fsys.invalidateData(n); err != nil {
		// The old copy may stay: this open reads through the daemon
		// and keeps nothing.
		n.fsys.log.V(2).Info("Listing invalidation failed", "path", n.rel(), "err", err.Error())
		return &dirHandle{n: n}, 0, 0
	}
	return &dirHandle{n: n, cache: true}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// dirHandle is an open directory: its listing, taken from the source at
// the first read.
type dirHandle struct {
	n     *node
	cache bool // the kernel keeps what it reads: the first listing, from the start, marks the node listed
	ents  []fuse.DirEntry
	read  bool // ents was listed
	next  int  // index in ents of the next entry
}

var (
	_ gofs.FileReaddirenter = (*dirHandle)(nil)
	_ gofs.FileSeekdirer    = (*dirHandle)(nil)
	_ gofs.FileReleasedirer = (*dirHandle)(nil)
)

// list takes the directory's listing from the source.
func (h *dirHandle) list(ctx context.Context) syscall.Errno {
	at := h.n.fsys.seconds()
	ents, errno := h.n.entries(ctx)
	if errno != 0 {
		return errno
	}
	h.ents, h.read = ents, true
	if h.cache && h.next == 0 {
		h.n.listed.Store(at)
	}
	// A rewind lists again, into a copy the kernel may have partly
	// filled from this listing: only the first listing dates it.
	h.cache = false
	return 0
}

// Readdirent implements gofs.FileReaddirenter (go-fuse serializes a
// handle's reads).
func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if !h.read {
		if errno := h.list(ctx); errno != 0 {
			return nil, errno
		}
	}
	if h.next < 0 || h.next >= len(h.ents) {
		return nil, 0
	}
	e := h.ents[h.next]
	h.next++
	e.Off = uint64(h.next)
	return &e, 0
}

// Seekdir implements gofs.FileSeekdirer: offsets count entries, and
// seeking to the start lists the directory again (rewinddir(3)).
func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 {
		h.read, h.ents = false, nil
	}
	h.next = int(min(off, 1<<31))
	return 0
}

// Releasedir implements gofs.FileReleasedirer.
func (h *dirHandle) Releasedir(context.Context, uint32) { h.ents = nil }

// seconds is the time since the mount in whole seconds, counted from 1.
func (f *FS) seconds() uint32 { return uint32(time.Since(f.started)/time.Second) + 1 }

// invalidateData drops what the kernel caches of n's content (a file's
// pages, a directory's listing) and its attributes.
func (f *FS) invalidateData(n *node) error {
	var err error
	if f.sess != nil {
		err = f.sess.InvalidateInode(n.StableAttr().Ino, 0, 0)
	} else if errno := n.NotifyContent(0, 0); errno != 0 {
		err = errno
	}
	if errors.Is(err, syscall.ENOENT) {
		return nil // the kernel does not hold the inode: nothing to drop
	}
	return err
}
