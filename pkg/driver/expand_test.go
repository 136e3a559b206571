package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// TestControllerExpandVolume: expansion records the size asked for (never
// smaller), needs no node step, survives in the record a CreateVolume retry
// reads, works on read-only datasets (records in the controller's state),
// and refuses what is not a volume.
func TestControllerExpandVolume(t *testing.T) {
	ctx := context.Background()
	d, _ := newTestDriver(t)
	const gi = int64(1) << 30
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "ro/team-a/claim"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		params map[string]string
		cap    *csi.VolumeCapability
	}{
		{"read-write", map[string]string{"dataset": "ds", "source": "file://" + root + "/rw", "access": "read-write"}, rwCap},
		{"read-only", map[string]string{"dataset": "ds", "source": "file://" + root + "/ro"}, roCap},
	} {
		if err := os.MkdirAll(filepath.Join(root, "rw"), 0o755); err != nil {
			t.Fatal(err)
		}
		c.params[MetaPVCNamespace], c.params[MetaPVCName] = "team-a", "claim"
		create := &csi.CreateVolumeRequest{Name: "pvc-" + c.name, Parameters: c.params, VolumeCapabilities: []*csi.VolumeCapability{c.cap},
			CapacityRange: &csi.CapacityRange{RequiredBytes: gi}}
		vol, err := d.CreateVolume(ctx, create)
		if err != nil {
			t.Fatalf("%s: CreateVolume: %v", c.name, err)
		}
		id := vol.GetVolume().GetVolumeId()
		for _, step := range []struct{ ask, want int64 }{{2 * gi, 2 * gi}, {gi, 2 * gi}, {2 * gi, 2 * gi}, {5 * gi, 5 * gi}} {
			resp, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: step.ask}, VolumeCapability: c.cap})
			if err != nil || resp.GetCapacityBytes() != step.want || resp.GetNodeExpansionRequired() {
				t.Fatalf("%s: expand to %d = %v, %v; want %d and no node step", c.name, step.ask, resp, err, step.want)
			}
		}
		again, err := d.CreateVolume(ctx, create)
		if err != nil || again.GetVolume().GetCapacityBytes() != 5*gi {
			t.Errorf("%s: CreateVolume retry after expansion = %v, %v; want the recorded 5 GiB", c.name, again, err)
		}
		if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
		_, err = d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 6 * gi}})
		wantCode(t, err, codes.NotFound)
	}

	_, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "static-handle", CapacityRange: &csi.CapacityRange{RequiredBytes: gi}})
	wantCode(t, err, codes.NotFound)
	_, err = d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "x"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{CapacityRange: &csi.CapacityRange{RequiredBytes: gi}})
	wantCode(t, err, codes.InvalidArgument)
}
