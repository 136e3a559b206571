package posix

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/fusefs"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// TestTenantLinksStayInTheVolume: links a tenant makes in its volume
// (absolute, with "..", into another namespace's tree, a hard link to
// another namespace's file) never lead out of the volume: the daemon never
// follows a link (the kernel resolves it in the pod's view, where nothing
// of the dataset but the volume exists), and a hard link needs a name the
// pod cannot reach.
func TestTenantLinksStayInTheVolume(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real FUSE and bind mounts")
	}
	top, err := os.MkdirTemp("", "cistern-links-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	src, mnt, pod := filepath.Join(top, "src"), filepath.Join(top, "mnt"), filepath.Join(top, "pod")
	for _, d := range []string{filepath.Join(src, "team-a"), filepath.Join(src, "team-b"), mnt, filepath.Join(pod, "vol")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "team-b", "secret"), []byte("team-b only"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := posix.New(src)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cache.Options{Tiers: []cache.TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f, err := fusefs.Mount(mnt, c.Dataset("links", p), fusefs.Options{Name: "links", MetaCache: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	// The pod's volume: team-a bound out of the dataset's mount, as the
	// node plugin binds it.
	vol := filepath.Join(pod, "vol")
	if err := unix.Mount(filepath.Join(mnt, "team-a"), vol, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(vol, unix.MNT_DETACH) })

	for target, name := range map[string]string{
		"../team-b/secret":                  "dotdot",
		"../../team-b/secret":               "dotdot2",
		filepath.Join(src, "team-b/secret"): "absolute-source",
		filepath.Join(mnt, "team-b/secret"): "absolute-mount",
	} {
		if err := os.Symlink(target, filepath.Join(vol, name)); err != nil {
			t.Fatalf("symlink %s: %v", name, err)
		}
		// The link is the tenant's, stored as such in the source.
		if got, err := os.Readlink(filepath.Join(src, "team-a", name)); err != nil || got != target {
			t.Errorf("%s in the source: %q, %v", name, got, err)
		}
	}
	// Relative links resolve in the pod's view: nothing of the dataset
	// above its volume is there.
	for _, name := range []string{"dotdot", "dotdot2"} {
		if b, err := os.ReadFile(filepath.Join(vol, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s read %q (%v): a relative link left the volume", name, b, err)
		}
	}
	// The daemon never follows a link: a path through one fails there,
	// whatever the link points at.
	if err := os.Symlink("../team-b", filepath.Join(vol, "dir-link")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Stat(t.Context(), "team-a/dir-link/secret"); err == nil {
		t.Error("the source resolved a path through a tenant's link")
	}
	// A hard link needs a name of the other namespace's file, which the
	// pod cannot reach.
	if err := os.Link(filepath.Join(vol, "../team-b/secret"), filepath.Join(vol, "hard")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("hard link to another namespace's file through the pod's view: %v", err)
	}
}
