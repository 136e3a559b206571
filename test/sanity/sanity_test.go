// Package sanity runs the CSI sanity suite (csi-test) against the real
// driver: a unix socket, real bind mounts, and a file:// dataset in a
// temporary directory.
package sanity

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/cistern-csi/cistern/pkg/driver"
	"github.com/cistern-csi/cistern/test/testutil"
)

func TestSanity(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.UnmountAllUnder(t, dir)
	dataset := filepath.Join(dir, "dataset")
	if err := os.MkdirAll(dataset, 0o755); err != nil {
		t.Fatal(err)
	}
	endpoint := testutil.StartDriver(t, dir, driver.Options{CacheGroup: "sanity-pool"})

	cfg := sanity.NewTestConfig()
	cfg.Address = endpoint
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeParameters = map[string]string{
		"dataset":    "sanity",
		"source":     "file://" + dataset,
		"access":     "read-write",
		"onDelete":   "delete",
		"cacheGroup": "sanity-pool",
		// The provisioner's --extra-create-metadata adds the PVC's
		// namespace; the request name is the PV name.
		"subPath":               "${pvc.namespace}/${pv.name}",
		driver.MetaPVCNamespace: "sanity",
	}
	sanity.Test(t, cfg)

	// Every volume sanity created was deleted with onDelete=delete: the
	// namespace directory must be empty again.
	left, err := os.ReadDir(filepath.Join(dataset, "sanity"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("volume directory left in the dataset: sanity/%s", e.Name())
	}
}
