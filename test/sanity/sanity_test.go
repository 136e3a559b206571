// Package sanity runs the CSI sanity suite (csi-test) against the real
// driver: a unix socket, a real cache daemon, real FUSE and bind mounts, and
// a dataset that is either a file:// tree in a temporary directory or an
// s3:// prefix of a real S3 server (versitygw) on loopback:
//
//	go test ./test/sanity/ -args -source=file
//	go test ./test/sanity/ -args -source=s3
//
// (ginkgo runs one suite per process, so each source is its own run.)
package sanity

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/minio/minio-go/v7"

	"github.com/cistern-csi/cistern/pkg/driver"
	"github.com/cistern-csi/cistern/test/s3server"
	"github.com/cistern-csi/cistern/test/testutil"
)

var source = flag.String("source", "file", "dataset source to run the suite against: file or s3")

func TestSanity(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.UnmountAllUnder(t, dir)
	endpoint := testutil.StartDriver(t, dir, driver.Options{CacheGroup: "sanity-pool"})

	cfg := sanity.NewTestConfig()
	cfg.Address = endpoint
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeParameters = map[string]string{
		"dataset":    "sanity",
		"access":     "read-write",
		"onDelete":   "delete",
		"cacheGroup": "sanity-pool",
		// The provisioner's --extra-create-metadata adds the PVC's
		// namespace; the request name is the PV name.
		"subPath":               "${pvc.namespace}/${pv.name}",
		driver.MetaPVCNamespace: "sanity",
	}
	var left func() []string
	switch *source {
	case "file":
		dataset := filepath.Join(dir, "dataset")
		if err := os.MkdirAll(dataset, 0o755); err != nil {
			t.Fatal(err)
		}
		cfg.TestVolumeParameters["source"] = "file://" + dataset
		left = func() []string {
			ents, err := os.ReadDir(filepath.Join(dataset, "sanity"))
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			var out []string
			for _, e := range ents {
				out = append(out, "sanity/"+e.Name())
			}
			return out
		}
	case "s3":
		srv, mc := s3server.StartBucketT(t, "sanity")
		ctx := context.Background()
		cfg.TestVolumeParameters["source"] = "s3://sanity/datasets"
		cfg.TestVolumeParameters["endpoint"] = srv.Endpoint
		cfg.TestVolumeParameters["region"] = "us-east-1"
		cfg.TestVolumeParameters["addressing"] = "path"
		cfg.SecretsFile = writeSecrets(t, dir, srv.Secrets())
		left = func() []string {
			var out []string
			for o := range mc.ListObjects(ctx, "sanity", minio.ListObjectsOptions{Prefix: "datasets/", Recursive: true}) {
				if o.Err != nil {
					t.Fatal(o.Err)
				}
				out = append(out, o.Key)
			}
			sort.Strings(out)
			return out
		}
	default:
		t.Fatalf("-source=%q: want file or s3", *source)
	}
	sanity.Test(t, cfg)

	// Every volume sanity created was deleted with onDelete=delete: no
	// volume directory (or, on S3, object or record) is left.
	for _, p := range left() {
		t.Errorf("left in the dataset after every volume was deleted: %s", p)
	}
}

// writeSecrets writes the csi-sanity secrets file: the same credentials
// for every call that takes secrets.
func writeSecrets(t *testing.T, dir string, secrets map[string]string) string {
	t.Helper()
	var b strings.Builder
	for _, call := range []string{"CreateVolumeSecret", "DeleteVolumeSecret", "ControllerValidateVolumeCapabilitiesSecret", "NodeStageVolumeSecret", "NodePublishVolumeSecret", "ControllerExpandVolumeSecret"} {
		fmt.Fprintf(&b, "%s:\n", call)
		for k, v := range secrets {
			fmt.Fprintf(&b, "  %s: %q\n", k, v)
		}
	}
	p := filepath.Join(dir, "secrets.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
