package daemon

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"golang.org/x/sys/unix"
)

func TestDaemonS3(t *testing.T) {
	e := cachetest.NewS3Env(t)
	d, cl, _ := startDaemon(t, 0)
	ctx := context.Background()
	req := api.MountRequest{Holder: "volume:a", Dataset: "objects", Source: e.Loc.String(), ReadOnly: true, MetaCache: time.Hour, Secrets: e.Srv.Secrets()}
	resp, err := cl.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(resp.MountPath, "day-01/sym-1.csv"))
	if err != nil || !bytes.Equal(got, e.Files["day-01/sym-1.csv"]) {
		t.Fatalf("read through the daemon's mount: %v", err)
	}
	// The same credentials share the mount.
	req.Holder = "volume:b"
	if again, err := cl.Mount(ctx, req); err != nil || again.Key != resp.Key {
		t.Fatalf("second volume: %+v, %v; want key %s", again, err, resp.Key)
	}
	// Wrong credentials: refused, and never the mount of the right ones.
	bad := req
	bad.Holder, bad.Secrets = "volume:c", map[string]string{"access-key": e.Srv.AccessKey, "secret-key": "not-the-secret"}
	_, err = cl.Mount(ctx, bad)
	if !api.IsForbidden(err) {
		t.Errorf("mount with a wrong secret key: %v, want 403", err)
	}
	if err != nil && strings.Contains(err.Error(), "not-the-secret") {
		t.Errorf("the error shows the secret: %v", err)
	}
	// No credentials and not anonymous: a bad request naming what is missing.
	none := req
	none.Holder, none.Secrets = "volume:d", nil
	if _, err := cl.Mount(ctx, none); !api.IsBadRequest(err) || !strings.Contains(err.Error(), "needs credentials") {
		t.Errorf("mount without credentials: %v", err)
	}
	// An unknown secret key is named, its value is not shown.
	odd := req
	odd.Holder, odd.Secrets = "volume:e", map[string]string{"access-key": "a", "secret-key": "b", "token": "tok-value"}
	if _, err := cl.Mount(ctx, odd); !api.IsBadRequest(err) || !strings.Contains(err.Error(), `"token"`) || strings.Contains(err.Error(), "tok-value") {
		t.Errorf("mount with an unknown secret key: %v", err)
	}
	// A store that does not answer: refused at mount, not at first read.
	down := e.Loc
	down.Endpoint = "http://127.0.0.1:1"
	dreq := req
	dreq.Holder, dreq.Source = "volume:f", down.String()
	if _, err := cl.Mount(ctx, dreq); err == nil || api.IsBadRequest(err) {
		t.Errorf("mount of an unreachable store: %v, want a gateway error", err)
	}
	if n := len(d.Stats().Datasets); n != 1 {
		t.Errorf("%d datasets mounted, want 1", n)
	}
	for _, h := range []string{"volume:a", "volume:b"} {
		if err := cl.Release(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDaemonS3Ownership: an S3 dataset's files belong to the uid and gid it
// is mounted with, and a volume's fsGroup (VOLUME_MOUNT_GROUP) owns a
// read-write dataset with group write, so a non-root pod in that group
// writes it and other users do not. The dataset's mount itself is out of
// reach of the node's local users.
func TestDaemonS3Ownership(t *testing.T) {
	e := cachetest.NewS3Env(t)
	_, cl, _ := startDaemon(t, 0)
	ctx := context.Background()
	const user, group = 1000, 2000
	req := api.MountRequest{Holder: "volume:rw", Dataset: "objects", Source: e.Loc.String(), MetaCache: time.Second, Secrets: e.Srv.Secrets(), UID: 7, MountGroup: "2000"}
	resp, err := cl.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Release(ctx, "volume:rw") })
	if uid, gid, mode := cachetest.OwnerOf(t, filepath.Join(resp.MountPath, "day-01/sym-1.csv")); uid != 7 || gid != group || mode != 0o664 {
		t.Errorf("a file shows %d:%d %o, want 7:%d 664", uid, gid, mode, group)
	}
	if uid, gid, mode := cachetest.OwnerOf(t, filepath.Join(resp.MountPath, "day-01")); uid != 7 || gid != group || mode != 0o775 {
		t.Errorf("a directory shows %d:%d %o, want 7:%d 775", uid, gid, mode, group)
	}
	// Another user cannot reach the dataset's mount on the node.
	if out, err := cachetest.AsUser(t, 65534, 65534, nil, "ls "+resp.MountPath); err == nil {
		t.Errorf("uid 65534 listed the dataset's mount %s: %s", resp.MountPath, out)
	}
	// A pod reaches it through a bind mount, as the node plugin makes it.
	pod := filepath.Join(cachetest.OpenDir(t), "volume")
	if err := os.Mkdir(pod, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(resp.MountPath, pod, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	cachetest.UnmountAtCleanup(t, pod, func() error { return unix.Unmount(pod, 0) })
	if out, err := cachetest.AsUser(t, user, user, []uint32{group}, "echo from-the-group > "+pod+"/day-01/new.txt && cat "+pod+"/day-01/new.txt"); err != nil || out != "from-the-group" {
		t.Fatalf("a member of the fsGroup writing the volume: %q, %v", out, err)
	}
	if out, err := cachetest.AsUser(t, user, user, nil, "echo x > "+pod+"/day-01/denied.txt"); err == nil {
		t.Errorf("a user outside the fsGroup wrote the volume: %q", out)
	}
	// Read-only with other owners: another mount, its own owners.
	ro := api.MountRequest{Holder: "volume:ro", Dataset: "objects", Source: e.Loc.String(), ReadOnly: true, MetaCache: time.Hour, Secrets: e.Srv.Secrets(), UID: 1000, GID: 1000, FileMode: 0o440}
	rresp, err := cl.Mount(ctx, ro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Release(ctx, "volume:ro") })
	if rresp.Key == resp.Key {
		t.Fatal("other owners share a mount")
	}
	if uid, gid, mode := cachetest.OwnerOf(t, filepath.Join(rresp.MountPath, "big.bin")); uid != 1000 || gid != 1000 || mode != 0o440 {
		t.Errorf("read-only file shows %d:%d %o, want 1000:1000 440", uid, gid, mode)
	}
	// Ownership of a POSIX source is its own.
	bad := api.MountRequest{Holder: "volume:x", Dataset: "d", Source: "file://" + t.TempDir(), ReadOnly: true, UID: 5}
	if _, err := cl.Mount(ctx, bad); !api.IsBadRequest(err) {
		t.Errorf("uid on a file:// source: %v, want a bad request", err)
	}
}

// TestResumeWhileTheStoreIsDown: a daemon that starts while the S3 store
// is unreachable still takes back the dataset the keeper kept: its pods'
// reads fail with EIO while the store is down, and work again when it is
// back. (The daemon once probed the store before taking a dataset back,
// and dropped it when the probe failed: every pod of the dataset then saw
// ENOTCONN until it left the node.)
func TestResumeWhileTheStoreIsDown(t *testing.T) {
	e := cachetest.NewS3Env(t)
	k, opts := withKeeper(t)
	opts.SourceTimeout = 2 * time.Second
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := d.Mount(context.Background(), api.MountRequest{Holder: "volume:a", Dataset: "objects", Source: e.Loc.String(), ReadOnly: true,
		MetaCache: time.Hour, Secrets: e.Srv.Secrets()})
	if err != nil {
		t.Fatal(err)
	}
	const name = "day-01/sym-1.csv" // not read before the restart
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Srv.Stop(); err != nil {
		t.Fatal(err)
	}
	d2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		d2.Release("volume:a")
		d2.mu.Lock()
		ms := maps.Clone(d2.datasets)
		d2.mu.Unlock()
		for _, m := range ms {
			d2.expire(m)
		}
		if err := d2.Close(); err != nil {
			t.Error(err)
		}
	}()
	if n := len(d2.Stats().Datasets); n != 1 || k.Len() != 1 {
		t.Fatalf("the next daemon took back %d datasets and the keeper holds %d; want 1 and 1", n, k.Len())
	}
	if _, err := os.ReadFile(filepath.Join(resp.MountPath, name)); !errors.Is(err, unix.EIO) {
		t.Errorf("read while the store is down: %v, want EIO", err)
	}
	if err := e.Srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(resp.MountPath, name)); err != nil || !bytes.Equal(got, e.Files[name]) {
		t.Errorf("read once the store is back: %d bytes, %v", len(got), err)
	}
}
