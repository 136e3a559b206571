// Package testutil holds helpers shared by Cistern's integration tests.
package testutil

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/daemon"
	"github.com/cistern-csi/cistern/pkg/driver"
	"github.com/cistern-csi/cistern/pkg/mounter"
)

// RequireRoot skips the test unless it runs as root, which real mounts need.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for real bind mounts (run make test as root)")
	}
}

// UnmountAllUnder registers a cleanup that unmounts whatever is still mounted
// under dir when the test ends, pass or fail, and reports it as a failure:
// a test that leaves a mount behind has found a bug.
func UnmountAllUnder(t testing.TB, dir string) {
	t.Helper()
	m := mounter.New()
	t.Cleanup(func() {
		refs, err := mounter.MountRefs(m, dir)
		if err != nil {
			t.Errorf("list mounts under %s: %v", dir, err)
			return
		}
		for _, r := range refs {
			t.Errorf("mount left behind at %s", r)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := mounter.Cleanup(ctx, m, r, 5*time.Second); err != nil {
				t.Errorf("cleanup %s: %v", r, err)
			}
			cancel()
		}
	})
}

// StartCacheDaemon runs a cache daemon (disk tier under stateDir, no grace
// period) until the test ends and returns its socket.
func StartCacheDaemon(t testing.TB, stateDir string) string {
	t.Helper()
	sock := filepath.Join(stateDir, "cache.sock")
	d, err := daemon.New(daemon.Options{
		Socket: sock, StateDir: stateDir, BlockSize: 1 << 20, MaxFetches: 8,
		Tiers: "disk:" + filepath.Join(stateDir, "cache") + ":1Gi",
	})
	if err != nil {
		t.Fatalf("cache daemon: %v", err)
	}
	serve(t, "cache daemon", d.Run, sock)
	return sock
}

// serve runs run until the test ends and waits for it to open sock.
func serve(t testing.TB, name string, run func(context.Context) error, sock string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("%s stopped with %v", name, err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s socket %s did not appear", name, sock)
		}
		select {
		case err := <-errc:
			t.Fatalf("%s exited: %v", name, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// StartDriver runs a driver with the real mounter on a unix socket under dir
// until the test ends, and returns its endpoint.
func StartDriver(t testing.TB, dir string, opts driver.Options) string {
	t.Helper()
	sock := filepath.Join(dir, "csi.sock")
	opts.Endpoint = "unix://" + sock
	if opts.Mode == "" {
		opts.Mode = driver.ModeAll
	}
	if opts.NodeID == "" {
		opts.NodeID = "test-node"
	}
	if opts.StateDir == "" {
		opts.StateDir = filepath.Join(dir, "state")
	}
	if opts.UnmountTimeout == 0 {
		opts.UnmountTimeout = 10 * time.Second
	}
	opts.Version = "test"
	if opts.CacheSocket == "" && opts.Mode != driver.ModeController {
		opts.CacheSocket = StartCacheDaemon(t, filepath.Join(dir, "cache-state"))
	}
	d, err := driver.New(opts, mounter.New(), nil)
	if err != nil {
		t.Fatalf("driver.New: %v", err)
	}
	serve(t, "driver", d.Run, sock)
	return opts.Endpoint
}
