package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/minio/minio-go/v7"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cistern-csi/cistern/test/s3server"
	"github.com/cistern-csi/cistern/test/testutil"
)

// TestLostDatasetMountIsStagedAgain: the cache daemon is killed and comes
// back without its FUSE connections (nothing held them). A pod that was
// running keeps a dead mount (ENOTCONN, as the README says), but the next
// NodePublishVolume of each volume stages it again, so later pods work:
// with the node plugin that staged the volume (an S3 dataset with the stage
// secrets it kept in memory), and with a node plugin that restarted too (it
// no longer knows the stage request: enough for a file:// dataset; an S3
// dataset with credentials is refused with the reason). And everything
// unmounts cleanly afterwards, dead mounts included.
func TestLostDatasetMountIsStagedAgain(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.UnmountAllUnder(t, dir)
	bin := filepath.Join(dir, "bin")
	buildBinaries(t, bin)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	src := filepath.Join(dir, "datasets/research")
	if err := os.MkdirAll(filepath.Join(src, "team-a/claim"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "team-a/prices.csv"), []byte("a-prices\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cacheSock, csiSock := filepath.Join(dir, "cache.sock"), filepath.Join(dir, "csi.sock")
	startDaemon := func() *process {
		p := start(t, filepath.Join(dir, "cache.log"), filepath.Join(bin, "cistern-cache"),
			"--socket", cacheSock, "--state-dir", filepath.Join(dir, "cache"), "--cache-tiers", "disk:"+filepath.Join(dir, "disk")+":1Gi", "--grace", "0s")
		waitForSocket(t, cacheSock)
		return p
	}
	drivers := 0
	startDriver := func() *process {
		drivers++
		p := start(t, filepath.Join(dir, fmt.Sprintf("csi-%d.log", drivers)), filepath.Join(bin, "cistern-csi"),
			"--endpoint", "unix://"+csiSock, "--mode", "all", "--node-id", "node-1", "--state-dir", filepath.Join(dir, "state"), "--cache-socket", cacheSock)
		waitForSocket(t, csiSock)
		return p
	}
	kill := func(p *process, sock string) {
		t.Helper()
		if err := p.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not die of SIGKILL", p.cmd.Path)
		}
		_ = os.Remove(sock) // a killed server leaves its socket
	}
	daemon, drv := startDaemon(), startDriver()
	conn, err := grpc.NewClient("unix://"+csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctrl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)

	srv, mc := s3server.StartBucketT(t, "data")
	if _, err := mc.PutObject(ctx, "data", "research/team-a/prices.csv", strings.NewReader("a-prices\n"), 9, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	type volume struct {
		name, access, file string
		mode               csi.VolumeCapability_AccessMode_Mode
		s3                 bool
		id                 string
		ctx                map[string]string
		staging            string
	}
	vols := []*volume{
		{name: "ro", access: "read-only", file: "prices.csv", mode: csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY},
		{name: "rw", access: "read-write", mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER},
		{name: "s3", access: "read-only", file: "prices.csv", mode: csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, s3: true},
	}
	secretsOf := func(v *volume) map[string]string {
		if v.s3 {
			return srv.Secrets()
		}
		return nil
	}
	capOf := func(v *volume) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: v.mode}}
	}
	publish := func(v *volume, target string) error {
		_, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: target,
			VolumeCapability: capOf(v), VolumeContext: v.ctx})
		return err
	}
	var targets []struct {
		v      *volume
		target string
	}
	for _, v := range vols {
		params := map[string]string{"dataset": "research", "source": "file://" + src, "access": v.access,
			"csi.storage.k8s.io/pvc/namespace": "team-a", "csi.storage.k8s.io/pvc/name": "claim"}
		if v.s3 {
			params["source"], params["endpoint"], params["addressing"] = "s3://data/research", srv.Endpoint, "path"
		}
		if v.access == "read-only" {
			params["subPath"] = "${pvc.namespace}"
		}
		cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pv-" + v.name, Parameters: params, VolumeCapabilities: []*csi.VolumeCapability{capOf(v)}, Secrets: secretsOf(v)})
		if err != nil {
			t.Fatalf("CreateVolume %s: %v", v.name, err)
		}
		v.id, v.ctx, v.staging = cv.Volume.VolumeId, cv.Volume.VolumeContext, filepath.Join(dir, "staging-"+v.name)
		if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: capOf(v), VolumeContext: v.ctx, Secrets: secretsOf(v)}); err != nil {
			t.Fatalf("NodeStageVolume %s: %v", v.name, err)
		}
	}
	published := func(v *volume, name string) string {
		t.Helper()
		target := filepath.Join(dir, "pods", name)
		if err := publish(v, target); err != nil {
			t.Fatalf("NodePublishVolume %s at %s: %v", v.name, name, err)
		}
		targets = append(targets, struct {
			v      *volume
			target string
		}{v, target})
		return target
	}
	// works checks a pod's volume: the read-only one reads the file, the
	// read-write one writes a file the source then holds.
	works := func(v *volume, target string) error {
		if v.access == "read-only" {
			b, err := os.ReadFile(filepath.Join(target, v.file))
			if err == nil && string(b) != "a-prices\n" {
				err = errors.New("wrong bytes: " + string(b))
			}
			return err
		}
		name := filepath.Base(target) + ".out"
		if err := os.WriteFile(filepath.Join(target, name), []byte(name), 0o644); err != nil {
			return err
		}
		if b, err := os.ReadFile(filepath.Join(src, "team-a/claim", name)); err != nil || string(b) != name {
			return errors.New("the source does not hold what the pod wrote")
		}
		return nil
	}
	running := map[*volume]string{}
	for _, v := range vols {
		running[v] = published(v, "running-"+v.name)
		if err := works(v, running[v]); err != nil {
			t.Fatalf("%s before the crash: %v", v.name, err)
		}
	}

	// The daemon dies; nothing holds its connections.
	kill(daemon, cacheSock)
	daemon = startDaemon()
	for _, v := range vols {
		if err := works(v, running[v]); !errors.Is(err, syscall.ENOTCONN) {
			t.Errorf("%s: a running pod's volume after the daemon lost its connections: %v; the README says ENOTCONN", v.name, err)
		}
	}
	// The node plugin that staged the volume stages it again (with the
	// stage secrets it kept in memory for the S3 dataset).
	for _, v := range []*volume{vols[0], vols[2]} {
		if err := works(v, published(v, "after-daemon-"+v.name)); err != nil {
			t.Errorf("%s: a pod published after the daemon came back: %v", v.name, err)
		}
	}
	// The node plugin restarts too: it no longer knows the stage request.
	kill(drv, csiSock)
	drv = startDriver()
	_ = drv
	kill(daemon, cacheSock)
	daemon = startDaemon()
	if err := works(vols[1], published(vols[1], "after-both-"+vols[1].name)); err != nil {
		t.Errorf("a pod published after the daemon and the node plugin came back: %v", err)
	}
	// Without the stage secrets the S3 dataset cannot be staged again: the
	// publish says so, rather than mount it without credentials.
	err = publish(vols[2], filepath.Join(dir, "pods", "after-both-s3"))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no stage secrets") {
		t.Errorf("publishing the S3 volume after both restarted: %v, want FailedPrecondition naming the stage secrets", err)
	}
	// A publish of a healthy staging path does not stage again.
	if err := works(vols[0], published(vols[0], "later-"+vols[0].name)); err != nil {
		t.Errorf("a later pod: %v", err)
	}

	// Everything unmounts, the running pods' dead mounts too.
	for _, tg := range targets {
		if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: tg.v.id, TargetPath: tg.target}); err != nil {
			t.Errorf("NodeUnpublishVolume %s: %v", tg.target, err)
		}
	}
	for _, v := range vols {
		if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging}); err != nil {
			t.Errorf("NodeUnstageVolume %s: %v", v.name, err)
		}
	}
	for _, log := range []string{"csi-1.log", "csi-2.log"} {
		if b := mustRead(t, filepath.Join(dir, log)); !strings.Contains(string(b), "Staging the volume again") {
			t.Errorf("%s does not say the node plugin staged a volume again", log)
		}
	}
}
