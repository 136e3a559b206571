package fusefs

import (
	"errors"
	"os"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/fusefs/session"
)

// A mount served by a session (see package session) can be taken over: its
// connection (the /dev/fuse descriptor and the INIT the kernel negotiated)
// is handed to a new server, which continues where the old one stopped.

// MountSession serves eng's dataset at dir like Mount, through a session.
func MountSession(dir string, eng Engine, opts Options) (*FS, error) {
	f, root, gopts, err := newFS(dir, eng, opts)
	if err != nil {
		return nil, err
	}
	dev, err := session.Mount(dir, gopts.MountOptions.FsName, &gopts.MountOptions)
	if err != nil {
		f.inodes.close()
		return nil, err
	}
	defer dev.Close() // the session serves a duplicate
	if err := f.serve(session.Conn{Dev: dev}, root, gopts); err != nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		return nil, err
	}
	// Once per connection: the kernel remembers the ENOSYS for as long as
	// the connection lives, so a server that resumes it does not ask
	// again (behind a backlog of resent requests, asking took 0.2-0.4 s).
	if err := session.PollHack(f.dir); err != nil {
		f.log.Error(err, "FUSE poll hack failed: a process of the daemon that opens a file of this mount may hang")
	}
	return f, nil
}

// Resume serves eng's dataset on a connection taken over from an earlier
// server of the mount at dir (opts as that server had them, the same
// inode table).
func Resume(dir string, eng Engine, opts Options, conn session.Conn) (*FS, error) {
	if conn.Init == nil {
		return nil, errors.New("resume: the connection was never initialised")
	}
	f, root, gopts, err := newFS(dir, eng, opts)
	if err != nil {
		return nil, err
	}
	// The kernel may hold files of any inode numbered so far open, in a
	// mode this server does not know (see passthroughAllowed).
	f.resumedBelow = f.inodes.allocated()
	if err := f.serve(conn, root, gopts); err != nil {
		return nil, err
	}
	return f, nil
}

// passthroughAllowed reports whether a new open of node ino may use
// passthrough. After a takeover, an inode the kernel knew may be open
// through its page cache (then the kernel refuses a passthrough open) or
// in passthrough with the earlier server's backing file (then it refuses
// any other, and the session reuses that one): only those with a known
// backing ID, and inodes numbered since, open in passthrough.
func (f *FS) passthroughAllowed(ino uint64) bool {
	return f.sess == nil || ino >= f.resumedBelow || f.sess.HasBacking(ino)
}

func (f *FS) serve(conn session.Conn, root *node, gopts *gofs.Options) error {
	_, objects := f.w.(objectWriter)
	backing := ""
	if f.opts.InodeTable != "" {
		backing = f.opts.InodeTable + ".backing" // beside the inode table
	}
	_, err := session.Start(conn, gofs.NewNodeFS(root, gopts), &gopts.MountOptions,
		session.Options{ReopenWrites: !objects, BackingLog: backing, Logger: f.log,
			Serving: func(s *session.Session) { f.sess = s }})
	if err != nil {
		f.inodes.close()
	}
	return err
}

// Detach stops serving without unmounting or answering what is in flight
// (as a crash would, but in order) and returns the connection for a new
// server (Resume).
func (f *FS) Detach() (session.Conn, error) {
	conn := f.sess.Conn()
	fd, err := session.Dup(conn.Dev)
	if err != nil {
		return session.Conn{}, err
	}
	conn.Dev = os.NewFile(uintptr(fd), "/dev/fuse")
	f.sess.Stop()
	_ = f.sess.Wait()
	return conn, f.inodes.close()
}

// SessionStats returns what the session had to do for an earlier server's state
// (nil: not a session).
func (f *FS) SessionStats() *session.Stats {
	if f.sess == nil {
		return nil
	}
	return &f.sess.Stats
}

func (f *FS) unmountSession() error {
	if err := unix.Unmount(f.dir, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
		return &os.PathError{Op: "unmount", Path: f.dir, Err: err}
	}
	err := f.sess.Wait()
	if cerr := f.inodes.close(); err == nil {
		err = cerr
	}
	return err
}

// Conn returns the connection of a session's mount (for a keeper), with
// the session's own descriptor: the caller duplicates what it keeps.
func (f *FS) Conn() (session.Conn, bool) {
	if f.sess == nil {
		return session.Conn{}, false
	}
	return f.sess.Conn(), true
}

// Drain stops a session's mount for a new server: what was read is
// answered, nothing is unmounted, the connection lives on in the
// descriptors others hold.
func (f *FS) Drain() error {
	f.sess.Drain()
	return f.inodes.close()
}
