// Package e2e runs Cistern's binaries as separate processes, the way a node
// runs them, against a real S3 server on loopback.
package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/minio/minio-go/v7"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cistern-csi/cistern/test/s3server"
	"github.com/cistern-csi/cistern/test/testutil"
)

// buildBinaries builds cistern-csi and cistern-cache into dir.
func buildBinaries(t *testing.T, dir string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/cistern-csi", "../../cmd/cistern-cache", "../../cmd/cistern")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

// process is a binary this test started; it is killed (by PID) when the
// test ends.
type process struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when it has exited
}

func start(t *testing.T, log, bin string, args ...string) *process {
	t.Helper()
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return &process{cmd: cmd, log: log, done: done}
}

func waitForSocket(t *testing.T, p string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket %s did not appear", p)
		}
	}
}

// TestSecretsNeverLeak drives an S3 dataset through the whole volume life
// cycle (provision, stage, publish, write, read, an inline volume, a refused
// secret, unpublish, unstage, delete) with the driver and the cache daemon
// logging at -v=5, then looks for the secret values in their logs, their
// argv and environment, and /proc/mounts.
func TestSecretsNeverLeak(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.UnmountAllUnder(t, dir)
	bin := filepath.Join(dir, "bin")
	buildBinaries(t, bin)
	srv, mc := s3server.StartBucketT(t, "data")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	secrets := srv.Secrets()

	cacheSock, csiSock := filepath.Join(dir, "cache.sock"), filepath.Join(dir, "csi.sock")
	inline := "shared:s3://data/public/?endpoint=" + strings.ReplaceAll(strings.ReplaceAll(srv.Endpoint, ":", "%3A"), "/", "%2F")
	daemon := start(t, filepath.Join(dir, "cache.log"), filepath.Join(bin, "cistern-cache"),
		"--socket", cacheSock, "--state-dir", filepath.Join(dir, "cache"), "--cache-tiers", "disk:"+filepath.Join(dir, "disk")+":1Gi",
		"--grace", "0s", "--source-timeout", "5s", "-v", "5")
	waitForSocket(t, cacheSock)
	drv := start(t, filepath.Join(dir, "csi.log"), filepath.Join(bin, "cistern-csi"),
		"--endpoint", "unix://"+csiSock, "--mode", "all", "--node-id", "node-1", "--state-dir", filepath.Join(dir, "state"),
		"--cache-socket", cacheSock, "--inline-sources", inline, "-v", "5")
	waitForSocket(t, csiSock)

	conn, err := grpc.NewClient("unix://"+csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctrl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	params := map[string]string{
		"dataset": "features", "source": "s3://data/features", "endpoint": srv.Endpoint, "region": "us-east-1", "addressing": "path",
		"access": "read-write", "onDelete": "delete", "csi.storage.k8s.io/pvc/namespace": "quant-a", "csi.storage.k8s.io/pvc/name": "claim",
	}
	mountCap := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pv-1", Parameters: params, VolumeCapabilities: mountCap, Secrets: secrets})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	vol := cv.GetVolume()
	if _, err := ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: vol.VolumeId, VolumeCapabilities: mountCap, Secrets: secrets}); err != nil {
		t.Fatalf("ValidateVolumeCapabilities: %v", err)
	}
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, VolumeCapability: mountCap[0], VolumeContext: vol.VolumeContext, Secrets: secrets}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap[0], VolumeContext: vol.VolumeContext}); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	want := []byte("alpha,beta\n1,2\n")
	if err := os.WriteFile(filepath.Join(target, "f.csv"), want, 0o644); err != nil {
		t.Fatalf("write through the pod's mount: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(target, "f.csv")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back: %q, %v", got, err)
	}
	// The object is in the store, under the volume's prefix.
	if _, err := mc.StatObject(ctx, "data", "features/quant-a/claim/f.csv", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("the written file is not in the bucket: %v", err)
	}

	// An inline volume with node-publish secrets, and one with a wrong
	// secret key (refused: its error path must not leak it either).
	inlineTarget := filepath.Join(dir, "inline")
	inlineAttrs := map[string]string{"dataset": "public", "source": "s3://data/public", "endpoint": srv.Endpoint, "addressing": "path",
		"shared": "true", "csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.namespace": "quant-b"}
	roCap := &csi.VolumeCapability{AccessType: mountCap[0].AccessType, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY}}
	if _, err := mc.PutObject(ctx, "data", "public/readme.txt", strings.NewReader("open data"), 9, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-inline-1", TargetPath: inlineTarget, VolumeCapability: roCap, VolumeContext: inlineAttrs, Secrets: secrets}); err != nil {
		t.Fatalf("inline NodePublishVolume: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(inlineTarget, "readme.txt")); err != nil || string(got) != "open data" {
		t.Fatalf("inline read: %q, %v", got, err)
	}
	wrong := map[string]string{"access-key": secrets["access-key"], "secret-key": "wrong-" + secrets["secret-key"]}
	_, err = node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-inline-2", TargetPath: filepath.Join(dir, "inline-2"), VolumeCapability: roCap, VolumeContext: inlineAttrs, Secrets: wrong})
	if err == nil {
		t.Fatal("a wrong secret key was accepted")
	}
	if strings.Contains(err.Error(), wrong["secret-key"]) {
		t.Errorf("the CSI error shows the secret: %v", err)
	}

	// Look while everything is mounted: /proc/mounts, argv, environment.
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(mounts, []byte("fuse.cistern")) || !bytes.Contains(mounts, []byte(target)) {
		t.Fatalf("the dataset and the volume should be mounted now:\n%s", mounts)
	}
	places := map[string][]byte{"/proc/mounts": mounts, "/proc/self/mountinfo": mustRead(t, "/proc/self/mountinfo")}
	for name, p := range map[string]*process{"cistern-cache": daemon, "cistern-csi": drv} {
		pid := strconv.Itoa(p.cmd.Process.Pid)
		places[name+" argv"] = mustRead(t, "/proc/"+pid+"/cmdline")
		places[name+" environment"] = mustRead(t, "/proc/"+pid+"/environ")
	}

	// Tear down.
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-inline-1", TargetPath: inlineTarget}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.VolumeId, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.VolumeId, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.VolumeId, Secrets: secrets}); err != nil {
		t.Fatal(err)
	}
	if _, err := mc.StatObject(ctx, "data", "features/quant-a/claim/f.csv", minio.StatObjectOptions{}); err == nil {
		t.Error("onDelete=delete left the volume's object in the bucket")
	}
	// Stop both processes so their logs are complete, then read them.
	for _, p := range []*process{drv, daemon} {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	time.Sleep(500 * time.Millisecond)
	for name, p := range map[string]*process{"cistern-cache": daemon, "cistern-csi": drv} {
		log := mustRead(t, p.log)
		// The logs are real: they show the calls that carried secrets.
		for _, must := range []string{"features"} {
			if !bytes.Contains(log, []byte(must)) {
				t.Errorf("%s log does not mention %q: the check below would prove nothing", name, must)
			}
		}
		places[name+" log"] = log
	}
	if !bytes.Contains(places["cistern-csi log"], []byte("NodeStageVolume")) || !bytes.Contains(places["cistern-csi log"], []byte("***stripped***")) {
		t.Error("the driver's -v=5 log does not show the sanitized requests")
	}

	hits := 0
	for where, b := range places {
		for k, v := range map[string]string{"access key": secrets["access-key"], "secret key": secrets["secret-key"], "wrong secret key": wrong["secret-key"]} {
			if bytes.Contains(b, []byte(v)) {
				hits++
				t.Errorf("the %s appears in %s", k, where)
			}
		}
	}
	t.Logf("searched %d places for 3 secret values: %d hits", len(places), hits)
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
