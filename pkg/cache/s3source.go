package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/s3"
)

// VersionedSource reads one version of a file: a store that can make a read
// conditional (S3 If-Match on the ETag) implements it, so a block of a newer
// version is never stored under an older version's index. A read of a
// version that is gone fails with an error wrapping syscall.ESTALE.
//
// progress, if not nil, is called as bytes arrive with how many of p are
// final, so waiters for the beginning of a block need not wait for its end.
type VersionedSource interface {
	ReadAtVersion(ctx context.Context, name, fingerprint string, p []byte, off int64, progress func(n int)) (int, error)
}

// ObjectSource is a writable source whose files are whole objects (S3). Its
// semantics, like mountpoint-s3's:
//   - a new file is written sequentially and stored when it is closed (or
//     fsynced); close returns only after the store accepted it, and a failed
//     upload leaves nothing behind;
//   - opening a file with O_TRUNC and writing it whole replaces the object;
//   - a write anywhere else in an existing object fails with EOPNOTSUPP;
//   - a file renames by a server-side copy; a directory does not rename
//     (EXDEV, so mv(1) copies it instead).
type ObjectSource interface {
	Source
	// Upload stores size bytes of f as name, replacing any object.
	Upload(ctx context.Context, name string, f *os.File, size int64) (Attr, error)
	// Mkdir writes a directory marker.
	Mkdir(ctx context.Context, name string) error
	// RemoveFile deletes a file; RemoveDir an empty directory.
	RemoveFile(ctx context.Context, name string) error
	RemoveDir(ctx context.Context, name string) error
	// RenameFile moves a file.
	RenameFile(ctx context.Context, from, to string, a Attr) error
}

// S3 serves a dataset from an S3-compatible store. Directory listings are
// kept for the dataset's metacache period, so the lookups that follow a
// readdir cost no request.
type S3 struct {
	c       *s3.Client
	ttl     time.Duration
	started time.Time // directories' modification time

	mu        sync.Mutex
	dirs      map[string]*dirListing // guarded by mu
	listing   map[string]bool        // guarded by mu; directories being listed for lookups
	heads     map[string]*head       // guarded by mu; first bytes fetched by lookups
	headBytes int64                  // guarded by mu; bytes held in heads
}

// head is the beginning of a file, fetched by its lookup, kept until its
// first read (or headTTL).
type head struct {
	fingerprint string
	size        int64
	data        []byte
	at          time.Time
}

// A lookup fetches the first headBytes of a file; heads are kept headTTL
// and headMax bytes in all.
const (
	headBytes = 256 << 10
	headTTL   = 30 * time.Second
	headMax   = 64 << 20
)

// keepHead remembers the first bytes of name.
func (s *S3) keepHead(name string, a Attr, data []byte) {
	if len(data) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.headBytes+int64(len(data)) > headMax {
		now := time.Now()
		for k, h := range s.heads {
			if now.Sub(h.at) > headTTL || s.headBytes+int64(len(data)) > headMax {
				delete(s.heads, k)
				s.headBytes -= int64(len(h.data))
			}
		}
	}
	if old := s.heads[name]; old != nil {
		s.headBytes -= int64(len(old.data))
	}
	s.heads[name] = &head{fingerprint: a.Fingerprint(), size: a.Size, data: data, at: time.Now()}
	s.headBytes += int64(len(data))
}

// takeHead serves p at off from the head of name if the head is of the
// same version and covers the read (to the end of the file).
func (s *S3) takeHead(name, fingerprint string, p []byte, off int64) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.heads[name]
	if h == nil || h.fingerprint != fingerprint || time.Since(h.at) > headTTL {
		return 0, false
	}
	end := off + int64(len(p))
	if end > int64(len(h.data)) && int64(len(h.data)) < h.size {
		return 0, false // the read goes past what the lookup brought
	}
	end = min(end, int64(len(h.data)))
	if off >= end {
		return 0, false
	}
	n := copy(p, h.data[off:end])
	if end == int64(len(h.data)) {
		delete(s.heads, name) // read to its end: the cache has it now
		s.headBytes -= int64(len(h.data))
	}
	return n, true
}

type dirListing struct {
	at      time.Time
	entries map[string]Attr // may be the first lookupListing entries only
}

// lookupListing is how many entries a lookup lists of its directory: one
// request answers the lookups of up to that many siblings (a data loader
// opening the files of a directory one by one), where a HEAD per file
// would cost one request each.
const lookupListing = 1000

// NewS3 returns a source for the client's location; listings are trusted
// for ttl (0: never).
func NewS3(c *s3.Client, ttl time.Duration) *S3 {
	return &S3{c: c, ttl: ttl, started: time.Now(), dirs: map[string]*dirListing{}, listing: map[string]bool{}, heads: map[string]*head{}}
}

var (
	_ Source          = (*S3)(nil)
	_ VersionedSource = (*S3)(nil)
	_ ObjectSource    = (*S3)(nil)
)

func (s *S3) dirAttr() Attr {
	return Attr{Mode: fs.ModeDir | 0o755, Mtime: s.started}
}

func (s *S3) fileAttr(o s3.Object) Attr {
	mt := o.Mtime
	if mt.IsZero() {
		mt = s.started
	}
	return Attr{Mode: 0o644, Size: o.Size, Mtime: mt, ETag: o.ETag}
}

// cached returns the listing of dir if it is fresh.
func (s *S3) cached(dir string) *dirListing {
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
func (s *S3) listInBackground(dir string) {
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
			s.keep(dir, objs)
		}
		s.mu.Lock()
		delete(s.listing, dir)
		s.mu.Unlock()
	}()
}

// keep stores a listing of dir and returns its entries.
func (s *S3) keep(dir string, objs []s3.Object) []Entry {
	out := make([]Entry, 0, len(objs))
	ents := make(map[string]Attr, len(objs))
	for _, o := range objs {
		a := s.dirAttr()
		if !o.Dir {
			a = s.fileAttr(o)
		}
		out = append(out, Entry{Name: o.Name, Attr: a})
		ents[o.Name] = a
	}
	if s.ttl > 0 {
		s.mu.Lock()
		if len(s.dirs) > 65536 {
			clear(s.dirs)
		}
		s.dirs[dir] = &dirListing{at: time.Now(), entries: ents}
		s.mu.Unlock()
	}
	return out
}

// forget drops the listings a change to name makes stale: its parent's,
// and its own if it is a directory.
func (s *S3) forget(name string) {
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

// Stat implements Source: a fresh listing of the parent answers, else an
// object (HEAD) and then a directory (a listing of name/).
func (s *S3) Stat(ctx context.Context, name string) (Attr, error) {
	if err := checkName(name); err != nil {
		return Attr{}, err
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
	// A GET of the first bytes, not a HEAD: a small file's content comes
	// with its attributes, and its first read then costs no request.
	buf := make([]byte, headBytes)
	o, n, err := s.c.StatRead(ctx, name, buf)
	if err == nil {
		a := s.fileAttr(o)
		// A copy of exactly what came, not the 256 KiB buffer.
		s.keepHead(name, a, bytes.Clone(buf[:n]))
		return a, nil
	}
	if !errors.Is(err, syscall.ENOENT) {
		return Attr{}, err
	}
	ok, err := s.c.DirExists(ctx, name)
	switch {
	case err != nil:
		return Attr{}, err
	case !ok:
		return Attr{}, &fs.PathError{Op: "stat", Path: name, Err: syscall.ENOENT}
	}
	return s.dirAttr(), nil
}

// List implements Source.
func (s *S3) List(ctx context.Context, dir string) ([]Entry, error) {
	if err := checkName(dir); err != nil {
		return nil, err
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
	return s.keep(dir, objs), nil
}

// ReadAt implements Source (an unconditional read).
func (s *S3) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	return s.c.ReadAt(ctx, name, "", p, off)
}

// ReadAtVersion implements VersionedSource: the read names the ETag of the
// fingerprint (see Attr.Fingerprint). Bytes that came with the lookup are
// served without a request.
func (s *S3) ReadAtVersion(ctx context.Context, name, fingerprint string, p []byte, off int64, progress func(n int)) (int, error) {
	if n, ok := s.takeHead(name, fingerprint, p, off); ok {
		return n, nil
	}
	etag, _ := strings.CutPrefix(fingerprint, "etag:")
	n, err := s.c.ReadAtProgress(ctx, name, etag, p, off, progress)
	if errors.Is(err, syscall.ESTALE) {
		s.forget(name)
	}
	return n, err
}

// Upload implements ObjectSource.
func (s *S3) Upload(ctx context.Context, name string, f *os.File, size int64) (Attr, error) {
	if name == "" {
		return Attr{}, syscall.EISDIR
	}
	defer s.forget(name)
	// A section reader reads from offset 0 whatever the file's offset
	// (an upload retried after a failed one reads it all again).
	if _, err := s.c.Put(ctx, name, io.NewSectionReader(f, 0, size), size); err != nil {
		return Attr{}, err
	}
	// The store's own view (multipart ETags, its clock).
	o, err := s.c.Stat(ctx, name)
	if err != nil {
		return Attr{}, err
	}
	return s.fileAttr(o), nil
}

// Mkdir implements ObjectSource.
func (s *S3) Mkdir(ctx context.Context, name string) error {
	defer s.forget(name)
	return s.c.PutMarker(ctx, name)
}

// RemoveFile implements ObjectSource.
func (s *S3) RemoveFile(ctx context.Context, name string) error {
	defer s.forget(name)
	return s.c.Remove(ctx, name)
}

// RemoveDir implements ObjectSource: only an empty directory (its marker,
// if any, is all there is under it).
func (s *S3) RemoveDir(ctx context.Context, name string) error {
	defer s.forget(name)
	objs, err := s.c.List(ctx, name)
	if err != nil {
		return err
	}
	if len(objs) > 0 {
		return &fs.PathError{Op: "rmdir", Path: name, Err: syscall.ENOTEMPTY}
	}
	return s.c.RemoveMarker(ctx, name)
}

// RenameFile implements ObjectSource: copy on the server, then delete. A
// crash between the two leaves both names, never neither.
func (s *S3) RenameFile(ctx context.Context, from, to string, a Attr) error {
	defer s.forget(from)
	defer s.forget(to)
	if err := s.c.Copy(ctx, from, to, a.Size); err != nil {
		return err
	}
	return s.c.Remove(ctx, from)
}
