package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
)

func startDaemon(t *testing.T, grace time.Duration) (*Daemon, *api.Client, string) {
	t.Helper()
	return startDaemonWith(t, func(o *Options) { o.Grace = grace })
}

// startDaemonWith is startDaemon with options changed by set.
func startDaemonWith(t *testing.T, set func(*Options)) (*Daemon, *api.Client, string) {
	t.Helper()
	d, cl, addr, _ := startStoppable(t, set)
	return d, cl, addr
}

// startStoppable is startDaemonWith that also returns stop, which stops
// the daemon as SIGTERM does and waits for it (once: the test's cleanup
// calls it too).
func startStoppable(t *testing.T, set func(*Options)) (*Daemon, *api.Client, string, func()) {
	t.Helper()
	cachetest.RequireFUSE(t)
	state := t.TempDir()
	o := Options{
		Socket: filepath.Join(state, "cache.sock"), StateDir: state, MetricsAddr: "127.0.0.1:0",
		Tiers: "mem:64Mi,disk:" + filepath.Join(state, "disk") + ":256Mi", BlockSize: cachetest.Block,
	}
	set(&o)
	d, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("daemon: %v", err)
			}
			if b, _ := os.ReadFile("/proc/mounts"); strings.Contains(string(b), state) {
				t.Errorf("mounts left under %s after the daemon stopped", state)
			}
		})
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(state, "cache.sock")); err == nil && d.MetricsAddr() != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon socket did not appear")
		}
	}
	return d, api.NewClient(filepath.Join(state, "cache.sock")), d.MetricsAddr(), stop
}

func fuseMountsUnder(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[2] == "fuse.cistern" && strings.HasPrefix(f[1], dir) {
			n++
		}
	}
	return n
}

func TestDaemonMountsEachDatasetOnce(t *testing.T) {
	d, cl, _ := startDaemon(t, 50*time.Millisecond)
	ctx := context.Background()
	root := t.TempDir()
	cachetest.WriteRandom(t, filepath.Join(root, "a/file"), 3*cachetest.Block, 1)
	req := api.MountRequest{Dataset: "research", Source: "file://" + root, ReadOnly: true, MetaCache: time.Hour}

	r1, r2 := req, req
	r1.Holder, r2.Holder = "volume:a", "volume:b"
	m1, err := cl.Mount(ctx, r1)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := cl.Mount(ctx, r2)
	if err != nil || m2.MountPath != m1.MountPath {
		t.Fatalf("second volume got %v, %v; want the same mount %s", m2, err, m1.MountPath)
	}
	if _, err := cl.Mount(ctx, r1); err != nil { // idempotent
		t.Fatal(err)
	}
	state := filepath.Dir(filepath.Dir(filepath.Dir(m1.MountPath)))
	if n := fuseMountsUnder(t, state); n != 1 {
		t.Fatalf("%d FUSE mounts for one dataset used by two volumes, want 1", n)
	}
	// Many volumes staged at once: still one mount.
	var wg sync.WaitGroup
	paths := make([]string, 16)
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := req
			r.Holder = fmt.Sprintf("volume:p%d", i)
			resp, err := cl.Mount(ctx, r)
			if err != nil {
				t.Error(err)
			}
			paths[i] = resp.MountPath
			_ = cl.Release(ctx, r.Holder)
		}()
	}
	wg.Wait()
	for _, p := range paths {
		if p != m1.MountPath {
			t.Fatalf("a concurrent mount got %q, want %q", p, m1.MountPath)
		}
	}
	// Other credentials never share the mount.
	r3 := r1
	r3.Holder, r3.Secrets = "volume:c", map[string]string{"access-key": "other"}
	m3, err := cl.Mount(ctx, r3)
	if err != nil || m3.Key == m1.Key || m3.MountPath == m1.MountPath {
		t.Fatalf("a request with other credentials got %v, %v; want its own mount", m3, err)
	}
	st, _ := cl.Stats(ctx)
	if len(st.Datasets) != 2 {
		t.Fatalf("stats list %d datasets, want 2", len(st.Datasets))
	}

	// Bad requests name the problem.
	bad := r1
	bad.Holder, bad.Source = "volume:x", "juicefs://vol"
	if _, err := cl.Mount(ctx, bad); !api.IsBadRequest(err) || !strings.Contains(err.Error(), "file:// and s3://") {
		t.Fatalf("juicefs source: %v, want a bad request naming the served schemes", err)
	}
	// One source parser for the driver and the daemon: the node's root
	// and relative paths are refused by both.
	for _, src := range []string{"file:///", "file://relative/dir", "file:///a/../b"} {
		bad.Source = src
		if _, err := cl.Mount(ctx, bad); !api.IsBadRequest(err) {
			t.Fatalf("source %q: %v, want a bad request", src, err)
		}
	}
	bad.Source = "s3://Bad_Bucket"
	if _, err := cl.Mount(ctx, bad); !api.IsBadRequest(err) || !strings.Contains(err.Error(), "bucket") {
		t.Fatalf("bad s3 source: %v, want a bad request naming the bucket", err)
	}
	// A source root reached through a symbolic link is refused: a link
	// planted under an allowed directory must not lead out of it.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(root, link); err != nil {
		t.Fatal(err)
	}
	linked := r1
	linked.Holder, linked.Source = "volume:l", "file://"+link
	if _, err := cl.Mount(ctx, linked); !api.IsBadRequest(err) || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("source through a symlink: %v, want a bad request naming the link", err)
	}
	missing := r1
	missing.Holder, missing.Source = "volume:y", "file://"+root+"/nope"
	if _, err := cl.Mount(ctx, missing); !api.IsNotFound(err) {
		t.Fatalf("missing source: %v, want not found", err)
	}

	// Released by both holders: unmounted after the grace period.
	for _, h := range []string{"volume:a", "volume:b", "volume:c", "volume:never"} {
		if err := cl.Release(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); fuseMountsUnder(t, state) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("released datasets still mounted after the grace period")
		}
	}
	if n := len(d.Stats().Datasets); n != 0 {
		t.Fatalf("%d datasets still listed", n)
	}
}

func TestDaemonConcurrentFirstMount(t *testing.T) {
	_, cl, _ := startDaemon(t, time.Hour)
	ctx := context.Background()
	root := t.TempDir()
	var wg sync.WaitGroup
	keys := make([]string, 16)
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := cl.Mount(ctx, api.MountRequest{Holder: fmt.Sprint(i), Dataset: "ds", Source: "file://" + root, ReadOnly: true})
			if err != nil {
				t.Error(err)
			}
			keys[i] = resp.MountPath
		}()
	}
	wg.Wait()
	st, _ := cl.Stats(ctx)
	if len(st.Datasets) != 1 || st.Datasets[0].Holders != 16 || fuseMountsUnder(t, filepath.Dir(filepath.Dir(filepath.Dir(keys[0])))) != 1 {
		t.Fatalf("16 concurrent first mounts gave %+v", st.Datasets)
	}
}

func TestDaemonWarmupAndMetrics(t *testing.T) {
	_, cl, addr := startDaemon(t, time.Hour)
	ctx := context.Background()
	root := t.TempDir()
	for i, name := range []string{"d/1", "d/2", "d/sub/3", "other"} {
		cachetest.WriteRandom(t, filepath.Join(root, name), (i+1)*cachetest.Block+5, uint64(i))
	}
	m, err := cl.Mount(ctx, api.MountRequest{Holder: "h", Dataset: "ds", Source: "file://" + root, ReadOnly: true, MetaCache: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var last api.WarmupProgress
	if err := cl.Warmup(ctx, m.Key, []string{"d"}, func(p api.WarmupProgress) { last = p }); err != nil {
		t.Fatal(err)
	}
	want := int64(1*cachetest.Block+5) + 2*cachetest.Block + 5 + 3*cachetest.Block + 5
	if !last.Done || last.Files != 3 || last.DoneBytes != want || last.TotalBytes != want {
		t.Fatalf("last progress %+v, want 3 files, %d bytes, done", last, want)
	}
	before, _ := cl.Stats(ctx)
	for _, name := range []string{"d/1", "d/2", "d/sub/3"} {
		if _, err := os.ReadFile(filepath.Join(m.MountPath, name)); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := cl.Stats(ctx)
	if after.Cache.SourceBytes != before.Cache.SourceBytes {
		t.Fatalf("warmed files read %d bytes from the source", after.Cache.SourceBytes-before.Cache.SourceBytes)
	}
	if err := cl.Warmup(ctx, m.Key, []string{"missing"}, nil); err == nil {
		t.Fatal("warm-up of a missing path succeeded")
	}
	if n, err := cl.Evict(ctx, m.Key, "d/sub"); err != nil || n != 1 {
		t.Fatalf("evict d/sub = %d, %v; want 1", n, err)
	}

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`cistern_cache_misses_total{dataset="ds"}`, `cistern_cache_mounted_datasets 1`, `cistern_cache_tier_bytes{tier="mem"}`, `cistern_cache_source_fetch_seconds_count`, `cistern_cache_served_bytes_total{tier="mem"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestDaemonMountTimeWarmup(t *testing.T) {
	_, cl, _ := startDaemon(t, time.Hour)
	ctx := context.Background()
	root := t.TempDir()
	cachetest.WriteRandom(t, filepath.Join(root, "train/a"), 5*cachetest.Block, 1)
	cachetest.WriteRandom(t, filepath.Join(root, "train/b"), 3*cachetest.Block+1, 2)
	cachetest.WriteRandom(t, filepath.Join(root, "val/c"), 2*cachetest.Block, 3)
	m, err := cl.Mount(ctx, api.MountRequest{Holder: "h", Dataset: "ds", Source: "file://" + root, ReadOnly: true, MetaCache: time.Hour, Warmup: []string{"train"}})
	if err != nil {
		t.Fatal(err)
	}
	var w *api.WarmupProgress
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st, err := cl.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Datasets) == 1 && st.Datasets[0].Warmup != nil && st.Datasets[0].Warmup.Done {
			w = st.Datasets[0].Warmup
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mount-time warm-up did not finish: %+v", st.Datasets)
		}
	}
	if w.Error != "" || w.Files != 2 || w.DoneBytes != 8*cachetest.Block+1 {
		t.Fatalf("warm-up progress %+v, want 2 files of train/", w)
	}
	before, _ := cl.Stats(ctx)
	for _, f := range []string{"train/a", "train/b"} {
		if _, err := os.ReadFile(filepath.Join(m.MountPath, f)); err != nil {
			t.Fatal(err)
		}
	}
	mid, _ := cl.Stats(ctx)
	if mid.Cache.SourceBytes != before.Cache.SourceBytes {
		t.Fatal("warmed files were read from the source")
	}
	if _, err := os.ReadFile(filepath.Join(m.MountPath, "val/c")); err != nil {
		t.Fatal(err)
	}
	// val/c is read from the source's own file (passthrough), then
	// cached from it in the background.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if after, _ := cl.Stats(ctx); after.Cache.SourceBytes != mid.Cache.SourceBytes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("val/c, outside the warm-up, was not read from the source: the check above cannot tell")
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	good := Options{Socket: "/run/c.sock", StateDir: "/var/lib/cistern"}
	if err := good.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, tc := range map[string]struct {
		mutate func(*Options)
		want   string
	}{
		"relative socket":   {func(o *Options) { o.Socket = "c.sock" }, "--socket"},
		"relative state":    {func(o *Options) { o.StateDir = "state" }, "--state-dir"},
		"bad tier":          {func(o *Options) { o.Tiers = "ssd:/x:1Gi" }, "--cache-tiers"},
		"bad size":          {func(o *Options) { o.Tiers = "mem:lots" }, "--cache-tiers"},
		"two mem tiers":     {func(o *Options) { o.Tiers = "mem:1Gi,mem:2Gi" }, "only one mem tier"},
		"relative disk dir": {func(o *Options) { o.Tiers = "disk:cache:1Gi" }, "absolute"},
		"cache-low 1":       {func(o *Options) { o.LowWater = 1 }, "--cache-low"},
		"free ratio -0.1":   {func(o *Options) { o.FreeRatio = -0.1 }, "--free-space-ratio"},
		"negative grace":    {func(o *Options) { o.Grace = -time.Second }, "--grace"},
		"bad metrics addr":  {func(o *Options) { o.MetricsAddr = "9810" }, "--metrics-address"},
	} {
		o := good
		tc.mutate(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want %q", name, err, tc.want)
		}
	}
	if got, err := ParseTiers("mem:40Gi,disk:/var/lib/cistern/cache:400Gi", "/m"); err != nil || len(got) != 2 || got[0].Quota != 40<<30 || got[1].Dir != "/var/lib/cistern/cache" || got[1].Quota != 400<<30 {
		t.Fatalf("ParseTiers = %+v, %v", got, err)
	}
}

// TestKeysAreSalted: a dataset key depends on the node's own salt (the key
// shows in mounts and stats; unsalted, it confirmed a guessed secret), and
// the salt is kept, so keys and the cache survive a restart.
func TestKeysAreSalted(t *testing.T) {
	dir := t.TempDir()
	s1, err := loadSalt(filepath.Join(dir, "a", "key-salt"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := loadSalt(filepath.Join(dir, "a", "key-salt"))
	if err != nil || !bytes.Equal(again, s1) {
		t.Fatalf("the salt changed on reload (%v)", err)
	}
	s2, err := loadSalt(filepath.Join(dir, "b", "key-salt"))
	if err != nil {
		t.Fatal(err)
	}
	req := api.MountRequest{Dataset: "d", Source: "s3://bucket/p", Secrets: map[string]string{"access-key": "guess", "secret-key": "guess"}}
	if req.Key(s1) == req.Key(s2) {
		t.Error("two nodes' salts give the same key")
	}
	if req.Key(s1) == req.Key(nil) {
		t.Error("the salt does not change the key")
	}
	if _, _, mode := cachetest.OwnerOf(t, filepath.Join(dir, "a", "key-salt")); mode != 0o600 {
		t.Errorf("the salt file has mode %o, want 600", mode)
	}
}
