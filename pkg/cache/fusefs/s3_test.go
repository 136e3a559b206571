package fusefs

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	s3source "github.com/cistern-csi/cistern/pkg/cache/source/s3"
	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
)

func s3Source(t *testing.T, e *cachetest.S3Env, cfg s3store.Config, ttl time.Duration) *s3source.Source {
	t.Helper()
	return s3source.New(e.Client(t, cfg), s3source.Options{MetaCache: ttl})
}

func TestS3ReadOnlyIsAFileSystem(t *testing.T) {
	e := cachetest.NewS3Env(t)
	src := s3Source(t, e, s3store.Config{}, time.Hour)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	for _, mode := range []Options{
		{ReadOnly: true, MetaCache: time.Hour, Passthrough: true},
		{ReadOnly: true, MetaCache: time.Hour, SmallFiles: true},
	} {
		_, mnt := mountTest(t, src, c, mode)
		if err := fstest.TestFS(os.DirFS(mnt), e.Names()...); err != nil {
			t.Fatalf("smallFiles=%t: %v", mode.SmallFiles, err)
		}
		for name, want := range e.Files {
			got, err := os.ReadFile(filepath.Join(mnt, name))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s: %d bytes, %v; want %d bytes", name, len(got), err, len(want))
			}
		}
	}
	// Every byte came from the store once: the second mode read the cache.
	var total int64
	for _, b := range e.Files {
		total += int64(len(b))
	}
	if got := c.Stats().SourceBytes; got != total {
		t.Errorf("source bytes = %d, want %d (each byte fetched once)", got, total)
	}
	// A write is refused by the kernel.
	_, mnt := mountTest(t, src, c, Options{ReadOnly: true, MetaCache: time.Hour})
	if err := os.WriteFile(filepath.Join(mnt, "new"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to a read-only S3 dataset: %v, want EROFS", err)
	}
}

func TestS3ChangedObjectInvalidates(t *testing.T) {
	e := cachetest.NewS3Env(t)
	src := s3Source(t, e, s3store.Config{}, 0)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	_, mnt := mountTest(t, src, c, Options{ReadOnly: true, MetaCache: 0})
	p := filepath.Join(mnt, "big.bin")
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, e.Files["big.bin"]) {
		t.Fatalf("first read: %v", err)
	}
	v2 := bytes.Repeat([]byte("v2"), len(e.Files["big.bin"])/2)
	e.Put(t, "big.bin", v2) // same size, new ETag
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("after the object changed: %d bytes, %v; equal to v2: %t", len(got), err, bytes.Equal(got, v2))
	}
}

// TestS3StalledAndKilledServer: reads through the mount fail with EIO
// within the request timeout when the store stalls or dies, and work again
// when it is back.
func TestS3StalledAndKilledServer(t *testing.T) {
	e := cachetest.NewS3Env(t)
	src := s3Source(t, e, s3store.Config{Timeout: 2 * time.Second, MaxRetries: 2}, time.Hour)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	_, mnt := mountTest(t, src, c, Options{ReadOnly: true, MetaCache: time.Hour})
	names := e.Names()
	for _, n := range names { // look every file up while the store answers
		if _, err := os.Stat(filepath.Join(mnt, n)); err != nil {
			t.Fatal(err)
		}
	}
	read := func(name string) (time.Duration, error) {
		start := time.Now()
		_, err := os.ReadFile(filepath.Join(mnt, name))
		return time.Since(start), err
	}
	if err := e.Srv.Freeze(); err != nil {
		t.Fatal(err)
	}
	took, err := read("big.bin")
	if err := e.Srv.Thaw(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, syscall.EIO) || took > 15*time.Second {
		t.Errorf("read from a stalled store: %v after %s, want EIO within the 2s timeout (plus retries)", err, took)
	}
	if err := e.Srv.Stop(); err != nil {
		t.Fatal(err)
	}
	// (big.bin: its blocks are larger than what a lookup brings along.)
	took, err = read("big.bin")
	if !errors.Is(err, syscall.EIO) || took > 15*time.Second {
		t.Errorf("read from a dead store: %v after %s, want EIO", err, took)
	}
	if err := e.Srv.Restart(); err != nil {
		t.Fatal(err)
	}
	for _, n := range names[:2] {
		got, err := os.ReadFile(filepath.Join(mnt, n))
		if err != nil || !bytes.Equal(got, e.Files[n]) {
			t.Errorf("read of %s after the store came back: %v", n, err)
		}
	}
}

func TestS3ReadWrite(t *testing.T) {
	e := cachetest.NewS3Env(t)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	spool := t.TempDir()
	rw := Options{MetaCache: 0, SpoolDir: spool}
	a := s3Source(t, e, s3store.Config{PartSize: 5 << 20}, 0)
	_, ma := mountTest(t, a, c, Options{Name: "a", MetaCache: rw.MetaCache, SpoolDir: spool})
	_, mb := mountTest(t, s3Source(t, e, s3store.Config{}, 0), c, Options{Name: "b", MetaCache: rw.MetaCache, SpoolDir: spool})

	// New files, small and multipart, appear whole in the other mount.
	small := []byte("features for 2026-11-28\n")
	big := bytes.Repeat([]byte("0123456789"), 1_300_000) // 13 MB: three parts
	if err := os.MkdirAll(filepath.Join(ma, "out/run-1"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"out/run-1/small.csv": small, "out/run-1/big.bin": big} {
		if err := os.WriteFile(filepath.Join(ma, name), b, 0o644); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
		got, err := os.ReadFile(filepath.Join(mb, name))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s through the second mount: %d bytes, %v", name, len(got), err)
		}
	}
	// An empty directory lists (its marker), and goes away with rmdir.
	if err := os.Mkdir(filepath.Join(ma, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(mb, "empty")); err != nil || !st.IsDir() {
		t.Fatalf("empty directory in the second mount: %v", err)
	}
	if err := os.Remove(filepath.Join(ma, "empty")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(ma, "out")); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Errorf("rmdir of a non-empty directory: %v, want ENOTEMPTY", err)
	}

	// Overwriting a whole file replaces the object.
	if err := os.WriteFile(filepath.Join(ma, "out/run-1/small.csv"), []byte("v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mb, "out/run-1/small.csv")); err != nil || string(got) != "v2" {
		t.Errorf("after overwrite: %q, %v", got, err)
	}

	// Random writes and in-place changes are refused with EOPNOTSUPP.
	f, err := os.Create(filepath.Join(ma, "out/random"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 100); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("a write at a gap: %v, want EOPNOTSUPP", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close after a refused write: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(mb, "out/random")); string(got) != "abc" {
		t.Errorf("the sequential part was not stored: %q", got)
	}
	g, err := os.OpenFile(filepath.Join(ma, "out/random"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteAt([]byte("Z"), 1); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("a write into an existing object: %v, want EOPNOTSUPP", err)
	}
	g.Close()

	// A file renames; a directory does not (EXDEV: mv copies instead).
	if err := os.Rename(filepath.Join(ma, "out/random"), filepath.Join(ma, "out/renamed")); err != nil {
		t.Fatalf("rename a file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mb, "out/random")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old name after rename: %v", err)
	}
	if err := os.Rename(filepath.Join(ma, "out/run-1"), filepath.Join(ma, "out/run-2")); !errors.Is(err, syscall.EXDEV) {
		t.Errorf("rename a directory: %v, want EXDEV", err)
	}
	if err := os.Remove(filepath.Join(ma, "out/renamed")); err != nil {
		t.Fatal(err)
	}

	// An upload that fails (the store died while the file was written)
	// makes close fail, and nothing is stored.
	h, err := os.Create(filepath.Join(ma, "out/lost.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Write(bytes.Repeat([]byte{1}, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := e.Srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); !errors.Is(err, syscall.EIO) {
		t.Errorf("close with the store down: %v, want EIO", err)
	}
	if err := e.Srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// A file removed while it is being written is never stored (a
	// temporary file pattern: create, unlink, write, close).
	tmp, err := os.Create(filepath.Join(ma, "out/scratch.tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(ma, "out/scratch.tmp")); err != nil {
		t.Fatalf("unlink a file being written: %v", err)
	}
	if _, err := tmp.Write([]byte("scratch")); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mb, "out/scratch.tmp")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an unlinked file came back at close: %v", err)
	}

	// A failed fsync keeps the data: once the store is back, close
	// uploads all of it.
	r, err := os.Create(filepath.Join(ma, "out/retried.bin"))
	if err != nil {
		t.Fatal(err)
	}
	retried := bytes.Repeat([]byte("retry!"), 300_000) // 1.8 MB
	if _, err := r.Write(retried); err != nil {
		t.Fatal(err)
	}
	if err := e.Srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(); !errors.Is(err, syscall.EIO) {
		t.Errorf("fsync with the store down: %v, want EIO", err)
	}
	if err := e.Srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("close once the store is back: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(mb, "out/retried.bin")); err != nil || !bytes.Equal(got, retried) {
		t.Errorf("the retried upload: %d bytes, %v; want %d", len(got), err, len(retried))
	}
	want := []string{"big.bin", "day-00/sym-0.csv"} // spot checks of the seed data
	got := e.Keys(t)
	for _, k := range got {
		if strings.Contains(k, "lost") {
			t.Errorf("a failed upload left %s in the store", k)
		}
	}
	for _, w := range want {
		if !containsString(got, w) {
			t.Errorf("key %s missing after the test; have %v", w, got)
		}
	}
	for _, k := range []string{"out/run-1/small.csv", "out/run-1/big.bin"} {
		if !containsString(got, k) {
			t.Errorf("key %s missing; have %v", k, got)
		}
	}
	if ents, err := os.ReadDir(spool); err != nil || len(ents) != 0 {
		t.Errorf("spool directory holds %d entries after every file closed (%v)", len(ents), err)
	}
}

func containsString(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// TestDaemonS3: the daemon mounts an S3 dataset with the credentials of the
// request, one mount per credential, and refuses bad credentials and an
// unreachable store at mount time with a status that says which.

// TestS3ForkedWorkerClosePublishesNothing: a data loader starts workers
// that inherit its descriptors and close them when they exit; the close of
// an inherited descriptor (a FLUSH from another process) must not publish
// the partial file. Every FLUSH used to upload, so the store showed the
// first part while the writer was still writing. The writer's own close
// uploads the whole file.
func TestS3ForkedWorkerClosePublishesNothing(t *testing.T) {
	e := cachetest.NewS3Env(t)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	_, mnt := mountTest(t, s3Source(t, e, s3store.Config{}, 0), c, Options{Name: "w", SpoolDir: t.TempDir()})
	f, err := os.Create(filepath.Join(mnt, "day-00/out.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("part1")); err != nil {
		t.Fatal(err)
	}
	// A worker process inherits the descriptor and exits.
	worker := exec.Command("/bin/true")
	worker.ExtraFiles = []*os.File{f}
	if err := worker.Run(); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(e.Keys(t), "day-00/out.bin") {
		t.Error("a worker's close of an inherited descriptor published the partial file")
	}
	if _, err := f.Write([]byte("part2")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("the writer's close: %v", err)
	}
	if got, err := e.Object("day-00/out.bin"); err != nil || string(got) != "part1part2" {
		t.Fatalf("stored %q, %v; want the whole file", got, err)
	}
}

// writtenWhileFrozen mounts a read-write S3 dataset, writes "payload" to
// a new file name and freezes the store: the file's upload will wait
// until thaw (which the test's end also does).
func writtenWhileFrozen(t *testing.T, name string) (e *cachetest.S3Env, f *os.File, thaw func()) {
	e = cachetest.NewS3Env(t)
	c := newTestCache(t, t.TempDir(), 1<<30)
	t.Cleanup(func() { c.Close() })
	_, mnt := mountTest(t, s3Source(t, e, s3store.Config{Timeout: 20 * time.Second}, 0), c, Options{Name: "w", SpoolDir: t.TempDir()})
	f, err := os.Create(filepath.Join(mnt, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write([]byte("payload")); err != nil {
		t.Fatal(err)
	}
	if err := e.Srv.Freeze(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	thaw = func() {
		once.Do(func() {
			if err := e.Srv.Thaw(); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(thaw)
	return e, f, thaw
}

// TestS3StatDuringUpload: a stat of a file whose upload is in flight
// answers at once; the handle's lock was held across the upload, so it
// waited for the store (up to the request timeout).
func TestS3StatDuringUpload(t *testing.T) {
	_, f, thaw := writtenWhileFrozen(t, "slow.bin")
	syncErr := make(chan error, 1)
	go func() { syncErr <- f.Sync() }() // uploads; blocks on the frozen store
	// Wait until the upload is in flight (the store holds it).
	time.Sleep(200 * time.Millisecond)
	stat := make(chan error, 1)
	go func() {
		_, err := f.Stat()
		stat <- err
	}()
	select {
	case err := <-stat:
		if err != nil {
			t.Errorf("stat during the upload: %v", err)
		}
	case <-syncErr:
		t.Fatal("the upload finished against a frozen store")
	case <-time.After(10 * time.Second):
		t.Error("stat of a file being uploaded waited for the upload")
	}
	thaw()
	if err := <-syncErr; err != nil {
		t.Errorf("fsync after the store came back: %v", err)
	}
	f.Close()
}

// TestS3RefusesWhatObjectsCannot: an object store has no links, FIFOs or
// devices, and cannot exchange or refuse-to-replace atomically; each is
// refused with the errno the README names, and nothing reaches the store.
func TestS3RefusesWhatObjectsCannot(t *testing.T) {
	e := cachetest.NewS3Env(t)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	_, mnt := mountTest(t, s3Source(t, e, s3store.Config{}, 0), c, Options{Name: "w", SpoolDir: t.TempDir()})
	before := e.Keys(t)
	a, b := filepath.Join(mnt, "day-00/sym-0.csv"), filepath.Join(mnt, "day-00/sym-5.csv")
	for _, tc := range []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"symlink", os.Symlink("day-00/sym-0.csv", filepath.Join(mnt, "l")), syscall.EOPNOTSUPP},
		{"link", os.Link(a, filepath.Join(mnt, "h")), syscall.EOPNOTSUPP},
		{"mkfifo", syscall.Mkfifo(filepath.Join(mnt, "p"), 0o644), syscall.EOPNOTSUPP},
		{"mknod", syscall.Mknod(filepath.Join(mnt, "d"), syscall.S_IFCHR|0o644, 0), syscall.EOPNOTSUPP},
		{"rename noreplace", unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, filepath.Join(mnt, "day-00/new.csv"), unix.RENAME_NOREPLACE), syscall.EINVAL},
		{"rename exchange", unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE), syscall.EINVAL},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if after := e.Keys(t); !slices.Equal(before, after) {
		t.Errorf("refused operations changed the store: %v -> %v", before, after)
	}
}

// TestS3UploadSurvivesSignals: an fsync whose caller gets a signal while
// the upload waits on the store still uploads, and succeeds. The kernel
// interrupts the FUSE request on any signal with a handler (a Go
// program's preemption signal, SIGCHLD of a data loader's workers), and
// the upload was cancelled with it: fsync failed with EIO.
func TestS3UploadSurvivesSignals(t *testing.T) {
	e, f, thaw := writtenWhileFrozen(t, "signalled.bin")
	tid := make(chan int, 1)
	syncErr := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the signal goes to this thread, blocked in fsync
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		syncErr <- unix.Fsync(int(f.Fd()))
	}()
	thread := <-tid
	time.Sleep(200 * time.Millisecond) // the upload is in flight, held by the store
	// SIGURG: Go handles it (preemption) and so restarts nothing itself.
	if err := unix.Tgkill(os.Getpid(), thread, unix.SIGURG); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	thaw()
	select {
	case err := <-syncErr:
		if err != nil && !errors.Is(err, syscall.EINTR) {
			t.Fatalf("fsync interrupted by a signal: %v, want success (or EINTR, to retry)", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("fsync did not return after the store came back")
	}
	if err := f.Sync(); err != nil {
		t.Errorf("fsync again: %v", err)
	}
	if got, err := e.Object("signalled.bin"); err != nil || string(got) != "payload" {
		t.Errorf("the object after the interrupted fsync: %q, %v; want it uploaded", got, err)
	}
}
