package fusefs

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// mountPosixRW serves a new POSIX tree read-write with the given metacache
// period; it returns the file system, the tree and the mount point.
func mountPosixRW(t *testing.T, metacache time.Duration) (*FS, string, string) {
	t.Helper()
	root := t.TempDir()
	p, err := posix.New(root)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, t.TempDir(), 1<<30)
	t.Cleanup(func() { c.Close() })
	f, mnt := mountTest(t, p, c, Options{MetaCache: metacache})
	return f, root, mnt
}

// TestReadWriteReopenKeepsThePages: a file of a read-write POSIX dataset
// opened again, unchanged, is read from the kernel's page cache: no READ
// reaches the daemon. Every open was direct I/O: each read of a warm file
// was a round trip to the daemon (0.02 of native for 4 KiB files).
func TestReadWriteReopenKeepsThePages(t *testing.T) {
	f, root, mnt := mountPosixRW(t, time.Hour)
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 3*cachetest.Block+7, 41)
	for i := range 3 {
		before := f.Reads.Load()
		got, err := os.ReadFile(filepath.Join(mnt, "f"))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %d: %d bytes, %v; want the file's %d", i, len(got), err, len(want))
		}
		if reads := f.Reads.Load() - before; i > 0 && reads != 0 {
			t.Errorf("read %d of an unchanged file: %d READ requests reached the daemon; want 0 (the kernel's pages)", i, reads)
		}
	}
	// A write through the mount is seen by the next open, from the cache
	// or not.
	w, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("changed"), 100); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	copy(want[100:], "changed")
	if got, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after a write through the mount: %d bytes, %v", len(got), err)
	}
}

// readNoStat reads name to its end as a reader that never calls stat(2)
// does: a stat refreshes the kernel's attributes (a read on a read-write
// mount marks its access time stale), hiding what a reader without one
// would see.
func readNoStat(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var got []byte
	b := make([]byte, 64<<10)
	for {
		n, err := f.Read(b)
		got = append(got, b[:n]...)
		if err == io.EOF || n == 0 {
			return got, nil
		}
		if err != nil {
			return got, err
		}
	}
}

// TestReadWriteOpenSeesChangesMadeElsewhere: an open sees every change
// made to the source before it (another node writing the share), however
// long the kernel may trust the attributes it holds: a grown file is read
// to its new end, and a rewrite of the same size and modification time
// (which the kernel cannot tell apart) is read anew.
func TestReadWriteOpenSeesChangesMadeElsewhere(t *testing.T) {
	_, root, mnt := mountPosixRW(t, time.Hour)
	name := filepath.Join(root, "f")
	v1 := cachetest.WriteRandom(t, name, 2*cachetest.Block, 42)
	if got, err := readNoStat(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("first read: %d bytes, %v", len(got), err)
	}
	v2 := cachetest.WriteRandom(t, name, 3*cachetest.Block+5, 43)
	if got, err := readNoStat(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("after the file grew on the source: read %d bytes, %v; want the new version's %d", len(got), err, len(v2))
	}
	st, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	v3 := cachetest.WriteRandom(t, name, len(v2), 44)
	if err := os.Chtimes(name, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if got, err := readNoStat(filepath.Join(mnt, "f")); err != nil || !bytes.Equal(got, v3) {
		t.Fatalf("a rewrite of the same size and mtime: read %d bytes, %v; the kernel's old pages were served", len(got), err)
	}
}

// TestAppendAfterAnotherNodeAppended: an O_APPEND write lands at the
// source's end, and the writer reads back what the source holds, though
// its kernel still believed the file shorter (another node appended
// while it had the file open). Through the page cache the kernel put the
// write at the end it believed in and served that page.
func TestAppendAfterAnotherNodeAppended(t *testing.T) {
	_, root, mnt := mountPosixRW(t, time.Hour)
	name := filepath.Join(root, "log")
	if err := os.WriteFile(name, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "log")); err != nil || string(got) != "0123456789" {
		t.Fatalf("first read: %q, %v", got, err)
	}
	// A logger opened the file for appending, then another node
	// appended.
	f, err := os.OpenFile(filepath.Join(mnt, "log"), os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.WriteString("ABCDEFGHIJ"); err != nil {
		t.Fatal(err)
	}
	other.Close()
	if _, err := f.Write([]byte("X")); err != nil {
		t.Fatal(err)
	}
	want := "0123456789ABCDEFGHIJX"
	if src, _ := os.ReadFile(name); string(src) != want {
		t.Fatalf("the source holds %q; want %q", src, want)
	}
	got := make([]byte, len(want))
	n, err := f.ReadAt(got, 0)
	if string(got[:n]) != want {
		t.Errorf("the appending descriptor reads %q (%v); the source holds %q", got[:n], err, want)
	}
}
