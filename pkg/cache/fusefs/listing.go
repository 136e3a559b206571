package fusefs

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// A READDIRPLUS (find, ls -l) looks every entry up right after the listing
// that named it: on a POSIX dataset those lookups take the attributes the
// listing has just read, instead of asking the source again (a POSIX
// source opened the parent and read each name's attributes a second
// time). An entry is used once, within listingTTL of the listing and never
// beyond the metacache period.
//
// On a read-write mount every change made through it forgets listings
// before and after it: a change of names (create, unlink, rename...)
// forgets its directories', a change of a file's attributes (a write, a
// truncate, fallocate, chmod...) forgets them all (the file may have other
// names, in other directories). The kernel takes the attributes of a
// lookup as newer than what it learnt by a write made before that
// lookup's request: a listing read before a local write (a file just
// created, size 0) and used after it would take back the size the write
// gave the file (its writer then read nothing back: the restart test
// caught it, before writes forgot listings).

// listingTTL bounds how old a listing's attributes may be when a lookup
// takes them.
const listingTTL = time.Second

// maxListed bounds the entries of a listing kept (larger directories are
// looked up one by one).
const maxListed = 10000

// listings are the few most recent directory listings.
type listings struct {
	// changes counts forgets: a listing read before one (of any
	// directory) is not kept, since it may predate the change.
	changes atomic.Uint64
	mu      sync.Mutex
	recent  [4]*listing // guarded by mu; most recent first
}

type listing struct {
	dir   uint64 // the directory's inode number
	at    time.Time
	attrs map[string]source.Attr
}

// generation returns the count of changes, to read before a listing.
func (l *listings) generation() uint64 { return l.changes.Load() }

// remember keeps the listing of directory dir, read after generation gen.
func (l *listings) remember(dir uint64, ents []source.Entry, gen uint64) {
	if len(ents) == 0 || len(ents) > maxListed || l.changes.Load() != gen {
		return
	}
	ls := &listing{dir: dir, at: time.Now(), attrs: make(map[string]source.Attr, len(ents))}
	for _, e := range ents {
		ls.attrs[e.Name] = e.Attr
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changes.Load() != gen {
		return // a change since the listing began
	}
	l.dropLocked(dir)
	copy(l.recent[1:], l.recent[:len(l.recent)-1])
	l.recent[0] = ls
}

// take returns the attributes of name in directory dir from a listing no
// older than ttl, and forgets them.
func (l *listings) take(dir uint64, name string, ttl time.Duration) (source.Attr, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, ls := range l.recent {
		if ls == nil || ls.dir != dir {
			continue
		}
		if time.Since(ls.at) > ttl {
			l.recent[i] = nil
			return source.Attr{}, false
		}
		a, ok := ls.attrs[name]
		if ok {
			delete(ls.attrs, name)
			if len(ls.attrs) == 0 {
				l.recent[i] = nil
			}
		}
		return a, ok
	}
	return source.Attr{}, false
}

// forget drops the listing of directory dir (a change in it: called
// before the change and after it, so a listing read meanwhile is dropped
// or never kept).
func (l *listings) forget(dir uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changes.Add(1)
	l.dropLocked(dir)
}

// forgetAll drops every listing (a file's attributes change: it may be
// named in any of them); called before the change and after it.
func (l *listings) forgetAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changes.Add(1)
	l.recent = [len(l.recent)]*listing{}
}

func (l *listings) dropLocked(dir uint64) {
	for i, ls := range l.recent {
		if ls != nil && ls.dir == dir {
			l.recent[i] = nil
		}
	}
}

// fromListing returns the attributes of name in dir from a recent listing
// (and forgets them), if the metacache period allows.
func (f *FS) fromListing(dir *node, name string) (source.Attr, bool) {
	ttl := min(listingTTL, f.opts.MetaCache)
	if ttl <= 0 {
		return source.Attr{}, false
	}
	return f.listed.take(dir.StableAttr().Ino, name, ttl)
}
