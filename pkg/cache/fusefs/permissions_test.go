package fusefs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// TestPermissionsEnforced: on a read-write POSIX volume the kernel checks
// every access against the source's real owners and modes, and what a user
// creates belongs to that user (and to the directory's group when it is
// setgid). Without default_permissions and real owners, uid 65534 read a
// root-owned 0600 file and appended to a 0444 one.
func TestPermissionsEnforced(t *testing.T) {
	cachetest.RequireFUSE(t)
	const nobody, team = 65534, 1234
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(root, "secret"), []byte("root only"), 0o600))
	must(os.WriteFile(filepath.Join(root, "readonly.txt"), []byte("keep"), 0o444))
	must(os.Mkdir(filepath.Join(root, "mine"), 0o755))
	must(os.Chown(filepath.Join(root, "mine"), nobody, nobody))
	must(os.Mkdir(filepath.Join(root, "team"), 0o775))
	must(os.Chown(filepath.Join(root, "team"), 0, team))
	must(os.Chmod(filepath.Join(root, "team"), 0o775|os.ModeSetgid))
	must(os.Chmod(root, 0o755))

	p, err := posix.New(root)
	must(err)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	mnt := filepath.Join(cachetest.OpenDir(t), "mnt")
	must(os.Mkdir(mnt, 0o755))
	f, err := Mount(mnt, c.Dataset("ds", p), Options{Name: "ds", MetaCache: time.Second})
	must(err)
	cachetest.UnmountAtCleanup(t, mnt, f.Unmount)

	// The mount shows the real owners and modes.
	if uid, gid, mode := cachetest.OwnerOf(t, filepath.Join(mnt, "secret")); uid != 0 || gid != 0 || mode != 0o600 {
		t.Errorf("secret shows %d:%d %o, want 0:0 600", uid, gid, mode)
	}
	if uid, gid, mode := cachetest.OwnerOf(t, filepath.Join(mnt, "team")); uid != 0 || gid != team || mode != 0o2775 {
		t.Errorf("team/ shows %d:%d %o, want 0:%d 2775", uid, gid, mode, team)
	}

	// What another user may not do, it cannot.
	for _, script := range []string{
		"cat " + mnt + "/secret",
		"echo more >> " + mnt + "/readonly.txt",
		"echo x > " + mnt + "/new-at-root",
		"mkdir " + mnt + "/dir-at-root",
		"rm " + mnt + "/readonly.txt",
		"echo x > " + mnt + "/team/no-group",
	} {
		if out, err := cachetest.AsUser(t, nobody, nobody, nil, script); err == nil {
			t.Errorf("uid %d ran %q: it succeeded (%s), want permission denied", nobody, script, out)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "readonly.txt")); string(b) != "keep" {
		t.Errorf("readonly.txt is %q in the source, want it untouched", b)
	}
	for _, n := range []string{"new-at-root", "dir-at-root"} {
		if _, err := os.Lstat(filepath.Join(root, n)); err == nil {
			t.Errorf("%s was created in the source by a user without write permission", n)
		}
	}

	// What it may do, it can, and what it creates is its own.
	if out, err := cachetest.AsUser(t, nobody, nobody, nil, "echo hi > "+mnt+"/mine/f && mkdir "+mnt+"/mine/d && cat "+mnt+"/mine/f"); err != nil || out != "hi" {
		t.Fatalf("uid %d in its own directory: %q, %v", nobody, out, err)
	}
	if uid, gid, mode := cachetest.OwnerOf(t, filepath.Join(root, "mine/f")); uid != nobody || gid != nobody || mode != 0o644 {
		t.Errorf("mine/f in the source is %d:%d %o, want %d:%d 644", uid, gid, mode, nobody, nobody)
	}
	if uid, gid, mode := cachetest.OwnerOf(t, filepath.Join(root, "mine/d")); uid != nobody || gid != nobody || mode != 0o755 {
		t.Errorf("mine/d in the source is %d:%d %o, want %d:%d 755", uid, gid, mode, nobody, nobody)
	}
	// A member of a setgid directory's group: new files take the group.
	if out, err := cachetest.AsUser(t, nobody, nobody, []uint32{team}, "echo hi > "+mnt+"/team/g && mkdir "+mnt+"/team/sub"); err != nil {
		t.Fatalf("a member of group %d writing its group's directory: %q, %v", team, out, err)
	}
	if uid, gid, _ := cachetest.OwnerOf(t, filepath.Join(root, "team/g")); uid != nobody || gid != team {
		t.Errorf("team/g in the source is %d:%d, want %d:%d (the setgid directory's group)", uid, gid, nobody, team)
	}
	if _, gid, mode := cachetest.OwnerOf(t, filepath.Join(root, "team/sub")); gid != team || mode&0o2000 == 0 {
		t.Errorf("team/sub in the source has group %d mode %o, want group %d and setgid", gid, mode, team)
	}
	// chmod by the owner sticks; by another user it is refused.
	if out, err := cachetest.AsUser(t, nobody, nobody, nil, "chmod 600 "+mnt+"/mine/f"); err != nil {
		t.Fatalf("chmod by the owner: %q, %v", out, err)
	}
	if _, _, mode := cachetest.OwnerOf(t, filepath.Join(root, "mine/f")); mode != 0o600 {
		t.Errorf("after chmod 600 the source has %o", mode)
	}
	if out, err := cachetest.AsUser(t, 1000, 1000, nil, "chmod 666 "+mnt+"/mine/f"); err == nil {
		t.Errorf("chmod by another user succeeded: %q", out)
	}
}

// TestCreateOverAFileMadeBehindTheKernel: when the kernel still believes a
// name free (a negative entry) while the file exists in the source (made
// on another node), open(O_CREAT) reaches the daemon as a create; the
// caller must get the rights of an open of that file, not a creator's. The
// daemon opened it for writing as root, and another user truncated and
// wrote a file it could only read.
func TestCreateOverAFileMadeBehindTheKernel(t *testing.T) {
	const nobody = 65534
	root, mnt := mountRW(t)
	if err := os.Chmod(root, 0o777); err != nil {
		t.Fatal(err)
	}
	// The kernel learns the name is free...
	if _, err := os.Stat(filepath.Join(mnt, "report")); !os.IsNotExist(err) {
		t.Fatalf("stat of a free name: %v", err)
	}
	// ...then another node makes it, read-only to others.
	if err := os.WriteFile(filepath.Join(root, "report"), []byte("root's"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := cachetest.AsUser(t, nobody, nobody, nil, "echo overwritten > "+mnt+"/report")
	if err == nil {
		t.Errorf("uid %d opened a file it may only read for writing: %q", nobody, out)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "report")); string(b) != "root's" {
		t.Errorf("the file is %q in the source, want it untouched", b)
	}
}
