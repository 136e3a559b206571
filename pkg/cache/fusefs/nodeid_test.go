package fusefs

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// TestNodeIDsOutliveTheMount: node IDs are the inode table's numbers, and
// the table remembers where each was last seen (renames through the mount
// included), so a file handle taken on one mount opens the same file on a
// later mount of the same table: the new server resolves a node ID it
// never handed out (LOOKUP of "."), as a daemon that takes a live
// connection over must. A handle of a file removed since is ESTALE, and
// one of a name that now holds another file is not taken for it.
func TestNodeIDsOutliveTheMount(t *testing.T) {
	root := t.TempDir()
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	table := filepath.Join(t.TempDir(), "inodes")
	cachetest.RequireFUSE(t)
	mnt := t.TempDir()
	f, err := Mount(mnt, c.Dataset("ds", p), Options{Name: "ds", MetaCache: 0, InodeTable: table})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(mnt, "d/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"d/sub/f": "kept", "d/gone": "removed", "d/replaced": "old"} {
		if err := os.WriteFile(filepath.Join(mnt, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	handle := func(name string) unix.FileHandle {
		t.Helper()
		h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, filepath.Join(mnt, name), 0)
		if err != nil {
			t.Fatalf("name_to_handle_at %s: %v", name, err)
		}
		return h
	}
	hf, hGone, hReplaced := handle("d/sub/f"), handle("d/gone"), handle("d/replaced")
	// Through the mount: the directory moves. Behind its back: a file
	// goes, another is replaced by a new file of the same name.
	if err := os.Rename(filepath.Join(mnt, "d"), filepath.Join(mnt, "e")); err != nil {
		t.Fatal(err)
	}
	if err := f.Unmount(); err != nil {
		t.Fatal(err)
	}
	// (Written aside and renamed over, as editors and tools do: the old
	// inode is still in use when the new one is made, so their numbers
	// differ. A source that reuses an inode number at once is not told
	// apart: the table knows files by device and inode number.)
	if err := os.WriteFile(filepath.Join(root, "e/replaced.new"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, "e/replaced.new"), filepath.Join(root, "e/replaced")); err != nil {
		t.Fatal(err)
	}
	// Removed last, so no file made here reuses its inode number.
	if err := os.Remove(filepath.Join(root, "e/gone")); err != nil {
		t.Fatal(err)
	}

	// A new server: its go-fuse tables are empty, the inode table is not.
	f2, err := Mount(mnt, c.Dataset("ds", p), Options{Name: "ds", MetaCache: 0, InodeTable: table})
	if err != nil {
		t.Fatal(err)
	}
	cachetest.UnmountAtCleanup(t, mnt, f2.Unmount)
	dir, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dir)
	fd, err := unix.OpenByHandleAt(dir, hf, unix.O_RDONLY)
	if err != nil {
		t.Fatalf("open_by_handle_at of d/sub/f (now e/sub/f) on the new mount: %v", err)
	}
	b := make([]byte, 16)
	n, err := unix.Read(fd, b)
	unix.Close(fd)
	if err != nil || string(b[:n]) != "kept" {
		t.Fatalf("read through the old handle: %q, %v", b[:n], err)
	}
	for name, h := range map[string]unix.FileHandle{"a removed file": hGone, "a replaced file": hReplaced} {
		fd, err := unix.OpenByHandleAt(dir, h, unix.O_RDONLY)
		if err == nil {
			n, _ := unix.Read(fd, b)
			unix.Close(fd)
			t.Errorf("%s: its old handle opened a file that reads %q; want ESTALE", name, b[:n])
		} else if !errors.Is(err, syscall.ESTALE) {
			t.Errorf("%s: %v, want ESTALE", name, err)
		}
	}
}
