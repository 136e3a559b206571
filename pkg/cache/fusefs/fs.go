// Package fusefs serves one dataset as a FUSE file system through the cache
// engine. Reads go to the engine (or, for a fully cached file of a
// read-only dataset, to the kernel through FUSE passthrough); changes go
// through the one write strategy chosen at mount: none (read-only), POSIX
// write-through, or whole-object uploads.
package fusefs

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/fusefs/session"
	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Engine is what the file system needs of the cache: one dataset's view
// (cache.Dataset implements it).
type Engine interface {
	// Source is the dataset's source.
	Source() source.Source
	// ReadAt reads p at off of name, whose current attributes are a.
	ReadAt(ctx context.Context, name string, a source.Attr, p []byte, off int64) (int, error)
	// CompleteFile returns a read-only descriptor of name's cache file
	// when it is complete, or nil.
	CompleteFile(name string, a source.Attr) *os.File
	// EvictFile drops the cached copy of a file whose attributes are a
	// (constant cost; a POSIX file's copy is known by its inode, an
	// object's by its name); ForgetTree what is cached in memory at or
	// under a directory (a scan).
	EvictFile(name string, a source.Attr) int
	ForgetTree(prefix string) int
	// Fill caches name, opened with attributes a, in the background:
	// the kernel read it from the source's own file.
	Fill(name string, a source.Attr)
}

// Options configure how a dataset is served.
type Options struct {
	// Name names the mount in /proc/mounts (cistern:<Name>).
	Name string
	// ReadOnly mounts "ro": the kernel refuses writes with EROFS.
	ReadOnly bool
	// MetaCache is how long the kernel trusts entries and attributes.
	MetaCache time.Duration
	// SmallFiles serves a read-only dataset of many small immutable files
	// in no-open mode: OPEN and FLUSH are answered ENOSYS once and the
	// kernel stops sending them, keeping file data in its page cache.
	SmallFiles bool
	// Passthrough hands fully cached files of a read-only dataset to the
	// kernel (FUSE passthrough): reads then never reach the daemon. A
	// file of a POSIX source not cached yet is handed over as the
	// source's own file, and cached in the background once closed.
	Passthrough bool
	// SpoolDir holds files being written to an object store until close
	// uploads them (anonymous files: nothing is left after a crash).
	SpoolDir string
	// Hidden are names invisible at the dataset's root (Cistern's own
	// records, archives and trash): no lookup finds them, no listing shows
	// them, nothing may be created or renamed there under them.
	Hidden []string
	// InodeTable is the file that keeps the inode numbers the kernel
	// sees ("" = memory only): with it they survive a restart.
	InodeTable string
	// Debug logs every FUSE request.
	Debug bool
	// Logger logs this mount's failures and refusals (default: klog's).
	Logger klog.Logger
}

// FS serves one dataset.
type FS struct {
	// immutable after Mount
	opts   Options
	log    klog.Logger
	eng    Engine
	src    source.Source
	w      writer           // the write strategy
	inodes *inodes          // the inode numbers the kernel sees
	locks  lockOwners       // record-lock owners' descriptors (POSIX write-through)
	srv    *fuse.Server     // go-fuse's server, or
	sess   *session.Session // the session of a connection that can be taken over
	dir    string           // the mount point
	root   *node
	// started is when the file system was made (node use times count
	// from it); nodes counts the nodes the kernel holds (see Prune).
	started time.Time
	nodes   atomic.Int64
	// listed are recent listings whose attributes lookups take (a POSIX
	// source only; see listing.go).
	listed listings
	// resumedBelow: inodes numbered below it may have been opened through
	// an earlier server (0: a fresh mount).
	resumedBelow uint64

	// Reads counts READ requests that reached the daemon (a passthrough
	// read never does).
	Reads       atomic.Int64
	Passthrough atomic.Int64 // opens served with passthrough
	// SourcePassthrough counts those of them read from the source's own
	// file (a POSIX file not yet cached).
	SourcePassthrough atomic.Int64
	// CachedOpen counts open handles that read through the page cache
	// (RELEASE arrives after close(2) returns: the count lags).
	CachedOpen atomic.Int64
}

// Mount serves eng's dataset at dir. The caller calls Unmount.
func Mount(dir string, eng Engine, opts Options) (*FS, error) {
	f, root, gopts, err := newFS(dir, eng, opts)
	if err != nil {
		return nil, err
	}
	srv, err := gofs.Mount(dir, root, gopts)
	if err != nil {
		f.inodes.close()
		return nil, err
	}
	f.srv = srv
	return f, nil
}

// newFS makes the file system of a mount at dir, its root and go-fuse's
// options.
func newFS(dir string, eng Engine, opts Options) (*FS, *node, *gofs.Options, error) {
	if opts.Logger.GetSink() == nil {
		opts.Logger = klog.Background()
	}
	f := &FS{opts: opts, log: opts.Logger, eng: eng, src: eng.Source(), dir: dir, started: time.Now()}
	f.root = &node{fsys: f}
	w, err := chooseWriter(f.src, opts)
	if err != nil {
		return nil, nil, nil, &fs.PathError{Op: "mount", Path: dir, Err: err}
	}
	f.w = w
	if f.inodes, err = openInodes(opts.InodeTable, opts.Logger); err != nil {
		return nil, nil, nil, err
	}
	mc := opts.MetaCache
	neg := min(mc, time.Second)
	mo := fuse.MountOptions{
		FsName:      "cistern:" + opts.Name,
		Name:        "cistern",
		AllowOther:  true,
		DirectMount: true,
		// mount(2) only: fusermount is not needed (nor installed) on nodes.
		DirectMountStrict: true,
		// No atime updates: a read never changes the FUSE inode.
		DirectMountFlags: syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOATIME,
		MaxReadAhead:     1 << 20,
		MaxWrite:         1 << 20,
		// The kernel sends read-ahead READs in the background, at most
		// this many at once per mount (go-fuse's default is 12): a
		// hundred readers of cold files waiting on the source each
		// need one in flight, or they queue in the kernel.
		MaxBackground: 128,
		DisableXAttrs: true,
		Debug:         opts.Debug,
		// File handles (name_to_handle_at) stay valid for as long as the
		// inode table: a LOOKUP of "." finds the node (LookupNode).
		ExtraCapabilities: fuse.CAP_EXPORT_SUPPORT,
	}
	// The kernel checks permissions against the owners and modes the
	// file system reports: a pod reads and writes what its uid, gids and
	// the files' modes allow, as on the source itself.
	mo.Options = append(mo.Options, "default_permissions")
	if opts.ReadOnly {
		mo.Options = append(mo.Options, "ro")
	}
	if _, ok := w.(posixWriter); ok {
		// Locks are the source's: they hold across nodes.
		mo.EnableLocks = true
		f.locks.fds = map[lockOwnerKey]*os.File{}
	}
	return f, f.root, &gofs.Options{
		// A mode of 0000 is a mode (a file created so), not "unset".
		NullPermissions: true,
		// The node IDs the kernel holds are the inode table's numbers,
		// which outlive the process (see LookupNode).
		ExternalNodeID:  true,
		RootStableAttr:  &gofs.StableAttr{Ino: rootNumber},
		MountOptions:    mo,
		EntryTimeout:    &mc,
		AttrTimeout:     &mc,
		NegativeTimeout: &neg,
	}, nil
}

// chooseWriter picks the write strategy of a mount.
func chooseWriter(src source.Source, opts Options) (writer, error) {
	if opts.ReadOnly {
		return readOnly{}, nil
	}
	switch s := src.(type) {
	case source.Writable:
		return posixWriter{src: s}, nil
	case source.Objects:
		if opts.SpoolDir == "" {
			return nil, errors.New("a read-write object-store dataset needs a spool directory")
		}
		return objectWriter{src: s, spoolDir: opts.SpoolDir}, nil
	}
	return nil, syscall.EROFS
}

// hidden reports whether name in dir is one of the root's hidden names.
func (f *FS) hidden(dir *node, name string) bool {
	return dir.IsRoot() && slices.Contains(f.opts.Hidden, name)
}

// Unmount unmounts and waits for the server to stop.
func (f *FS) Unmount() error {
	if f.sess != nil {
		return f.unmountSession()
	}
	err := f.srv.Unmount()
	if err == nil {
		f.srv.Wait()
		err = f.inodes.close()
	}
	return err
}

// invalidateAttr has the kernel fetch n's attributes again before it next
// uses them (a file changed behind its back). Failures are logged: the
// kernel then trusts them for at most the metacache period.
func (f *FS) invalidateAttr(n *node) {
	ino := n.StableAttr().Ino
	var err error
	if f.sess != nil {
		err = f.sess.InvalidateInode(ino, -1, 0)
	} else if errno := n.NotifyContent(-1, 0); errno != 0 {
		// (go-fuse's server, known to the node before it serves.)
		err = errno
	}
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		// ENOENT: the kernel has forgotten the inode, nothing to drop.
		f.log.V(2).Info("Attribute invalidation failed", "path", n.rel(), "err", err.Error())
	}
}
