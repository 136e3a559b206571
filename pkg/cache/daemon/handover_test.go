package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/keeper"
)

// withKeeper starts a keeper in a new state directory (closed when the
// test ends) and returns it with the options of a daemon that hands its
// connections to it.
func withKeeper(t *testing.T) (*keeper.Keeper, Options) {
	t.Helper()
	cachetest.RequireFUSE(t)
	state := t.TempDir()
	k, err := keeper.Listen(filepath.Join(state, "keeper.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k, Options{Socket: filepath.Join(state, "cache.sock"), StateDir: state, Tiers: "disk:" + filepath.Join(state, "disk") + ":256Mi",
		BlockSize: cachetest.Block, Grace: time.Hour, Keeper: filepath.Join(state, "keeper.sock")}
}

// TestCloseWithAKeeper: a daemon that stops with a keeper leaves a dataset
// a volume holds mounted for the next daemon, which takes it back (same
// mount, holder and files) and unmounts it when released; a dataset no
// volume holds any more is unmounted at once, as without a keeper (helm
// uninstall leaves no mount behind).
func TestCloseWithAKeeper(t *testing.T) {
	cachetest.RequireFUSE(t)
	k, opts := withKeeper(t)
	src := map[string]string{}
	for _, name := range []string{"held", "released"} {
		dir := filepath.Join(t.TempDir(), name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		src[name] = dir
	}
	mounted := func() string { b, _ := os.ReadFile("/proc/mounts"); return string(b) }
	t.Cleanup(func() {
		for _, line := range strings.Split(mounted(), "\n") {
			if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], opts.StateDir) {
				t.Errorf("mount left at %s", f[1])
				_ = unix.Unmount(f[1], unix.MNT_DETACH)
			}
		}
	})

	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	paths := map[string]string{}
	for name, dir := range src {
		resp, err := d.Mount(ctx, api.MountRequest{Holder: "volume:" + name, Dataset: name, Source: "file://" + dir, ReadOnly: true, MetaCache: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		paths[name] = resp.MountPath
	}
	d.Release("volume:released")
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if k.Len() != 1 || !strings.Contains(mounted(), paths["held"]) || strings.Contains(mounted(), paths["released"]) {
		t.Fatalf("after Close: the keeper holds %d connections; held mounted %t, released mounted %t; want 1, true, false",
			k.Len(), strings.Contains(mounted(), paths["held"]), strings.Contains(mounted(), paths["released"]))
	}

	d2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(paths["held"], "f")); err != nil || string(b) != "held" {
		t.Errorf("the next daemon serves the kept mount: %q, %v", b, err)
	}
	d2.Release("volume:held") // the holder came back with the connection
	d2.mu.Lock()
	m := d2.datasets[filepath.Base(filepath.Dir(paths["held"]))]
	d2.mu.Unlock()
	if m == nil {
		t.Fatal("the next daemon did not take the dataset back")
	}
	d2.expire(m)
	if strings.Contains(mounted(), paths["held"]) || k.Len() != 0 {
		t.Errorf("after the release: mounted %t, the keeper holds %d", strings.Contains(mounted(), paths["held"]), k.Len())
	}
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestHandOverAfterReleaseKeepsNothing: a hand-over that runs after its
// dataset was released and dropped from the keeper (the daemon noticed a
// keeper restart at that moment) puts nothing back: the keeper once kept a
// dead connection of an unmounted dataset (TestCloseWithAKeeper failed now
// and then when the daemon's first keeper check met its release).
func TestHandOverAfterReleaseKeepsNothing(t *testing.T) {
	cachetest.RequireFUSE(t)
	k, opts := withKeeper(t)
	dir := t.TempDir()
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	resp, err := d.Mount(context.Background(), api.MountRequest{Holder: "volume:v", Dataset: "ds", Source: "file://" + dir, ReadOnly: true, MetaCache: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	m := d.datasets[filepath.Base(filepath.Dir(resp.MountPath))]
	d.mu.Unlock()
	if m == nil || k.Len() != 1 {
		t.Fatalf("mounted: %v, keeper holds %d, want the dataset and 1", m != nil, k.Len())
	}
	d.Release("volume:v")
	// expire drops the dataset from the keeper, then unmounts it; the
	// keeper check's hand-over, which read the dataset's connection
	// before the drop, puts it after.
	d.dropFromKeeper(m)
	d.handOver(m, true)
	n := k.Len()
	d.expire(m)
	if n != 0 {
		t.Fatalf("the keeper holds %d connections of a dataset being unmounted", n)
	}
}
