package driver

import (
	"context"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/mounter"
)

// A staging path is a bind mount of the volume's directory in the cache
// daemon's FUSE mount of the dataset. When that connection is lost (the
// daemon died and nothing kept its /dev/fuse descriptor, or the node
// rebooted under a kubelet that kept its state) the staging mount answers
// ENOTCONN, and the kubelet, which stages once per node, would publish
// every later pod of the volume from it. NodePublishVolume therefore stages
// such a volume again first: later pods get a working volume, and the
// kubelet never has to wait for every pod of the volume to leave the node.
// A pod that was already running keeps its mount of the lost connection:
// its volume answers ENOTCONN until the pod is restarted.

// stageArgs is what NodeStageVolume was given beyond the volume's ID and
// context: enough to stage the volume again. Kept in memory only (the
// secrets never reach the disk).
type stageArgs struct {
	capability *csi.VolumeCapability
	secrets    map[string]string
}

// stagedVolumes holds the stageArgs of the volumes this process staged.
type stagedVolumes struct {
	mu sync.Mutex
	m  map[string]stageArgs // by volume ID
}

func newStagedVolumes() *stagedVolumes { return &stagedVolumes{m: map[string]stageArgs{}} }

func (s *stagedVolumes) put(id string, a stageArgs) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[id] = a
}

func (s *stagedVolumes) get(id string) (stageArgs, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.m[id]
	return a, ok
}

func (s *stagedVolumes) drop(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}

// restage stages a volume again whose staging mount is broken (cause is
// what the kernel answered). With what NodeStageVolume was given when this
// process staged the volume; otherwise (the node plugin restarted since)
// with the publish request's capability and no stage secrets, which is
// enough for every dataset that needs no credentials.
func (d *Driver) restage(ctx context.Context, req *csi.NodePublishVolumeRequest, v *nodeVolume, staged string, cause error) error {
	unlock, err := d.volumeLocks.lock("id/" + req.GetVolumeId())
	if err != nil {
		return err
	}
	defer unlock()
	staging := req.GetStagingTargetPath()
	if st, err := mounter.Inspect(d.mounter, staged); err == nil && st.Mounted && !st.Corrupted {
		return nil // another publish staged it again meanwhile
	}
	args, known := d.staged.get(req.GetVolumeId())
	if !known {
		if src := v.params.Source; src.IsS3() && !src.S3.Anonymous {
			// Staging without the credentials would mount another
			// dataset key, whose reads the store refuses.
			return status.Errorf(codes.FailedPrecondition, "the staging mount of volume %s at %s is broken (%v), and this node plugin, restarted since it staged the volume, holds no stage secrets to stage it again: the volume is staged afresh once its pods have left the node", req.GetVolumeId(), staging, cause)
		}
		args = stageArgs{capability: req.GetVolumeCapability()}
	}
	klog.FromContext(ctx).Info("Staging the volume again: its dataset mount was lost", "volumeID", req.GetVolumeId(), "stagingPath", staging, "reason", cause)
	if err := d.stage(ctx, req.GetVolumeId(), v, staged, args); err != nil {
		s, _ := status.FromError(err)
		why := ""
		if !known {
			why = " (this node plugin has restarted since it staged the volume, so it holds no stage secrets)"
		}
		return status.Errorf(s.Code(), "the staging mount of volume %s at %s is broken (%v), and staging it again failed%s: %s", req.GetVolumeId(), staging, cause, why, s.Message())
	}
	d.staged.put(req.GetVolumeId(), args)
	return nil
}

// errNotStaged is the answer of a publish whose staging path holds no mount.
func errNotStaged(id, staging string) error {
	return status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", id, staging)
}
