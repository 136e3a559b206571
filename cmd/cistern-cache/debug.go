package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"

	"k8s.io/klog/v2"
)

// serveDebug serves Go's profiles on addr, which must be a loopback
// address: profiles show paths and the daemon's internals, and are for an
// administrator on the node (kubectl port-forward, or the benchmarks).
func serveDebug(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q is not a loopback address", addr)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	klog.InfoS("Serving Go profiles", "address", lis.Addr().String())
	go func() {
		err := http.Serve(lis, mux)
		klog.ErrorS(err, "Profile server stopped")
	}()
	return nil
}
