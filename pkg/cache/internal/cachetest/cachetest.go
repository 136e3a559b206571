// Package cachetest holds what the cache's tests share: generated files and
// trees, FUSE and root checks, and an S3 server on loopback holding a
// generated dataset.
package cachetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/s3store"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/test/s3server"
)

// Block is the block size the cache's tests use: small, so files span
// many blocks.
const Block = 64 << 10

// RequireFUSE skips the test unless it can mount FUSE (root and
// /dev/fuse).
func RequireFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse: %v", err)
	}
}

// UnmountAtCleanup unmounts the mount at mnt with unmount when the test
// ends, and detaches it if that fails (a test never leaves a mount behind).
func UnmountAtCleanup(t testing.TB, mnt string, unmount func() error) {
	t.Helper()
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
}

// WriteRandom writes size seeded random bytes to path and returns them.
func WriteRandom(t testing.TB, path string, size int, seed uint64) []byte {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// MakeTree writes a small dataset under root (30 files in 5 directories,
// a file of several blocks and a link to it) and returns the paths of its
// files.
func MakeTree(t testing.TB, root string) []string {
	t.Helper()
	var files []string
	for i := range 30 {
		p := fmt.Sprintf("day-%02d/sym-%d.csv", i%5, i)
		WriteRandom(t, filepath.Join(root, p), 1000+i*997, uint64(i))
		files = append(files, p)
	}
	WriteRandom(t, filepath.Join(root, "big.bin"), 5*Block+17, 99)
	if err := os.Symlink("big.bin", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	return append(files, "big.bin")
}

// DropPageCache asks the kernel to drop the page cache of the file at p.
func DropPageCache(t testing.TB, p string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_ = f.Sync() // dirty pages are not dropped
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// S3Env is a versitygw on loopback with bucket "data" holding a generated
// tree (MakeTree) under the prefix "ds".
type S3Env struct {
	Srv   *s3server.Server
	MC    *minio.Client
	Loc   s3store.Location
	Files map[string][]byte // relative to the prefix
}

// NewS3Env starts the server (stopped when the test ends) and uploads the
// tree.
func NewS3Env(t testing.TB) *S3Env {
	t.Helper()
	RequireFUSE(t)
	srv, mc := s3server.StartBucketT(t, "data")
	e := &S3Env{Srv: srv, MC: mc, Files: map[string][]byte{},
		Loc: s3store.Location{Bucket: "data", Prefix: "ds", Endpoint: srv.Endpoint, Region: "us-east-1", Addressing: "path"}}
	local := t.TempDir()
	for _, name := range MakeTree(t, local) {
		b, err := os.ReadFile(filepath.Join(local, name))
		if err != nil {
			t.Fatal(err)
		}
		e.Put(t, name, b)
	}
	return e
}

// Put stores b as name under the prefix, behind Cistern's back.
func (e *S3Env) Put(t testing.TB, name string, b []byte) {
	t.Helper()
	if _, err := e.MC.PutObject(context.Background(), "data", "ds/"+name, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
	e.Files[name] = b
}

// Object reads name under the prefix behind Cistern's back.
func (e *S3Env) Object(name string) ([]byte, error) {
	obj, err := e.MC.GetObject(context.Background(), "data", "ds/"+name, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	return io.ReadAll(obj)
}

// Names are the files put, sorted.
func (e *S3Env) Names() []string {
	var out []string
	for n := range e.Files {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Client returns a store client of the dataset with the server's
// credentials.
func (e *S3Env) Client(t testing.TB, cfg s3store.Config) *s3store.Client {
	t.Helper()
	c, err := s3store.New(e.Loc, s3store.Credentials{AccessKey: e.Srv.AccessKey, SecretKey: e.Srv.SecretKey}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Keys lists the dataset's keys behind Cistern's back.
func (e *S3Env) Keys(t testing.TB) []string {
	t.Helper()
	var out []string
	for o := range e.MC.ListObjects(context.Background(), "data", minio.ListObjectsOptions{Prefix: "ds/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		out = append(out, strings.TrimPrefix(o.Key, "ds/"))
	}
	sort.Strings(out)
	return out
}

// AsUser runs a shell script as uid:gid with the supplementary groups and
// returns its combined output and error.
func AsUser(t testing.TB, uid, gid uint32, groups []uint32, script string) (string, error) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "umask 022; "+script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// OpenDir is a temporary directory that every user may traverse (a
// t.TempDir is 0700: another uid could not reach a mount inside it).
func OpenDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cistern-perm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// OwnerOf returns the owner and the permission bits of p (not following a
// link).
func OwnerOf(t testing.TB, p string) (uid, gid uint32, mode uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid, st.Mode & 0o7777
}

// Opaque hides a source's write methods: wrapped around a POSIX source, it
// is a source whose files the kernel cannot read itself (as an object
// store's), so the daemon serves every read of it.
type Opaque struct{ source.Source }
