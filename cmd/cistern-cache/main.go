// Command cistern-cache is the per-node cache daemon: one FUSE mount per
// dataset, one block cache in memory and disk tiers for all of them.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/daemon"
)

var version = "dev"

func main() {
	fs := flag.NewFlagSet("cistern-cache", flag.ContinueOnError)
	klog.InitFlags(fs)
	var opts daemon.Options
	opts.AddFlags(fs)
	showVersion := fs.Bool("version", false, "print the version and exit")
	debugAddr := fs.String("debug-address", "", "serve Go's profiles (net/http/pprof) on this loopback host:port (empty: off)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(version)
		return
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "cistern-cache: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "cistern-cache: %v\n", err)
		os.Exit(2)
	}
	if *debugAddr != "" {
		if err := serveDebug(*debugAddr); err != nil {
			fmt.Fprintf(os.Stderr, "cistern-cache: --debug-address: %v\n", err)
			os.Exit(2)
		}
	}
	d, err := daemon.New(opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cistern-cache: %v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		klog.ErrorS(err, "Cache daemon stopped with an error")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
