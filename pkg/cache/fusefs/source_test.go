package fusefs

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// mountRW mounts a read-write POSIX dataset of a fresh source directory
// and returns the source directory and the mount point.
func mountRW(t *testing.T) (root, mnt string) {
	t.Helper()
	cachetest.RequireFUSE(t)
	root = t.TempDir()
	p, err := posix.New(root)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, t.TempDir(), 1<<30)
	t.Cleanup(func() { c.Close() })
	mnt = filepath.Join(cachetest.OpenDir(t), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := Mount(mnt, c.Dataset("ds", p), Options{Name: "ds", MetaCache: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cachetest.UnmountAtCleanup(t, mnt, f.Unmount)
	return root, mnt
}

// releaseFIFO opens the FIFO name for writing when the test ends: should
// an open of it for reading wait (the bug a test looks for), that sets
// it free so the test can end.
func releaseFIFO(t *testing.T, name string) {
	t.Cleanup(func() {
		if w, err := os.OpenFile(name, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	})
}

// TestFIFOSwappedInForAFile: a file replaced by a FIFO behind the kernel's
// back (another node of the share) fails to open. The daemon opened the
// FIFO for the caller and waited for a writer forever, hanging the open
// and a FUSE request thread.
func TestFIFOSwappedInForAFile(t *testing.T) {
	root, mnt := mountRW(t)
	name := filepath.Join(root, "f")
	if err := os.WriteFile(name, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "f")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(name, 0o644); err != nil {
		t.Fatal(err)
	}
	releaseFIFO(t, name)
	for _, flag := range []int{os.O_RDONLY, os.O_RDWR} {
		done := make(chan error, 1)
		go func() {
			f, err := os.OpenFile(filepath.Join(mnt, "f"), flag, 0)
			if err == nil {
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("open(%#x) of a name that is now a FIFO in the source succeeded as a file", flag)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("open(%#x) of a name that became a FIFO hung", flag)
		}
	}
}

// TestRenameWhiteoutRefused: RENAME_WHITEOUT would have the daemon make a
// character device in the source, which a pod may not.
func TestRenameWhiteoutRefused(t *testing.T) {
	root, mnt := mountRW(t)
	if err := os.WriteFile(filepath.Join(mnt, "a"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(mnt, "a"), unix.AT_FDCWD, filepath.Join(mnt, "b"), unix.RENAME_WHITEOUT)
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("rename with RENAME_WHITEOUT: %v, want EINVAL", err)
	}
	if st, err := os.Lstat(filepath.Join(root, "a")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("source a after a refused whiteout rename: %v, %v; want the file untouched", st, err)
	}
}

// TestUnlinkErrorIsTheSources: unlink of a file the source refuses to
// remove (immutable) fails with the source's EPERM.
func TestUnlinkErrorIsTheSources(t *testing.T) {
	root, mnt := mountRW(t)
	name := filepath.Join(root, "kept")
	if err := os.WriteFile(name, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chattr", "+i", name).CombinedOutput(); err != nil {
		t.Skipf("the test directory's file system has no immutable files (chattr: %v %s)", err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", name).Run() })
	if err := os.Remove(filepath.Join(mnt, "kept")); !errors.Is(err, syscall.EPERM) {
		t.Errorf("unlink of an immutable file: %v, want EPERM", err)
	}
}

// TestRmdirLeavesAFileAlone: rmdir of a directory that another node
// replaced by a file fails with ENOTDIR and the file stays, and unlink
// of a file replaced by a directory fails with EISDIR. Both went to one
// remove that took either, which removed the other node's file.
func TestRemoveLeavesAnotherKindAlone(t *testing.T) {
	root, mnt := mountRW(t)
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "d")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "d"), []byte("someone's"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Rmdir(filepath.Join(mnt, "d")); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("rmdir of a directory now a file in the source: %v, want ENOTDIR", err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "d")); err != nil || string(b) != "someone's" {
		t.Errorf("the file in the source after rmdir: %q, %v; want it kept", b, err)
	}
	// And the other way round: unlink of a file that is now a directory.
	if err := os.WriteFile(filepath.Join(mnt, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "f")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "f"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unlink(filepath.Join(mnt, "f")); !errors.Is(err, syscall.EISDIR) {
		t.Errorf("unlink of a file now a directory in the source: %v, want EISDIR", err)
	}
	if st, err := os.Stat(filepath.Join(root, "f")); err != nil || !st.IsDir() {
		t.Errorf("the directory in the source after unlink: %v; want it kept", err)
	}
}

// TestLockNeedsTheAccessMode: as fcntl(2) has it, a write lock needs a
// descriptor open for writing and a read lock one open for reading, though
// the daemon's descriptor each owner's locks go through is read-write.
func TestLockNeedsTheAccessMode(t *testing.T) {
	_, mnt := mountRW(t)
	name := filepath.Join(mnt, "f")
	if err := os.WriteFile(name, make([]byte, 10), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		flag int
		typ  int16
	}{{os.O_RDONLY, unix.F_WRLCK}, {os.O_WRONLY, unix.F_RDLCK}} {
		f, err := os.OpenFile(name, c.flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		lk := unix.Flock_t{Type: c.typ, Start: 0, Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk); !errors.Is(err, syscall.EBADF) {
			t.Errorf("lock type %d on a descriptor opened %#x: %v, want EBADF", c.typ, c.flag, err)
		}
		f.Close()
	}
	// The allowed ones still work.
	f, err := os.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 0, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk); err != nil {
		t.Errorf("read lock on a read-only descriptor: %v", err)
	}
}

// TestWriteDropsTheCachedCopy: what one descriptor writes, a descriptor
// of the file opened for reading (whose reads the cache serves) reads
// next. The cached copy of a POSIX file is known by its inode, and a
// write dropped the copy known by the path, which there never is.
func TestWriteDropsTheCachedCopy(t *testing.T) {
	root, mnt := mountRW(t)
	if err := os.WriteFile(filepath.Join(root, "f"), []byte("old old old"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 11)
	if _, err := r.ReadAt(buf, 0); err != nil || string(buf) != "old old old" {
		t.Fatalf("first read: %q, %v", buf, err)
	}
	w, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("new"), 4); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := r.ReadAt(buf, 0); err != nil || string(buf) != "old new old" {
		t.Errorf("read after another descriptor wrote: %q, %v; want %q", buf, err, "old new old")
	}
}

// TestCreateOverSomethingMadeBehindTheKernel: open(O_CREAT) of a name the
// kernel believes free, which another node meanwhile made a FIFO, fails
// instead of waiting on the FIFO; made a file, an O_TRUNC open empties
// it through the descriptor the handle keeps, even read-only.
func TestCreateOverSomethingMadeBehindTheKernel(t *testing.T) {
	root, mnt := mountRW(t)
	for _, n := range []string{"fifo", "file"} {
		if _, err := os.Stat(filepath.Join(mnt, n)); !os.IsNotExist(err) {
			t.Fatalf("stat of a free name: %v", err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o666); err != nil {
		t.Fatal(err)
	}
	releaseFIFO(t, filepath.Join(root, "fifo"))
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(filepath.Join(mnt, "fifo"), os.O_RDWR|os.O_CREATE, 0o644)
		if err == nil {
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("open(O_CREAT) of a name that is a FIFO in the source succeeded as a file")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("open(O_CREAT) of a name that became a FIFO hung")
	}

	if err := os.WriteFile(filepath.Join(root, "file"), []byte("old"), 0o666); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "file"), os.O_RDONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, err := os.ReadFile(filepath.Join(root, "file")); err != nil || len(b) != 0 {
		t.Errorf("the file after open(O_RDONLY|O_CREAT|O_TRUNC): %q, %v; want it empty", b, err)
	}
}

// TestOpenOfANameRenamedOver: a name another node renamed a new file
// over opens the new file as the new inode (the kernel looks the name up
// again), not as the inode the kernel remembered under that name.
func TestOpenOfANameRenamedOver(t *testing.T) {
	root, mnt := mountRW(t)
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	var before unix.Stat_t
	if err := unix.Stat(filepath.Join(mnt, "f"), &before); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "g"), []byte("the new one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, "g"), filepath.Join(root, "f")); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []int{os.O_RDONLY, os.O_RDWR} {
		f, err := os.OpenFile(filepath.Join(mnt, "f"), flag, 0)
		if err != nil {
			t.Fatalf("open(%#x) of a name renamed over: %v", flag, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(f)
		f.Close()
		if st.Ino == before.Ino {
			t.Errorf("open(%#x) of a name renamed over: inode %d, the old file's", flag, st.Ino)
		}
		if err != nil || string(b) != "the new one" {
			t.Errorf("open(%#x) of a name renamed over reads %q, %v", flag, b, err)
		}
	}
}

// TestBindOfARemovedDirectory is what the kubelet meets with a subPath
// whose directory a container removed: a bind mount of a directory of the
// dataset outlives the directory. stat of the bind must not say "does not
// exist" (the kubelet then skips its unmount and the pod never goes away,
// seen in the external storage suite's "should be able to unmount after
// the subpath directory is deleted"); it says ESTALE, a stale handle, and
// the bind unmounts. A stat of the removed name through the dataset's
// mount still says ENOENT.
func TestBindOfARemovedDirectory(t *testing.T) {
	_, mnt := mountRW(t)
	sub := filepath.Join(mnt, "subpath")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	bind := filepath.Join(t.TempDir(), "bind")
	if err := os.Mkdir(bind, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(sub, bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bind, unix.MNT_DETACH) })
	if err := os.Remove(sub); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(bind, &st); err != unix.ESTALE {
		t.Errorf("stat of a bind of a removed directory: %v, want ESTALE", err)
	}
	if err := unix.Stat(sub, &st); err != unix.ENOENT {
		t.Errorf("stat of the removed name: %v, want ENOENT", err)
	}
	if err := unix.Unmount(bind, 0); err != nil {
		t.Errorf("unmount the bind: %v", err)
	}
}
