package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
)

// abortFUSE aborts the FUSE connection behind mnt through fusectl, as a
// crashed or wedged daemon leaves it: every request then fails with
// ENOTCONN. fusectl is mounted for the test if it is not.
func abortFUSE(t *testing.T, mnt string) {
	t.Helper()
	const ctl = "/sys/fs/fuse/connections"
	if _, err := os.Stat(filepath.Join(ctl, "..", "connections")); err != nil {
		t.Fatalf("no fusectl directory: %v", err)
	}
	if ents, _ := os.ReadDir(ctl); len(ents) == 0 {
		if err := unix.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil {
			t.Fatalf("mount fusectl: %v", err)
		}
		t.Cleanup(func() { _ = unix.Unmount(ctl, 0) })
	}
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		t.Fatal(err)
	}
	abort := filepath.Join(ctl, fmt.Sprint(unix.Minor(st.Dev)), "abort")
	if err := os.WriteFile(abort, []byte("1"), 0); err != nil {
		t.Fatalf("abort the FUSE connection of %s: %v", mnt, err)
	}
}

// TestDaemonHealth: /healthz answers 200 while every dataset's mount
// serves, and 503 naming the dataset once its FUSE connection is gone, on
// the control socket (the node plugin's check) and on the metrics port
// (the container's liveness probe).
func TestDaemonHealth(t *testing.T) {
	_, cl, addr := startDaemon(t, time.Hour)
	ctx := context.Background()
	get := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if err := cl.Health(ctx); err != nil {
		t.Fatalf("healthy daemon with no dataset: %v", err)
	}
	root := t.TempDir()
	cachetest.WriteRandom(t, filepath.Join(root, "f"), cachetest.Block, 1)
	m, err := cl.Mount(ctx, api.MountRequest{Holder: "h", Dataset: "ds", Source: "file://" + root, ReadOnly: true, MetaCache: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Health(ctx); err != nil {
		t.Fatalf("healthy daemon with a dataset: %v", err)
	}
	if code, body := get(); code != http.StatusOK {
		t.Fatalf("GET /healthz = %d %s, want 200", code, body)
	}

	abortFUSE(t, m.MountPath)
	err = cl.Health(ctx)
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || !strings.Contains(ae.Message, m.Key) || !strings.Contains(ae.Message, "not connected") {
		t.Fatalf("Health with an aborted dataset mount = %v, want HTTP 503 naming dataset %s and ENOTCONN", err, m.Key)
	}
	if code, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(body, m.Key) {
		t.Fatalf("GET /healthz with an aborted dataset mount = %d %s, want 503 naming %s", code, body, m.Key)
	}
}

// TestSweepDeadMounts: a dataset mount whose daemon is gone (its FUSE
// connection aborted) is detached when a daemon starts; a live one is
// left alone. Seen in a cluster: a node pod replaced while binds held its
// mounts left a dead mount under /var/lib/cistern that outlived helm
// uninstall.
func TestSweepDeadMounts(t *testing.T) {
	d, cl, _ := startDaemon(t, time.Hour)
	ctx := context.Background()
	var mnts []string
	for _, name := range []string{"dead", "live"} {
		root := t.TempDir()
		cachetest.WriteRandom(t, filepath.Join(root, "f"), cachetest.Block, 1)
		m, err := cl.Mount(ctx, api.MountRequest{Holder: name, Dataset: name, Source: "file://" + root, ReadOnly: true, MetaCache: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		mnts = append(mnts, m.MountPath)
	}
	abortFUSE(t, mnts[0])
	// A daemon starting on the same state directory (as after a crash;
	// its own disk tier, since the first one still runs here) sweeps.
	d2, err := New(Options{Socket: filepath.Join(t.TempDir(), "cache.sock"), StateDir: d.opts.StateDir,
		Tiers: "disk:" + t.TempDir() + ":64Mi", BlockSize: cachetest.Block})
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile("/proc/mounts")
	if strings.Contains(string(b), mnts[0]+" ") {
		t.Errorf("the dead mount %s is still mounted", mnts[0])
	}
	if _, err := os.ReadFile(filepath.Join(mnts[1], "f")); err != nil {
		t.Errorf("the live mount stopped serving: %v", err)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{`/a/b`: "/a/b", `/a\040b`: "/a b", `/a\134b`: `/a\b`, `/a\`: `/a\`} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}
