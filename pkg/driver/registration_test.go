package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestKubeletRegistration does what the kubelet's plugin watcher does
// with a socket that appears in plugins_registry: GetInfo, check the kind,
// name and versions, reach the CSI endpoint it names (NodeGetInfo, as the
// kubelet's CSI plugin handler does), and report the result. The socket
// is gone once the driver stops, which is how the kubelet unregisters it.
func TestKubeletRegistration(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "plugins_registry")
	if err := os.Mkdir(reg, 0o750); err != nil {
		t.Fatal(err)
	}
	csiSock := filepath.Join(dir, "csi.sock")
	d, err := New(Options{
		Endpoint:        "unix://" + csiSock,
		Mode:            ModeNode,
		NodeID:          "node-1",
		StateDir:        filepath.Join(dir, "state"),
		CacheSocket:     "/unused/cache.sock",
		UnmountTimeout:  time.Second,
		RegistrationDir: reg,
	}, newFakeMounter(), &fakeCache{holders: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	// stop stops the driver and returns what Run did, once.
	stop := sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("the driver did not stop")
		}
	})
	t.Cleanup(func() { stop() })

	sock := filepath.Join(reg, Name+"-reg.sock")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no registration socket in %s", reg)
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rc := registerapi.NewRegistrationClient(conn)
	info, err := rc.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != Name || info.Endpoint != csiSock {
		t.Errorf("GetInfo = type %q name %q endpoint %q; want %q %q %q", info.Type, info.Name, info.Endpoint, registerapi.CSIPlugin, Name, csiSock)
	}
	if len(info.SupportedVersions) == 0 || info.SupportedVersions[0] != "1.0.0" {
		t.Errorf("GetInfo versions = %q, want CSI 1.0.0", info.SupportedVersions)
	}

	cc, err := grpc.NewClient("unix://"+info.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ni, err := csi.NewNodeClient(cc).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || ni.NodeId != "node-1" {
		t.Fatalf("NodeGetInfo through the registered endpoint: %v, %v", ni, err)
	}

	if why := d.registration.refused(); why != "" {
		t.Errorf("refused before the kubelet said anything: %q", why)
	}
	if _, err := rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "bad versions"}); err != nil {
		t.Fatal(err)
	}
	if why := d.registration.refused(); why != "bad versions" {
		t.Errorf("after a refusal: %q, want the kubelet's error", why)
	}
	if _, err := rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if why := d.registration.refused(); why != "" {
		t.Errorf("after the kubelet registered the driver: still refused %q", why)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, s := range []string{sock, csiSock} {
		if _, err := os.Stat(s); !os.IsNotExist(err) {
			t.Errorf("%s left behind after the driver stopped: %v", s, err)
		}
	}
}

// TestRegistrationOptions: registration is the node plugin's, with
// absolute paths.
func TestRegistrationOptions(t *testing.T) {
	base := Options{Endpoint: "unix:///csi/csi.sock", Mode: ModeNode, NodeID: "n", StateDir: "/var/lib/cistern",
		CacheSocket: "/var/lib/cistern/cache.sock", UnmountTimeout: time.Second}
	for _, c := range []struct {
		name   string
		change func(*Options)
		ok     bool
	}{
		{"node plugin registers", func(o *Options) { o.RegistrationDir = "/registration" }, true},
		{"with the kubelet's path", func(o *Options) {
			o.RegistrationDir = "/registration"
			o.KubeletEndpoint = "/var/lib/kubelet/plugins/cistern.csi.dev/csi.sock"
		}, true},
		{"controller does not", func(o *Options) { o.Mode = ModeController; o.RegistrationDir = "/registration" }, false},
		{"relative directory", func(o *Options) { o.RegistrationDir = "registration" }, false},
		{"relative kubelet path", func(o *Options) { o.KubeletEndpoint = "csi.sock" }, false},
		{"health address", func(o *Options) { o.HealthAddr = ":9808" }, true},
		{"health address without a port", func(o *Options) { o.HealthAddr = "9808" }, false},
	} {
		o := base
		c.change(&o)
		if err := o.Validate(); (err == nil) != c.ok {
			t.Errorf("%s: Validate() = %v, want ok=%t", c.name, err, c.ok)
		}
	}
}
