package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cistern-csi/cistern/pkg/cache/keeper"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// Run serves the driver on its endpoint until ctx is cancelled, then stops
// gracefully (in-flight RPCs get a few seconds to finish).
func (d *Driver) Run(ctx context.Context) error {
	sock, err := SocketPath(d.opts.Endpoint)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return err
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", sock, err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	if d.opts.KeeperSocket != "" {
		// The cache daemon's FUSE connections, held while it restarts.
		k, err := keeper.Listen(d.opts.KeeperSocket)
		if err != nil {
			lis.Close()
			return fmt.Errorf("keeper: %w", err)
		}
		defer k.Close()
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(logRPC))
	csi.RegisterIdentityServer(srv, d)
	if d.opts.Mode != ModeNode {
		csi.RegisterControllerServer(srv, d)
	}
	if d.opts.Mode != ModeController {
		csi.RegisterNodeServer(srv, d)
	}
	klog.InfoS("Serving CSI", "driver", Name, "version", d.opts.Version, "mode", d.opts.Mode, "endpoint", d.opts.Endpoint, "nodeID", d.opts.NodeID)

	errc := make(chan error, 3)
	go func() { errc <- srv.Serve(lis) }()
	if d.opts.HealthAddr != "" {
		hl, err := net.Listen("tcp", d.opts.HealthAddr)
		if err != nil {
			srv.Stop()
			return fmt.Errorf("health listener: %w", err)
		}
		d.healthAddr.Store(hl.Addr().String())
		mux := http.NewServeMux()
		mux.HandleFunc("GET /healthz", d.serveHealth)
		hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- hsrv.Serve(hl) }()
		defer hsrv.Close()
	}
	// Registration is served once the CSI socket listens (the kubelet
	// dials it as soon as it has the registration) and withdrawn first.
	regCtx, stopReg := context.WithCancel(ctx)
	regDone := make(chan struct{})
	go func() {
		defer close(regDone)
		if d.registration == nil {
			return
		}
		if err := serveRegistration(regCtx, d.opts.RegistrationDir, d.registration); err != nil {
			errc <- fmt.Errorf("kubelet registration: %w", err)
		}
	}()
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	stopReg()
	<-regDone
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		srv.Stop()
	}
	os.Remove(sock)
	return err
}

// volumeIDOf is implemented by every CSI request that names a volume.
type volumeIDOf interface{ GetVolumeId() string }

// logRPC is the one logging interceptor: the method at V(2), request and
// response stripped of secrets at V(5), errors always. Probe is demoted to
// V(6). The handler's context carries a logger with the volume ID.
func logRPC(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	lv := klog.Level(2)
	if info.FullMethod == "/csi.v1.Identity/Probe" {
		lv = 6
	}
	logger := klog.FromContext(ctx).WithValues("method", info.FullMethod)
	if r, ok := req.(volumeIDOf); ok && r.GetVolumeId() != "" {
		logger = logger.WithValues("volumeID", r.GetVolumeId())
	}
	ctx = klog.NewContext(ctx, logger)
	logger.V(int(lv)).Info("RPC called")
	logger.V(5).Info("RPC request", "request", protosanitizer.StripSecrets(req))
	start := time.Now()
	resp, err := handler(ctx, req)
	if err != nil {
		logger.Error(err, "RPC failed", "duration", time.Since(start))
		return resp, err
	}
	logger.V(5).Info("RPC response", "response", protosanitizer.StripSecrets(resp), "duration", time.Since(start))
	return resp, nil
}
