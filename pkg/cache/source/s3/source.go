// Package s3 serves a dataset from an S3-compatible store through the
// s3store client: keys as a file tree, listings and the first bytes of
// files kept for lookups, conditional reads of one version, and
// whole-object writes.
package s3

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/s3store"
	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Source serves a dataset from an S3-compatible store. Directory listings are
// kept for the dataset's metacache period, so the lookups that follow a
// readdir cost no request.
type Source struct {
	c       *s3store.Client
	ttl     time.Duration
	perm    Options   // owners and modes
	started time.Time // directories' modification time

	headSlots     chan struct{} // lookups that may hold a first-bytes buffer
	headsInFlight atomic.Int64  // lookups holding one now

	mu        sync.Mutex
	dirs      map[string]*dirListing // guarded by mu
	listing   map[string]bool        // guarded by mu; directories being listed for lookups
	heads     map[string]*head       // guarded by mu; first bytes fetched by lookups
	headBytes int64                  // guarded by mu; bytes held in heads
}

// lookupListing is how many entries a lookup lists of its directory: one
// request answers the lookups of up to that many siblings (a data loader
// opening the files of a directory one by one), where a HEAD per file
// would cost one request each.
const lookupListing = 1000

// Options configure an S3 source.
type Options struct {
	// MetaCache is how long listings are trusted (0: never).
	MetaCache time.Duration
	// UID and GID own every file and directory; FileMode and DirMode are
	// their permissions (0 takes 0644 and 0755). An object store has no
	// owners: these are what the kernel checks a caller against.
	UID, GID          uint32
	FileMode, DirMode fs.FileMode
}

// Default permissions of an S3 dataset's files and directories.
const (
	DefaultFileMode fs.FileMode = 0o644
	DefaultDirMode  fs.FileMode = 0o755
)

// New returns a source for the client's location.
func New(c *s3store.Client, o Options) *Source {
	if o.FileMode == 0 {
		o.FileMode = DefaultFileMode
	}
	if o.DirMode == 0 {
		o.DirMode = DefaultDirMode
	}
	return &Source{c: c, ttl: o.MetaCache, perm: o, headSlots: make(chan struct{}, headSlots), started: time.Now(), dirs: map[string]*dirListing{}, listing: map[string]bool{}, heads: map[string]*head{}}
}

var (
	_ source.Source    = (*Source)(nil)
	_ source.Versioned = (*Source)(nil)
	_ source.Objects   = (*Source)(nil)
)

func (s *Source) dirAttr() source.Attr {
	return source.Attr{Mode: fs.ModeDir | s.perm.DirMode, UID: s.perm.UID, GID: s.perm.GID, Mtime: s.started}
}

func (s *Source) fileAttr(o s3store.Object) source.Attr {
	mt := o.Mtime
	if mt.IsZero() {
		mt = s.started
	}
	return source.Attr{Mode: s.perm.FileMode, UID: s.perm.UID, GID: s.perm.GID, Size: o.Size, Mtime: mt, ETag: o.ETag}
}

// cached returns the listing of dir if it is fresh.
func (s *Source) cached(dir string) *dirListing {
	if s.ttl <= 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.dirs[dir]
	if l == nil || time.Since(l.at) > s.ttl {
		return nil
	}
	return l
}

// listInBackground starts a listing of up to lookupListing entries of dir
// unless one is fresh or running: the lookup that asks does not wait for it
// (a lookup costs one round trip), its siblings find it.
func (s *Source) listInBackground(dir string) {
	s.mu.Lock()
	if s.listing[dir] {
		s.mu.Unlock()
		return
	}
	s.listing[dir] = true
	s.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		objs, err := s.c.ListUpTo(ctx, dir, lookupListing)
		if err == nil {
			// Whole when it stopped short of its limit; an empty one
			// may be a directory gone since (List answers ENOENT
			// for it, after asking for its marker): never whole.
			s.keep(dir, objs, len(objs) > 0 && len(objs) < lookupListing)
		}
		s.mu.Lock()
		delete(s.listing, dir)
		s.mu.Unlock()
	}()
}

// keep stores a listing of dir, the whole directory's if complete, and
// returns its entries.
func (s *Source) keep(dir string, objs []s3store.Object, complete bool) []source.Entry {
	out := make([]source.Entry, 0, len(objs))
	ents := make(map[string]source.Attr, len(objs))
	for _, o := range objs {
		a := s.dirAttr()
		if !o.Dir {
			a = s.fileAttr(o)
		}
		out = append(out, source.Entry{Name: o.Name, Attr: a})
		ents[o.Name] = a
	}
	if s.ttl > 0 {
		s.mu.Lock()
		if len(s.dirs) > 65536 {
			clear(s.dirs)
		}
		l := &dirListing{at: time.Now(), entries: ents}
		if complete {
			l.list = out
		}
		s.dirs[dir] = l
		s.mu.Unlock()
	}
	return out
}

// forget drops the listings a change to name makes stale: its parent's,
// and its own if it is a directory.
func (s *Source) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.dirs, parentDir(name))
	delete(s.dirs, name)
	if h := s.heads[name]; h != nil {
		delete(s.heads, name)
		s.headBytes -= int64(len(h.data))
	}
}

func parentDir(name string) string {
	d := path.Dir(name)
	if d == "." {
		return ""
	}
	return d
}

// Stat implements source.Source: a fresh listing of the parent answers, else an
// object (HEAD) and then a directory (a listing of name/).
func (s *Source) Stat(ctx context.Context, name string) (source.Attr, error) {
	if err := source.CheckName(name); err != nil {
		return source.Attr{}, err
	}
	if name == "" {
		return s.dirAttr(), nil
	}
	// A listing answers "it exists"; "it does not" is always asked of
	// the store, because a name that appeared since (a volume the
	// controller just created, say) must be found. The kernel keeps
	// negative answers for at most a second.
	if s.ttl > 0 {
		if l := s.cached(parentDir(name)); l != nil {
			if a, ok := l.entries[path.Base(name)]; ok {
				return a, nil
			}
		} else {
			s.listInBackground(parentDir(name))
		}
	}
	o, err := s.lookup(ctx, name)
	if err == nil {
		return s.fileAttr(o), nil
	}
	if !errors.Is(err, syscall.ENOENT) {
		return source.Attr{}, err
	}
	ok, err := s.c.DirExists(ctx, name)
	switch {
	case err != nil:
		return source.Attr{}, err
	case !ok:
		return source.Attr{}, &fs.PathError{Op: "stat", Path: name, Err: syscall.ENOENT}
	}
	return s.dirAttr(), nil
}

// lookup finds the object name. While fewer than headSlots lookups are in
// flight it is a GET of the first bytes, not a HEAD: a small file's
// content comes with its attributes, and its first read then costs no
// request. Beyond that it is a HEAD: the buffers lookups hold are bounded,
// however many arrive at once.
func (s *Source) lookup(ctx context.Context, name string) (s3store.Object, error) {
	select {
	case s.headSlots <- struct{}{}:
	default:
		return s.c.Stat(ctx, name)
	}
	defer func() { <-s.headSlots }()
	s.headsInFlight.Add(1)
	defer s.headsInFlight.Add(-1)
	bp := headBufs.Get().(*[]byte)
	defer headBufs.Put(bp)
	o, n, err := s.c.StatRead(ctx, name, *bp)
	if err == nil {
		// A copy of exactly what came, not the 256 KiB buffer.
		s.keepHead(name, s.fileAttr(o), bytes.Clone((*bp)[:n]))
	}
	return o, err
}

// List implements source.Source: a fresh complete listing answers (a
// walk of the tree lists each directory again at every pass), else the
// store.
func (s *Source) List(ctx context.Context, dir string) ([]source.Entry, error) {
	if err := source.CheckName(dir); err != nil {
		return nil, err
	}
	if l := s.cached(dir); l != nil && l.list != nil {
		return slices.Clone(l.list), nil
	}
	objs, err := s.c.List(ctx, dir)
	if err != nil {
		return nil, err
	}
	if len(objs) == 0 && dir != "" {
		// An empty listing is a missing directory unless it has a marker.
		if ok, err := s.c.DirExists(ctx, dir); err != nil {
			return nil, err
		} else if !ok {
			return nil, &fs.PathError{Op: "readdir", Path: dir, Err: syscall.ENOENT}
		}
	}
	return s.keep(dir, objs, true), nil
}

// ReadAt implements source.Source (an unconditional read).
func (s *Source) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	return s.c.ReadAt(ctx, name, "", p, off)
}

// ReadAtVersion implements source.Versioned: the read names the ETag of the
// fingerprint (see source.Attr.Fingerprint). Bytes that came with the lookup are
// served without a request.
func (s *Source) ReadAtVersion(ctx context.Context, name, fingerprint string, p []byte, off int64, progress func(n int)) (int, error) {
	if n, ok := s.takeHead(name, fingerprint, p, off); ok {
		return n, nil
	}
	// A fingerprint of an object the store gave no ETag (some stores and
	// gateways do not) makes the read unconditional.
	etag, ok := strings.CutPrefix(fingerprint, "etag:")
	if !ok {
		etag = ""
	}
	n, err := s.c.ReadAtProgress(ctx, name, etag, p, off, progress)
	if errors.Is(err, syscall.ESTALE) {
		s.forget(name)
	}
	return n, err
}
