package driver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestLiveness: the node plugin's /healthz and Probe fail, naming the
// cause, while its cache daemon does not serve or after the kubelet
// refused the registration, and recover with them; the controller's Probe
// does not depend on a cache daemon.
func TestLiveness(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "plugins_registry")
	if err := os.Mkdir(reg, 0o750); err != nil {
		t.Fatal(err)
	}
	fc := &fakeCache{holders: map[string]string{}}
	d, err := New(Options{
		Endpoint: "unix://" + filepath.Join(dir, "csi.sock"), Mode: ModeNode, NodeID: "node-1",
		StateDir: filepath.Join(dir, "state"), CacheSocket: "/run/cistern/cache.sock", UnmountTimeout: time.Second,
		RegistrationDir: reg, HealthAddr: "127.0.0.1:0",
	}, newFakeMounter(), fc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	sock := registrationSocket(reg)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil && d.HealthAddr() != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the driver did not start serving")
		}
	}
	get := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + d.HealthAddr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	expect := func(what string, code int, words ...string) {
		t.Helper()
		got, body := get()
		if got != code {
			t.Errorf("%s: GET /healthz = %d %q, want %d", what, got, body, code)
		}
		for _, w := range words {
			if !strings.Contains(body, w) {
				t.Errorf("%s: /healthz says %q, want it to name %q", what, body, w)
			}
		}
		resp, err := d.Probe(ctx, &csi.ProbeRequest{})
		if code == http.StatusOK && (err != nil || !resp.GetReady().GetValue()) {
			t.Errorf("%s: Probe = %v, %v; want ready", what, resp, err)
		}
		if code != http.StatusOK && status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: Probe = %v, %v; want FAILED_PRECONDITION", what, resp, err)
		}
	}

	expect("before the kubelet answered", http.StatusOK)
	fc.mu.Lock()
	fc.unhealthy = errors.New("dataset 0123 at /var/lib/cistern/datasets/0123/mnt: statfs: transport endpoint is not connected")
	fc.mu.Unlock()
	expect("cache daemon not serving", http.StatusServiceUnavailable, "/run/cistern/cache.sock", "not connected")
	fc.mu.Lock()
	fc.unhealthy = nil
	fc.mu.Unlock()
	expect("cache daemon back", http.StatusOK)

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rc := registerapi.NewRegistrationClient(conn)
	if _, err := rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "plugin version not supported"}); err != nil {
		t.Fatal(err)
	}
	expect("kubelet refused", http.StatusServiceUnavailable, "refused", "plugin version not supported")
	if _, err := rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	expect("kubelet registered", http.StatusOK)

	ctrl, err := New(Options{Endpoint: "unix:///unused.sock", Mode: ModeController, StateDir: dir, UnmountTimeout: time.Second},
		newFakeMounter(), &fakeCache{unhealthy: errors.New("no daemon")})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := ctrl.Probe(ctx, &csi.ProbeRequest{}); err != nil || !resp.GetReady().GetValue() {
		t.Errorf("controller Probe = %v, %v; want ready without a cache daemon", resp, err)
	}
}
