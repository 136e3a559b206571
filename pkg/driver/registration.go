package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// The node plugin registers itself with the kubelet, as the
// node-driver-registrar sidecar would: the kubelet's plugin watcher finds
// a socket in its plugins_registry directory, asks it for the plugin's
// kind, name, CSI endpoint (as the kubelet reaches it) and CSI versions,
// registers the driver and says how that went.

// csiVersions are the CSI spec versions the kubelet may speak to us.
var csiVersions = []string{"1.0.0"}

// registration answers the kubelet's plugin watcher.
type registration struct {
	registerapi.UnimplementedRegistrationServer
	endpoint string // the CSI socket's path on the host

	mu     sync.Mutex
	status *registerapi.RegistrationStatus // guarded by mu; the kubelet's last word, nil before it
}

// GetInfo implements registerapi.RegistrationServer.
func (r *registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              Name,
		Endpoint:          r.endpoint,
		SupportedVersions: csiVersions,
	}, nil
}

// NotifyRegistrationStatus implements registerapi.RegistrationServer.
func (r *registration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	r.mu.Lock()
	r.status = s
	r.mu.Unlock()
	if s.GetPluginRegistered() {
		klog.InfoS("Registered with the kubelet", "driver", Name, "endpoint", r.endpoint)
	} else {
		klog.ErrorS(errors.New(s.GetError()), "The kubelet refused the registration", "driver", Name, "endpoint", r.endpoint)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// refused returns the kubelet's error when its last word was a refusal
// ("" before it said anything and after it registered the driver).
func (r *registration) refused() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.status == nil || r.status.GetPluginRegistered() {
		return ""
	}
	if r.status.GetError() == "" {
		return "no reason given"
	}
	return r.status.GetError()
}

// registrationSocket is the socket's path in the kubelet's directory.
func registrationSocket(dir string) string { return filepath.Join(dir, Name+"-reg.sock") }

// serveRegistration serves r on its socket in dir until ctx is done, then
// removes the socket (so the kubelet unregisters the driver).
func serveRegistration(ctx context.Context, dir string, r *registration) error {
	sock := registrationSocket(dir)
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale registration socket %s: %w", sock, err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, r)
	klog.InfoS("Serving kubelet registration", "socket", sock, "endpoint", r.endpoint)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		srv.Stop()
	}
	os.Remove(sock)
	return err
}
