// Command cistern-csi serves Cistern's CSI controller and node services.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/driver"
	"github.com/cistern-csi/cistern/pkg/mounter"
)

// version is set by the build (-ldflags -X main.version=...).
var version = "dev"

func main() {
	fs := flag.NewFlagSet("cistern-csi", flag.ContinueOnError)
	klog.InitFlags(fs)
	opts := driver.Options{Version: version}
	opts.AddFlags(fs)
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(version)
		return
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "cistern-csi: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	d, err := driver.New(opts, mounter.New(), nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cistern-csi: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		klog.ErrorS(err, "CSI server stopped")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
