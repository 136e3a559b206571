package posix

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/fusefs"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// TestLocksAcrossNodes: two mounts of one POSIX source (two nodes of a
// ReadWriteMany volume on a NAS) see each other's flock and record locks:
// they are the source's. They were the kernel's locks of each mount, so a
// pod on another node took a lock already held.
func TestLocksAcrossNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real FUSE mounts")
	}
	top := t.TempDir()
	src := filepath.Join(top, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), make([]byte, 100), 0o666); err != nil {
		t.Fatal(err)
	}
	var mnts []string
	for _, node := range []string{"node-a", "node-b"} {
		p, err := posix.New(src)
		if err != nil {
			t.Fatal(err)
		}
		c, err := cache.New(cache.Options{Tiers: []cache.TierOptions{{Name: "disk", Dir: filepath.Join(top, node+"-cache"), Quota: 1 << 30}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		mnt := filepath.Join(top, node)
		os.MkdirAll(mnt, 0o755)
		f, err := fusefs.Mount(mnt, c.Dataset("locks", p), fusefs.Options{Name: node, MetaCache: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := f.Unmount(); err != nil {
				syscall.Unmount(mnt, syscall.MNT_DETACH)
			}
		})
		mnts = append(mnts, mnt)
	}
	open := func(mnt string) *os.File {
		f, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	a, b := open(mnts[0]), open(mnts[1])

	// flock.
	if err := unix.Flock(int(a.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(b.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("flock on node b while node a holds it: %v, want EWOULDBLOCK", err)
	}
	if err := unix.Flock(int(a.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(b.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Errorf("flock on node b after node a let go: %v", err)
	}
	unix.Flock(int(b.Fd()), unix.LOCK_UN)

	// Record locks: a range held on node a conflicts on node b, a range
	// beside it does not; GETLK on node b sees node a's lock.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 10}
	if err := unix.FcntlFlock(a.Fd(), unix.F_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	if err := unix.FcntlFlock(b.Fd(), unix.F_SETLK, &lk); !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EACCES) {
		t.Errorf("record lock on node b over node a's: %v, want EAGAIN", err)
	}
	other := unix.Flock_t{Type: unix.F_WRLCK, Start: 50, Len: 10}
	if err := unix.FcntlFlock(b.Fd(), unix.F_SETLK, &other); err != nil {
		t.Errorf("record lock on node b beside node a's: %v", err)
	}
	probe := unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 10}
	if err := unix.FcntlFlock(b.Fd(), unix.F_GETLK, &probe); err != nil || probe.Type != unix.F_WRLCK {
		t.Errorf("GETLK on node b: type %d, %v; want node a's write lock", probe.Type, err)
	}
	// Closing node a's descriptor releases its locks (when the kernel
	// releases the handle, just after close returns).
	a.Close()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		retry := unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 10}
		if err = unix.FcntlFlock(b.Fd(), unix.F_SETLK, &retry); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("record lock on node b after node a closed the file: %v", err)
	}
}
