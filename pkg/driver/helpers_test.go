package driver

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"
)

// fakeMounter adds forced unmount to mount-utils' FakeMounter.
type fakeMounter struct{ *mount.FakeMounter }

func (f fakeMounter) UnmountWithForce(target string, _ time.Duration) error { return f.Unmount(target) }

func newFakeMounter() fakeMounter { return fakeMounter{mount.NewFakeMounter(nil)} }

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
		UnmountTimeout: time.Second,
	}, m)
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
