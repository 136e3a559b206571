package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cistern-csi/cistern/pkg/cache/keeper"
)

// runKeeper holds the cache daemon's FUSE connections on a unix socket
// until ctx ends: a keeper of its own, whose pod outlives the node pod
// (cistern-csi and cistern-cache) when that is deleted or upgraded.
func runKeeper(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cistern keeper", flag.ContinueOnError)
	socket := fs.String("socket", "/var/lib/cistern-keeper/keeper.sock", "unix socket the cache daemon (its --keeper-socket) hands its FUSE connections to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !filepath.IsAbs(*socket) {
		return fmt.Errorf("--socket %q must be an absolute path", *socket)
	}
	if err := os.MkdirAll(filepath.Dir(*socket), 0o700); err != nil {
		return err
	}
	k, err := keeper.Listen(*socket)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "cistern keeper: holding FUSE connections on %s\n", *socket)
	<-ctx.Done()
	fmt.Fprintf(out, "cistern keeper: stopping; %d connections released\n", k.Len())
	return k.Close()
}
