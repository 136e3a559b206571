package driver

import (
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// singleWriters remembers where each volume published with
// SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod) is: such a volume is
// published at one target path of the node at a time. It lives in memory;
// a restarted node plugin forgets it (the kubelet, which enforces
// ReadWriteOncePod across pods too, is the first guard).
type singleWriters struct {
	mu       sync.Mutex
	byVolume map[string]string // guarded by mu; volume ID -> target path
}

func newSingleWriters() *singleWriters { return &singleWriters{byVolume: map[string]string{}} }

// claim records that volumeID is published at target with capability c,
// refusing a single-writer volume already published elsewhere.
func (s *singleWriters) claim(volumeID, target string, c *csi.VolumeCapability) error {
	if c.GetAccessMode().GetMode() != csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if at, ok := s.byVolume[volumeID]; ok && at != target {
		return status.Errorf(codes.FailedPrecondition, "volume %s is single-writer (ReadWriteOncePod) and already published at %s", volumeID, at)
	}
	s.byVolume[volumeID] = target
	return nil
}

// release forgets a publication of volumeID at target.
func (s *singleWriters) release(volumeID, target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byVolume[volumeID] == target {
		delete(s.byVolume, volumeID)
	}
}
