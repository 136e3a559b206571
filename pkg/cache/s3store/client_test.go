package s3store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/cistern-csi/cistern/pkg/cache/s3store"
	"github.com/cistern-csi/cistern/test/s3server"
)

// env is a versitygw with one bucket and a client for a prefix of it.
type env struct {
	srv    *s3server.Server
	mc     *minio.Client // behind Cistern's back
	bucket string
	loc    s3store.Location
}

func newEnv(t *testing.T, prefix string) *env {
	t.Helper()
	srv, mc := s3server.StartBucketT(t, "data")
	return &env{srv: srv, mc: mc, bucket: "data", loc: s3store.Location{Bucket: "data", Prefix: prefix, Endpoint: srv.Endpoint, Addressing: "path"}}
}

func (e *env) client(t *testing.T, cfg s3store.Config) *s3store.Client {
	t.Helper()
	c, err := s3store.New(e.loc, s3store.Credentials{AccessKey: e.srv.AccessKey, SecretKey: e.srv.SecretKey}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) put(t testing.TB, key string, b []byte) {
	t.Helper()
	if _, err := e.mc.PutObject(context.Background(), e.bucket, key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func (e *env) keys(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	for o := range e.mc.ListObjects(context.Background(), e.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		out = append(out, o.Key)
	}
	sort.Strings(out)
	return out
}

func TestListPaginatesAndNests(t *testing.T) {
	e := newEnv(t, "ds")
	const n = 2500 // more than two pages of 1000
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			e.put(t, fmt.Sprintf("ds/many/f%05d", i), []byte{byte(i)})
		}()
	}
	wg.Wait()
	e.put(t, "ds/a/b/c/deep.txt", []byte("deep"))
	e.put(t, "ds/a/top.txt", []byte("top"))
	e.put(t, "ds/a/empty/", nil) // a directory marker
	e.put(t, "ds-sibling/x", []byte("not in the dataset"))
	c := e.client(t, s3store.Config{})
	ctx := context.Background()

	many, err := c.List(ctx, "many")
	if err != nil {
		t.Fatal(err)
	}
	if len(many) != n {
		t.Fatalf("listed %d entries of many/, want %d", len(many), n)
	}
	seen := map[string]bool{}
	for _, o := range many {
		if seen[o.Name] || o.Dir || o.Size != 1 {
			t.Fatalf("bad entry %+v (seen before: %t)", o, seen[o.Name])
		}
		seen[o.Name] = true
	}

	top, err := c.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(top); got != "a/ many/" {
		t.Errorf("root lists %q, want \"a/ many/\" (the sibling prefix ds-sibling is not in the dataset)", got)
	}
	a, err := c.List(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(a); got != "b/ empty/ top.txt" {
		t.Errorf("a/ lists %q", got)
	}
	for _, d := range []string{"a", "a/b", "a/b/c", "a/empty", "many"} {
		if ok, err := c.DirExists(ctx, d); err != nil || !ok {
			t.Errorf("DirExists(%q) = %t, %v", d, ok, err)
		}
	}
	if ok, err := c.DirExists(ctx, "a/nope"); err != nil || ok {
		t.Errorf("DirExists(a/nope) = %t, %v", ok, err)
	}
	o, err := c.Stat(ctx, "a/b/c/deep.txt")
	if err != nil || o.Size != 4 || o.ETag == "" {
		t.Errorf("Stat = %+v, %v", o, err)
	}
	_, err = c.Stat(ctx, "a/missing")
	if !errors.Is(err, syscall.ENOENT) {
		t.Errorf("Stat of a missing key = %v, want ENOENT", err)
	}
}

func names(os []s3store.Object) string {
	var s []string
	for _, o := range os {
		n := o.Name
		if o.Dir {
			n += "/"
		}
		s = append(s, n)
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

func TestRangedReadsAtBlockBoundaries(t *testing.T) {
	e := newEnv(t, "")
	const block = 1 << 20
	data := make([]byte, 3*block+123)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	e.put(t, "big", data)
	c := e.client(t, s3store.Config{})
	ctx := context.Background()
	st, err := c.Stat(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	for _, rg := range []struct{ off, n int64 }{
		{0, block}, {block - 1, 2}, {block, block}, {2*block - 7, 14}, {3 * block, 123}, {3*block + 100, 23}, {0, int64(len(data))},
	} {
		buf := make([]byte, rg.n)
		n, err := c.ReadAt(ctx, "big", st.ETag, buf, rg.off)
		if err != nil || int64(n) != rg.n || !bytes.Equal(buf, data[rg.off:rg.off+rg.n]) {
			t.Errorf("ReadAt(%d, %d) = %d, %v; bytes equal: %t", rg.off, rg.n, n, err, bytes.Equal(buf[:n], data[rg.off:rg.off+int64(n)]))
		}
	}
	// A read past the end is short, with io.EOF.
	buf := make([]byte, 200)
	n, err := c.ReadAt(ctx, "big", st.ETag, buf, 3*block+100)
	if n != 23 || !errors.Is(err, io.EOF) || !bytes.Equal(buf[:n], data[3*block+100:]) {
		t.Errorf("short read = %d, %v", n, err)
	}
	// A conditional read of a replaced object fails with ErrChanged.
	e.put(t, "big", []byte("another version"))
	_, err = c.ReadAt(ctx, "big", st.ETag, buf[:10], 0)
	if !errors.Is(err, s3store.ErrChanged) || !errors.Is(err, syscall.ESTALE) {
		t.Errorf("read of a changed object = %v, want ErrChanged (ESTALE)", err)
	}
}

func TestErrorsMapToErrno(t *testing.T) {
	e := newEnv(t, "")
	e.put(t, "f", []byte("x"))
	ctx := context.Background()
	bad, err := s3store.New(e.loc, s3store.Credentials{AccessKey: e.srv.AccessKey, SecretKey: "wrong-secret-value"}, s3store.Config{MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.Stat(ctx, "f")
	if !errors.Is(err, syscall.EACCES) {
		t.Errorf("Stat with a wrong secret = %v, want EACCES", err)
	}
	if err != nil && strings.Contains(err.Error(), "wrong-secret-value") {
		t.Errorf("error shows the secret: %v", err)
	}
	_, err = bad.ReadAt(ctx, "f", "", make([]byte, 1), 0)
	if !errors.Is(err, syscall.EACCES) {
		t.Errorf("GET with a wrong secret = %v, want EACCES", err)
	}
	good := e.client(t, s3store.Config{})
	_, err = good.ReadAt(ctx, "nope", "", make([]byte, 1), 0)
	if !errors.Is(err, syscall.ENOENT) {
		t.Errorf("GET of a missing key = %v, want ENOENT", err)
	}
	if _, err := s3store.New(e.loc, s3store.Credentials{}, s3store.Config{}); err == nil || !strings.Contains(err.Error(), "needs credentials") {
		t.Errorf("a client without credentials for a non-anonymous location: %v", err)
	}
}

// TestKilledServer: a server that dies mid-read fails the reader with EIO
// within the timeout, and reads work again once it is back.
func TestKilledServer(t *testing.T) {
	e := newEnv(t, "")
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	e.put(t, "f", data)
	c := e.client(t, s3store.Config{Timeout: 2 * time.Second, MaxRetries: 2})
	ctx := context.Background()
	buf := make([]byte, len(data))
	if _, err := c.ReadAt(ctx, "f", "", buf, 0); err != nil {
		t.Fatal(err)
	}

	// Frozen: connections open, nothing answers.
	if err := e.srv.Freeze(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.ReadAt(ctx, "f", "", buf, 0)
	took := time.Since(start)
	if err := e.srv.Thaw(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("read from a stalled server = %v, want EIO", err)
	}
	if took > 10*time.Second {
		t.Errorf("a stalled server held the reader %s (timeout 2s)", took)
	}

	// Killed while reads are in flight.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				b := make([]byte, len(data))
				if _, err := c.ReadAt(ctx, "f", "", b, 0); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	if err := e.srv.Stop(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, syscall.EIO) {
			t.Errorf("read while the server died = %v, want EIO", err)
		}
	}
	if err := e.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadAt(ctx, "f", "", buf, 0); err != nil || !bytes.Equal(buf, data) {
		t.Errorf("read after restart = %v", err)
	}
}

func TestPutMarkerRemoveAll(t *testing.T) {
	e := newEnv(t, "ds")
	c := e.client(t, s3store.Config{PartSize: 5 << 20})
	ctx := context.Background()
	if err := c.PutMarker(ctx, "ns/vol"); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.DirExists(ctx, "ns/vol"); err != nil || !ok {
		t.Fatalf("an empty volume with a marker does not list: %t, %v", ok, err)
	}
	big := bytes.Repeat([]byte{7}, 12<<20) // multipart: three parts
	if _, err := c.Put(ctx, "ns/vol/big", bytes.NewReader(big), int64(len(big))); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(big))
	if n, err := c.ReadAt(ctx, "ns/vol/big", "", got, 0); n != len(big) || err != nil || !bytes.Equal(got, big) {
		t.Fatalf("multipart object read back: %d, %v", n, err)
	}
	for i := range 1100 {
		e.put(t, fmt.Sprintf("ds/ns/vol/d/%04d", i), []byte("x"))
	}
	e.put(t, "ds/ns/volume2/keep", []byte("a sibling whose name extends vol"))
	e.put(t, "ds/ns/vol.keep", []byte("another sibling"))
	e.put(t, "ds/ns/keep", []byte("the parent's file"))
	var batches []int
	n, err := c.RemoveAll(ctx, "ns/vol", func(d int) { batches = append(batches, d) })
	if err != nil {
		t.Fatal(err)
	}
	if n != 1102 { // 1100 + big + the marker
		t.Errorf("deleted %d objects, want 1102", n)
	}
	if len(batches) < 2 {
		t.Errorf("progress after %v: want one call per batch of 1000", batches)
	}
	want := []string{"ds/ns/keep", "ds/ns/vol.keep", "ds/ns/volume2/keep"}
	if got := e.keys(t, "ds/"); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("left %v, want exactly %v", got, want)
	}
	if _, err := c.RemoveAll(ctx, "", nil); err == nil {
		t.Error("RemoveAll of the dataset root was allowed")
	}
}

func TestLocationEndpointIsUsed(t *testing.T) {
	e := newEnv(t, "")
	u, _ := url.Parse(e.srv.Endpoint)
	if u.Hostname() != "127.0.0.1" {
		t.Fatalf("test server is not on loopback: %s", e.srv.Endpoint)
	}
}
