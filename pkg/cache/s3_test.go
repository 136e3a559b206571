package cache

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/cistern-csi/cistern/pkg/cache/s3"
	"github.com/cistern-csi/cistern/test/s3server"
)

// s3Env is a versitygw with bucket "data" holding a generated tree under
// the prefix "ds".
type s3Env struct {
	srv   *s3server.Server
	mc    *minio.Client
	loc   s3.Location
	files map[string][]byte // relative to the prefix
}

func newS3Env(t *testing.T) *s3Env {
	t.Helper()
	requireFUSE(t)
	srv, mc := s3server.StartBucketT(t, "data")
	e := &s3Env{srv: srv, mc: mc, files: map[string][]byte{},
		loc: s3.Location{Bucket: "data", Prefix: "ds", Endpoint: srv.Endpoint, Region: "us-east-1", Addressing: "path"}}
	local := t.TempDir()
	for _, name := range makeTree(t, local) {
		b, err := os.ReadFile(filepath.Join(local, name))
		if err != nil {
			t.Fatal(err)
		}
		e.put(t, name, b)
	}
	return e
}

func (e *s3Env) put(t *testing.T, name string, b []byte) {
	t.Helper()
	if _, err := e.mc.PutObject(context.Background(), "data", "ds/"+name, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
	e.files[name] = b
}

func (e *s3Env) names() []string {
	var out []string
	for n := range e.files {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (e *s3Env) source(t *testing.T, cfg s3.Config, ttl time.Duration) *S3 {
	t.Helper()
	c, err := s3.New(e.loc, s3.Credentials{AccessKey: e.srv.AccessKey, SecretKey: e.srv.SecretKey}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return NewS3(c, ttl)
}

// keys lists the bucket behind Cistern's back.
func (e *s3Env) keys(t *testing.T) []string {
	t.Helper()
	var out []string
	for o := range e.mc.ListObjects(context.Background(), "data", minio.ListObjectsOptions{Prefix: "ds/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		out = append(out, strings.TrimPrefix(o.Key, "ds/"))
	}
	sort.Strings(out)
	return out
}

func TestS3ReadOnlyIsAFileSystem(t *testing.T) {
	e := newS3Env(t)
	src := e.source(t, s3.Config{}, time.Hour)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	for _, mode := range []FSOptions{
		{ReadOnly: true, MetaCache: time.Hour, Passthrough: true},
		{ReadOnly: true, MetaCache: time.Hour, SmallFiles: true},
	} {
		_, mnt := mountTest(t, src, c, mode)
		if err := fstest.TestFS(os.DirFS(mnt), e.names()...); err != nil {
			t.Fatalf("smallFiles=%t: %v", mode.SmallFiles, err)
		}
		for name, want := range e.files {
			got, err := os.ReadFile(filepath.Join(mnt, name))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s: %d bytes, %v; want %d bytes", name, len(got), err, len(want))
			}
		}
	}
	// Every byte came from the store once: the second mode read the cache.
	var total int64
	for _, b := range e.files {
		total += int64(len(b))
	}
	if got := c.Stats().SourceBytes; got != total {
		t.Errorf("source bytes = %d, want %d (each byte fetched once)", got, total)
	}
	// A write is refused by the kernel.
	_, mnt := mountTest(t, src, c, FSOptions{ReadOnly: true, MetaCache: time.Hour})
	if err := os.WriteFile(filepath.Join(mnt, "new"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to a read-only S3 dataset: %v, want EROFS", err)
	}
}

func TestS3ChangedObjectInvalidates(t *testing.T) {
	e := newS3Env(t)
	src := e.source(t, s3.Config{}, 0)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	_, mnt := mountTest(t, src, c, FSOptions{ReadOnly: true, MetaCache: 0})
	p := filepath.Join(mnt, "big.bin")
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, e.files["big.bin"]) {
		t.Fatalf("first read: %v", err)
	}
	v2 := bytes.Repeat([]byte("v2"), len(e.files["big.bin"])/2)
	e.put(t, "big.bin", v2) // same size, new ETag
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("after the object changed: %d bytes, %v; equal to v2: %t", len(got), err, bytes.Equal(got, v2))
	}
}

// TestS3StalledAndKilledServer: reads through the mount fail with EIO
// within the request timeout when the store stalls or dies, and work again
// when it is back.
func TestS3StalledAndKilledServer(t *testing.T) {
	e := newS3Env(t)
	src := e.source(t, s3.Config{Timeout: 2 * time.Second, MaxRetries: 2}, time.Hour)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	_, mnt := mountTest(t, src, c, FSOptions{ReadOnly: true, MetaCache: time.Hour})
	names := e.names()
	for _, n := range names { // look every file up while the store answers
		if _, err := os.Stat(filepath.Join(mnt, n)); err != nil {
			t.Fatal(err)
		}
	}
	read := func(name string) (time.Duration, error) {
		start := time.Now()
		_, err := os.ReadFile(filepath.Join(mnt, name))
		return time.Since(start), err
	}
	if err := e.srv.Freeze(); err != nil {
		t.Fatal(err)
	}
	took, err := read("big.bin")
	if err := e.srv.Thaw(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, syscall.EIO) || took > 15*time.Second {
		t.Errorf("read from a stalled store: %v after %s, want EIO within the 2s timeout (plus retries)", err, took)
	}
	if err := e.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	// (big.bin: its blocks are larger than what a lookup brings along.)
	took, err = read("big.bin")
	if !errors.Is(err, syscall.EIO) || took > 15*time.Second {
		t.Errorf("read from a dead store: %v after %s, want EIO", err, took)
	}
	if err := e.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	for _, n := range names[:2] {
		got, err := os.ReadFile(filepath.Join(mnt, n))
		if err != nil || !bytes.Equal(got, e.files[n]) {
			t.Errorf("read of %s after the store came back: %v", n, err)
		}
	}
}

func TestS3ReadWrite(t *testing.T) {
	e := newS3Env(t)
	c := newTestCache(t, t.TempDir(), 1<<30)
	defer c.Close()
	spool := t.TempDir()
	rw := FSOptions{MetaCache: 0, SpoolDir: spool}
	a := e.source(t, s3.Config{PartSize: 5 << 20}, 0)
	_, ma := mountTest(t, a, c, FSOptions{Dataset: "a", MetaCache: rw.MetaCache, SpoolDir: spool})
	_, mb := mountTest(t, e.source(t, s3.Config{}, 0), c, FSOptions{Dataset: "b", MetaCache: rw.MetaCache, SpoolDir: spool})

	// New files, small and multipart, appear whole in the other mount.
	small := []byte("features for 2026-11-28\n")
	big := bytes.Repeat([]byte("0123456789"), 1_300_000) // 13 MB: three parts
	if err := os.MkdirAll(filepath.Join(ma, "out/run-1"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"out/run-1/small.csv": small, "out/run-1/big.bin": big} {
		if err := os.WriteFile(filepath.Join(ma, name), b, 0o644); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
		got, err := os.ReadFile(filepath.Join(mb, name))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%s through the second mount: %d bytes, %v", name, len(got), err)
		}
	}
	// An empty directory lists (its marker), and goes away with rmdir.
	if err := os.Mkdir(filepath.Join(ma, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(mb, "empty")); err != nil || !st.IsDir() {
		t.Fatalf("empty directory in the second mount: %v", err)
	}
	if err := os.Remove(filepath.Join(ma, "empty")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(ma, "out")); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Errorf("rmdir of a non-empty directory: %v, want ENOTEMPTY", err)
	}

	// Overwriting a whole file replaces the object.
	if err := os.WriteFile(filepath.Join(ma, "out/run-1/small.csv"), []byte("v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mb, "out/run-1/small.csv")); err != nil || string(got) != "v2" {
		t.Errorf("after overwrite: %q, %v", got, err)
	}

	// Random writes and in-place changes are refused with EOPNOTSUPP.
	f, err := os.Create(filepath.Join(ma, "out/random"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 100); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("a write at a gap: %v, want EOPNOTSUPP", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close after a refused write: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(mb, "out/random")); string(got) != "abc" {
		t.Errorf("the sequential part was not stored: %q", got)
	}
	g, err := os.OpenFile(filepath.Join(ma, "out/random"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteAt([]byte("Z"), 1); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("a write into an existing object: %v, want EOPNOTSUPP", err)
	}
	g.Close()

	// A file renames; a directory does not (EXDEV: mv copies instead).
	if err := os.Rename(filepath.Join(ma, "out/random"), filepath.Join(ma, "out/renamed")); err != nil {
		t.Fatalf("rename a file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mb, "out/random")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old name after rename: %v", err)
	}
	if err := os.Rename(filepath.Join(ma, "out/run-1"), filepath.Join(ma, "out/run-2")); !errors.Is(err, syscall.EXDEV) {
		t.Errorf("rename a directory: %v, want EXDEV", err)
	}
	if err := os.Remove(filepath.Join(ma, "out/renamed")); err != nil {
		t.Fatal(err)
	}

	// An upload that fails (the store died while the file was written)
	// makes close fail, and nothing is stored.
	h, err := os.Create(filepath.Join(ma, "out/lost.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Write(bytes.Repeat([]byte{1}, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); !errors.Is(err, syscall.EIO) {
		t.Errorf("close with the store down: %v, want EIO", err)
	}
	if err := e.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// A file removed while it is being written is never stored (a
	// temporary file pattern: create, unlink, write, close).
	tmp, err := os.Create(filepath.Join(ma, "out/scratch.tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(ma, "out/scratch.tmp")); err != nil {
		t.Fatalf("unlink a file being written: %v", err)
	}
	if _, err := tmp.Write([]byte("scratch")); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mb, "out/scratch.tmp")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an unlinked file came back at close: %v", err)
	}

	// A failed fsync keeps the data: once the store is back, close
	// uploads all of it.
	r, err := os.Create(filepath.Join(ma, "out/retried.bin"))
	if err != nil {
		t.Fatal(err)
	}
	retried := bytes.Repeat([]byte("retry!"), 300_000) // 1.8 MB
	if _, err := r.Write(retried); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(); !errors.Is(err, syscall.EIO) {
		t.Errorf("fsync with the store down: %v, want EIO", err)
	}
	if err := e.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("close once the store is back: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(mb, "out/retried.bin")); err != nil || !bytes.Equal(got, retried) {
		t.Errorf("the retried upload: %d bytes, %v; want %d", len(got), err, len(retried))
	}
	want := []string{"big.bin", "day-00/sym-0.csv"} // spot checks of the seed data
	got := e.keys(t)
	for _, k := range got {
		if strings.Contains(k, "lost") {
			t.Errorf("a failed upload left %s in the store", k)
		}
	}
	for _, w := range want {
		if !containsString(got, w) {
			t.Errorf("key %s missing after the test; have %v", w, got)
		}
	}
	for _, k := range []string{"out/run-1/small.csv", "out/run-1/big.bin"} {
		if !containsString(got, k) {
			t.Errorf("key %s missing; have %v", k, got)
		}
	}
	if ents, err := os.ReadDir(spool); err != nil || len(ents) != 0 {
		t.Errorf("spool directory holds %d entries after every file closed (%v)", len(ents), err)
	}
}

func containsString(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// TestDaemonS3: the daemon mounts an S3 dataset with the credentials of the
// request, one mount per credential, and refuses bad credentials and an
// unreachable store at mount time with a status that says which.
func TestDaemonS3(t *testing.T) {
	e := newS3Env(t)
	d, cl, _ := startDaemon(t, 0)
	ctx := context.Background()
	req := MountRequest{Holder: "volume:a", Dataset: "objects", Source: e.loc.String(), ReadOnly: true, MetaCache: time.Hour, Secrets: e.srv.Secrets()}
	resp, err := cl.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(resp.MountPath, "day-01/sym-1.csv"))
	if err != nil || !bytes.Equal(got, e.files["day-01/sym-1.csv"]) {
		t.Fatalf("read through the daemon's mount: %v", err)
	}
	// The same credentials share the mount.
	req.Holder = "volume:b"
	if again, err := cl.Mount(ctx, req); err != nil || again.Key != resp.Key {
		t.Fatalf("second volume: %+v, %v; want key %s", again, err, resp.Key)
	}
	// Wrong credentials: refused, and never the mount of the right ones.
	bad := req
	bad.Holder, bad.Secrets = "volume:c", map[string]string{"access-key": e.srv.AccessKey, "secret-key": "not-the-secret"}
	_, err = cl.Mount(ctx, bad)
	if !IsForbidden(err) {
		t.Errorf("mount with a wrong secret key: %v, want 403", err)
	}
	if err != nil && strings.Contains(err.Error(), "not-the-secret") {
		t.Errorf("the error shows the secret: %v", err)
	}
	// No credentials and not anonymous: a bad request naming what is missing.
	none := req
	none.Holder, none.Secrets = "volume:d", nil
	if _, err := cl.Mount(ctx, none); !IsBadRequest(err) || !strings.Contains(err.Error(), "needs credentials") {
		t.Errorf("mount without credentials: %v", err)
	}
	// An unknown secret key is named, its value is not shown.
	odd := req
	odd.Holder, odd.Secrets = "volume:e", map[string]string{"access-key": "a", "secret-key": "b", "token": "tok-value"}
	if _, err := cl.Mount(ctx, odd); !IsBadRequest(err) || !strings.Contains(err.Error(), `"token"`) || strings.Contains(err.Error(), "tok-value") {
		t.Errorf("mount with an unknown secret key: %v", err)
	}
	// A store that does not answer: refused at mount, not at first read.
	down := e.loc
	down.Endpoint = "http://127.0.0.1:1"
	dreq := req
	dreq.Holder, dreq.Source = "volume:f", down.String()
	if _, err := cl.Mount(ctx, dreq); err == nil || IsBadRequest(err) {
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

// TestS3ListingAnswersLookups: a lookup lists its directory once and its
// siblings cost no request; a name created since is still found (a
// listing never answers "does not exist").
func TestS3ListingAnswersLookups(t *testing.T) {
	e := newS3Env(t)
	src := e.source(t, s3.Config{}, time.Hour)
	ctx := context.Background()
	a, err := src.Stat(ctx, "day-00/sym-0.csv")
	if err != nil || a.Size != int64(len(e.files["day-00/sym-0.csv"])) || a.ETag == "" {
		t.Fatalf("Stat = %+v, %v", a, err)
	}
	// The lookup started a listing of its directory in the background.
	for deadline := time.Now().Add(10 * time.Second); src.cached("day-00") == nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no listing of day-00 after a lookup in it")
		}
	}
	e.srv.Freeze() // siblings must come from the listing now
	for _, n := range []string{"day-00/sym-5.csv", "day-00/sym-10.csv"} {
		if a, err := src.Stat(ctx, n); err != nil || a.Size != int64(len(e.files[n])) {
			e.srv.Thaw()
			t.Fatalf("Stat(%s) from the listing = %+v, %v", n, a, err)
		}
	}
	e.srv.Thaw()
	e.put(t, "day-00/new.csv", []byte("arrived later"))
	if a, err := src.Stat(ctx, "day-00/new.csv"); err != nil || a.Size != 13 {
		t.Errorf("a name created after the listing: %+v, %v", a, err)
	}
	if _, err := src.Stat(ctx, "day-00/never.csv"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("a missing name: %v, want ENOENT", err)
	}
}

// TestS3LookupBringsSmallFiles: the lookup of a small file is a GET of its
// first bytes, so its first read needs no request (and never serves bytes
// of another version).
func TestS3LookupBringsSmallFiles(t *testing.T) {
	e := newS3Env(t)
	src := e.source(t, s3.Config{Timeout: 2 * time.Second, MaxRetries: 1}, time.Hour)
	ctx := context.Background()
	name := "day-02/sym-7.csv"
	a, err := src.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	want := e.files[name]
	got := make([]byte, len(want))
	// Another version's fingerprint is never served from the lookup's bytes.
	if _, ok := src.takeHead(name, "etag:other", got, 0); ok {
		t.Error("the lookup's bytes were served for another version")
	}
	e.srv.Freeze()
	n, err := src.ReadAtVersion(ctx, name, a.Fingerprint(), got, 0, nil)
	e.srv.Thaw()
	if err != nil || n != len(want) || !bytes.Equal(got, want) {
		t.Fatalf("first read after the lookup, store frozen: %d, %v", n, err)
	}
}
