package driver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"
)

// GetPluginInfo returns the driver's name and build version.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: Name, VendorVersion: d.opts.Version}, nil
}

// GetPluginCapabilities advertises the controller service, topology and
// online expansion.
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		svc(csi.PluginCapability_Service_CONTROLLER_SERVICE),
		svc(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		// Expansion only records a size, so it is the same for a volume
		// in use: online.
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}}, nil
}

// Probe reports ready when Health finds nothing wrong, and
// FAILED_PRECONDITION naming the problem otherwise (the CSI spec's answer
// for an unhealthy plugin; the livenessprobe sidecar fails on it).
func (d *Driver) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if err := d.Health(ctx); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// healthTimeout bounds the cache daemon's answer to a health check.
const healthTimeout = 5 * time.Second

// Health is nil when the driver can serve: in the node service, the
// node's cache daemon answers and serves every dataset it has mounted, and
// the kubelet has not refused the driver's registration. The controller
// service holds no connection that could be down.
func (d *Driver) Health(ctx context.Context) error {
	if d.opts.Mode == ModeController {
		return nil
	}
	var errs []error
	if d.registration != nil {
		if msg := d.registration.refused(); msg != "" {
			errs = append(errs, fmt.Errorf("the kubelet refused the driver's registration: %s", msg))
		}
	}
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	if err := d.cache.Health(ctx); err != nil {
		errs = append(errs, fmt.Errorf("cache daemon (%s): %w", d.opts.CacheSocket, err))
	}
	return errors.Join(errs...)
}

// serveHealth answers the liveness probe's GET /healthz: 200 "ok", or 503
// with what Health found.
func (d *Driver) serveHealth(w http.ResponseWriter, r *http.Request) {
	if err := d.Health(r.Context()); err != nil {
		klog.ErrorS(err, "Health check failed")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}
