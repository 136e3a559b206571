package fusefs

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// gatedEngine holds reads at a gate once armed, and says when one waits.
type gatedEngine struct {
	Engine
	mu      sync.Mutex
	armed   bool
	waiting chan struct{}
	gate    chan struct{}
}

func (e *gatedEngine) ReadAt(ctx context.Context, name string, a source.Attr, p []byte, off int64) (int, error) {
	e.mu.Lock()
	armed := e.armed
	if armed {
		e.armed = false
		close(e.waiting)
	}
	e.mu.Unlock()
	if armed {
		<-e.gate
	}
	return e.Engine.ReadAt(ctx, name, a, p, off)
}

// TestTakeOver: a new server takes a live connection over from one that
// stopped mid-request. Handles opened before (a reader half way through a
// file, a writer, a directory being listed) go on through the new server;
// the read that was in flight is resent by the kernel and answered; new
// opens, listings and writes work; and the mount unmounts cleanly.
func TestTakeOver(t *testing.T) {
	cachetest.RequireFUSE(t)
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "big"), 4<<20, 71)
	if err := os.MkdirAll(filepath.Join(root, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(root, "d", n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	opts := Options{Name: "ds", MetaCache: 0, InodeTable: filepath.Join(t.TempDir(), "inodes")}
	mnt := t.TempDir()
	eng := &gatedEngine{Engine: c.Dataset("ds", p), waiting: make(chan struct{}), gate: make(chan struct{})}
	first, err := MountSession(mnt, eng, opts)
	if err != nil {
		t.Fatal(err)
	}
	current := first
	cachetest.UnmountAtCleanup(t, mnt, func() error { return current.Unmount() })

	reader, err := os.Open(filepath.Join(mnt, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(reader, got[:1<<20]); err != nil {
		t.Fatal(err)
	}
	writer, err := os.OpenFile(filepath.Join(mnt, "d/a"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	dir, err := os.Open(filepath.Join(mnt, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()

	// A read reaches the first server and waits there when it stops.
	eng.mu.Lock()
	eng.armed = true
	eng.mu.Unlock()
	inflight := make(chan error, 1)
	late := make([]byte, 1<<20)
	go func() {
		_, err := reader.ReadAt(late, 3<<20)
		inflight <- err
	}()
	<-eng.waiting
	conn, err := first.Detach()
	if err != nil {
		t.Fatal(err)
	}
	close(eng.gate) // the first server's answer is never delivered
	second, err := Resume(mnt, c.Dataset("ds", p), opts, conn)
	if err != nil {
		t.Fatal(err)
	}
	current = second

	if err := <-inflight; err != nil || !bytes.Equal(late, want[3<<20:]) {
		t.Fatalf("the read in flight at the takeover: %v (right bytes: %t)", err, bytes.Equal(late, want[3<<20:]))
	}
	if _, err := io.ReadFull(reader, got[1<<20:]); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("reading on through a handle of the first server: %v (right bytes: %t)", err, bytes.Equal(got, want))
	}
	if _, err := writer.WriteAt([]byte("A"), 0); err != nil {
		t.Fatalf("writing through a handle of the first server: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "d/a")); string(b) != "A" {
		t.Errorf("the source holds %q after the write, want A", b)
	}
	names, err := dir.Readdirnames(-1)
	if err != nil || len(names) != 3 {
		t.Errorf("listing through a directory handle of the first server: %v, %v", names, err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "d/b")); err != nil || string(b) != "b" {
		t.Errorf("a new open after the takeover: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "d/new"), []byte("new"), 0o644); err != nil {
		t.Errorf("a new file after the takeover: %v", err)
	}
	st := second.SessionStats()
	t.Logf("takeover: %d nodes revived, %d handles reopened, %d requests resent", st.Revived.Load(), st.Reopened.Load(), st.Resent.Load())
	if st.Reopened.Load() < 2 || st.Resent.Load() < 1 || st.ResendRefused.Load() {
		t.Errorf("the new server reopened %d handles and was resent %d requests (refused: %t); want at least 2 and 1",
			st.Reopened.Load(), st.Resent.Load(), st.ResendRefused.Load())
	}
	for _, f := range []*os.File{reader, writer, dir} {
		if err := f.Close(); err != nil {
			t.Errorf("closing a handle of the first server: %v", err)
		}
	}
}

// TestSessionServesLikeGoFuse runs the file system tests on a mount served
// by a session (the server a taken-over connection gets).
func TestSessionServesLikeGoFuse(t *testing.T) {
	testMount = MountSession
	defer func() { testMount = Mount }()
	for name, test := range map[string]func(*testing.T){
		"read-only":             TestFSReadOnlyIsAFileSystem,
		"read-write":            TestFSReadWrite,
		"changed file":          TestChangedFileIsReadAnew,
		"inode numbers":         TestInodeNumbersNeverCollide,
		"hidden names":          TestHiddenRootNames,
		"statfs":                TestStatfsIsTheSource,
		"open while cached":     TestOpenWhileCachedHandleOpen,
		"lookup refreshes attr": TestLookupRefreshesAttributes,
		"passthrough":           TestPassthroughTakesEffect,
		"read-write page cache": TestReadWriteReopenKeepsThePages,
		"read-write reopen":     TestReadWriteOpenSeesChangesMadeElsewhere,
		"prune":                 TestPruneForgetsIdleFiles,
	} {
		t.Run(name, test)
	}
}

// TestTakeOverPassthrough: a file open in passthrough when the server
// stops keeps the earlier server's backing file in the kernel, which then
// refuses any other for that inode: the new server answers a new open of
// it with the same backing ID (logged beside the inode table), and the
// old handle reads on. A file the kernel may hold open through its page
// cache is opened cached.
func TestTakeOverPassthrough(t *testing.T) {
	cachetest.RequireFUSE(t)
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "f"), 3*cachetest.Block+5, 81)
	other := cachetest.WriteRandom(t, filepath.Join(root, "g"), 2*cachetest.Block, 82)
	p, _ := posix.New(root)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	opts := Options{Name: "ds", ReadOnly: true, MetaCache: time.Hour, Passthrough: true, InodeTable: filepath.Join(t.TempDir(), "inodes")}
	mnt := t.TempDir()
	first, err := MountSession(mnt, c.Dataset("ds", p), opts)
	if err != nil {
		t.Fatal(err)
	}
	current := first
	cachetest.UnmountAtCleanup(t, mnt, func() error { return current.Unmount() })
	for name, b := range map[string][]byte{"f": want, "g": other} {
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("cold read of %s: %v", name, err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); first.CachedOpen.Load() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("cached handles still open")
		}
	}
	held, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if first.Passthrough.Load() == 0 {
		t.Fatal("the complete file did not open in passthrough")
	}
	conn, err := first.Detach()
	if err != nil {
		t.Fatal(err)
	}
	second, err := Resume(mnt, c.Dataset("ds", p), opts, conn)
	if err != nil {
		t.Fatal(err)
	}
	current = second
	for name, b := range map[string][]byte{"f": want, "g": other} {
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || !bytes.Equal(got, b) {
			t.Errorf("a new open of %s after the takeover: %v (right bytes: %t)", name, err, bytes.Equal(got, b))
		}
	}
	got := make([]byte, len(want))
	if _, err := held.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("the passthrough handle of the first server: %v", err)
	}
	if second.Passthrough.Load() == 0 {
		t.Error("the new open of f was not answered with passthrough (the earlier backing file)")
	}
}
