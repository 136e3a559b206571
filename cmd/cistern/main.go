// Command cistern is Cistern's command-line tool:
//
//	cistern demo      run the driver locally against a generated dataset
//	cistern stats     what the node's cache daemon serves
//	cistern warmup    prefetch paths of a mounted dataset, with progress
//	cistern keeper    hold the cache daemon's FUSE connections across its restarts
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: cistern <command> [flags]

commands:
  demo    start cistern-csi on a unix socket and drive it like the
          provisioner and the kubelet would: real mounts, a generated
          dataset, two namespaces, no Kubernetes needed (needs root)
  stats   what the node's cache daemon serves: datasets, volumes, cached
          bytes, hits and misses, warm-ups
  warmup  --dataset NAME [PATH...]: prefetch paths of a mounted dataset
          into the node cache, with a progress bar
  keeper  --socket PATH: hold the cache daemon's FUSE connections while it
          (or the whole node pod) restarts; runs as its own DaemonSet
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch os.Args[1] {
	case "demo":
		fs := flag.NewFlagSet("cistern demo", flag.ContinueOnError)
		var o demoOptions
		o.AddFlags(fs)
		if err := fs.Parse(os.Args[2:]); err != nil {
			os.Exit(2)
		}
		if err := o.Validate(); err != nil {
			fmt.Fprintf(os.Stderr, "cistern demo: %v\n", err)
			os.Exit(2)
		}
		if err := runDemo(ctx, o, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "cistern demo: FAILED: %v\n", err)
			os.Exit(1)
		}
	case "stats", "warmup", "keeper":
		run := runStats
		switch os.Args[1] {
		case "warmup":
			run = runWarmup
		case "keeper":
			run = runKeeper
		}
		if err := run(ctx, os.Args[2:], os.Stdout); err != nil {
			if err != flag.ErrHelp {
				fmt.Fprintf(os.Stderr, "cistern %s: %v\n", os.Args[1], err)
			}
			os.Exit(1)
		}
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "cistern: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
