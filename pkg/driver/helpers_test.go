package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/mounter"
)

// fakeMounter adds forced unmount to mount-utils' FakeMounter.
type fakeMounter struct {
	*mount.FakeMounter
	shows map[string]string // mount path -> the real directory a bind of it shows
}

func (f fakeMounter) UnmountWithForce(target string, _ time.Duration) error { return f.Unmount(target) }

func newFakeMounter() fakeMounter {
	return fakeMounter{FakeMounter: mount.NewFakeMounter(nil), shows: map[string]string{}}
}

// Mount records which directory a bind shows (a /proc/<pid>/fd/<n>
// source is the directory open there; a mounted path shows what it shows).
func (f fakeMounter) Mount(source, target, fstype string, options []string) error {
	if err := f.FakeMounter.Mount(source, target, fstype, options); err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(source)
	if err != nil {
		real = source
	}
	if shown, ok := f.shows[source]; ok {
		real = shown
	}
	f.shows[target] = real
	return nil
}

// SameDir compares what the fake bind at path shows with dir.
func (f fakeMounter) SameDir(path string, dir *os.File) (bool, error) {
	want, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", dir.Fd()))
	if err != nil {
		return false, err
	}
	if shown, ok := f.shows[want]; ok {
		want = shown
	}
	return f.shows[path] == want, nil
}

// fakeCache stands in for the cache daemon in unit tests: the dataset's
// "mount" is its source directory itself.
type fakeCache struct {
	mu      sync.Mutex
	holders map[string]string
	last    api.MountRequest
	// unhealthy is what Health answers.
	unhealthy error
}

func (f *fakeCache) Mount(_ context.Context, req api.MountRequest) (api.MountResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holders[req.Holder] = req.Source
	f.last = req
	return api.MountResponse{Key: "k", MountPath: strings.TrimPrefix(req.Source, "file://")}, nil
}

func (f *fakeCache) Release(_ context.Context, holder string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.holders, holder)
	return nil
}

func (f *fakeCache) Health(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.unhealthy
}

func (f *fakeCache) held() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.holders)
}

// newTestDriver returns a driver on a fake mounter whose inline volumes may
// use the given source prefixes.
func newTestDriver(t *testing.T, inline ...string) (*Driver, fakeMounter) {
	t.Helper()
	m := newFakeMounter()
	d, err := New(Options{
		Endpoint:       "unix:///unused.sock",
		Mode:           ModeAll,
		NodeID:         "node-1",
		StateDir:       filepath.Join(t.TempDir(), "state"),
		InlineSources:  inline,
		CacheSocket:    "/unused/cache.sock",
		UnmountTimeout: time.Second,
	}, m, &fakeCache{holders: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	return d, m
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

var (
	rwCap = mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	roCap = mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)
)

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
}

func mountCount(m fakeMounter) int {
	n := 0
	for _, a := range m.GetLog() {
		if a.Action == mount.FakeActionMount {
			n++
		}
	}
	return n
}

// newRealDriver returns a driver on real mounts, its state directory under
// dir (the test's own): the cleanup fails the test for any mount left
// under dir, staged volumes included, and detaches it.
func newRealDriver(t *testing.T) (*Driver, mounter.Interface, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for real bind mounts")
	}
	m := mounter.New()
	dir := t.TempDir()
	d, err := New(Options{Endpoint: "unix:///unused.sock", Mode: ModeAll, NodeID: "n", StateDir: filepath.Join(dir, "state"), CacheSocket: "/unused.sock", UnmountTimeout: 5 * time.Second}, m, &fakeCache{holders: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		refs, _ := mounter.MountRefs(m, dir)
		for _, r := range refs {
			t.Errorf("mount left behind: %s", r)
			_ = mounter.Cleanup(context.Background(), m, r, time.Second)
		}
	})
	return d, m, dir
}
