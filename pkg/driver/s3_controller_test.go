package driver

import (
	"bytes"
	"context"
	"sort"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/minio/minio-go/v7"
	"google.golang.org/grpc/codes"

	"github.com/cistern-csi/cistern/test/s3server"
)

// The controller on an s3:// dataset against a real S3 server: markers,
// exact-prefix delete, archive, the sharing guard, and credentials.
func TestControllerS3(t *testing.T) {
	srv, mc := s3server.StartBucketT(t, "data")
	ctx := context.Background()
	keys := func(prefix string) []string {
		var out []string
		for o := range mc.ListObjects(ctx, "data", minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			out = append(out, o.Key)
		}
		sort.Strings(out)
		return out
	}
	put := func(key string) {
		if _, err := mc.PutObject(ctx, "data", key, bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	d, _ := newTestDriver(t)
	secrets := srv.Secrets()
	req := func(name, onDelete, subPath string) *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: name, Secrets: secrets, VolumeCapabilities: []*csi.VolumeCapability{rwCap},
			Parameters: map[string]string{"dataset": "feat", "source": "s3://data/feat", "endpoint": srv.Endpoint, "addressing": "path",
				"region": "us-east-1", "access": "read-write", "onDelete": onDelete, "subPath": subPath,
				MetaPVCNamespace: "team-a", MetaPVCName: name}}
	}

	// CreateVolume writes the marker: an empty volume lists.
	del, err := d.CreateVolume(ctx, req("pv-del", "delete", "${pvc.namespace}/vol"))
	if err != nil {
		t.Fatal(err)
	}
	if got := keys("feat/team-a/"); strings.Join(got, ",") != "feat/team-a/vol/" {
		t.Fatalf("after CreateVolume: %v, want the marker feat/team-a/vol/", got)
	}
	if again, err := d.CreateVolume(ctx, req("pv-del", "delete", "${pvc.namespace}/vol")); err != nil || again.Volume.VolumeId != del.Volume.VolumeId {
		t.Fatalf("idempotent retry: %v", err)
	}
	_, err = d.CreateVolume(ctx, req("pv-del", "archive", "${pvc.namespace}/vol"))
	wantCode(t, err, codes.AlreadyExists)

	// Delete removes exactly the volume's prefix.
	for _, k := range []string{"feat/team-a/vol/a", "feat/team-a/vol/d/b", "feat/team-a/vol-2/keep", "feat/team-a/volume/keep", "feat/team-a/keep"} {
		put(k)
	}
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: del.Volume.VolumeId, Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	want := "feat/team-a/keep,feat/team-a/vol-2/keep,feat/team-a/volume/keep"
	if got := strings.Join(keys("feat/team-a/"), ","); got != want {
		t.Fatalf("after delete: %s, want %s", got, want)
	}

	// Archive moves the objects under .cistern/archive.
	arc, err := d.CreateVolume(ctx, req("pv-arc", "archive", "${pvc.namespace}/run"))
	if err != nil {
		t.Fatal(err)
	}
	put("feat/team-a/run/result.csv")
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: arc.Volume.VolumeId, Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	if got := keys("feat/team-a/run/"); len(got) != 0 {
		t.Errorf("archived volume still holds %v", got)
	}
	archived := keys("feat/.cistern/archive/team-a/")
	if len(archived) != 2 || !strings.HasSuffix(archived[1], "/result.csv") || !strings.HasPrefix(archived[1], "feat/.cistern/archive/team-a/run-") {
		t.Errorf("archive holds %v, want the marker and result.csv under run-<time>/", archived)
	}

	// Two volumes on one sub-path: a second one that would delete it is
	// refused; one that retains it shares it, and deleting the first
	// retains the data.
	a, err := d.CreateVolume(ctx, req("pv-a", "delete", "${pvc.namespace}/shared"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.CreateVolume(ctx, req("pv-c", "delete", "${pvc.namespace}/shared"))
	wantCode(t, err, codes.FailedPrecondition)
	if _, err := d.CreateVolume(ctx, req("pv-b", "retain", "${pvc.namespace}/shared")); err != nil {
		t.Fatal(err)
	}
	put("feat/team-a/shared/data")
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: a.Volume.VolumeId, Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	if got := keys("feat/team-a/shared/"); len(got) != 2 {
		t.Errorf("a sub-path another volume uses was deleted: %v left", got)
	}

	// Credentials: wrong ones are PermissionDenied, missing ones a clear
	// InvalidArgument, and neither shows a secret value.
	bad := req("pv-x", "delete", "${pvc.namespace}/x")
	bad.Secrets = map[string]string{"access-key": srv.AccessKey, "secret-key": "not-the-secret"}
	_, err = d.CreateVolume(ctx, bad)
	wantCode(t, err, codes.PermissionDenied)
	if err != nil && strings.Contains(err.Error(), "not-the-secret") {
		t.Errorf("error shows the secret: %v", err)
	}
	none := req("pv-y", "delete", "${pvc.namespace}/y")
	none.Secrets = nil
	_, err = d.CreateVolume(ctx, none)
	wantCode(t, err, codes.InvalidArgument)
}
