package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// TestMaxInodesBoundsTheNodes: the files the kernel holds of all mounts
// are kept under --max-inodes (the least recently used idle ones are
// forgotten, every mount in proportion), shown by stats and metrics, and
// every file is still there afterwards.
func TestMaxInodesBoundsTheNodes(t *testing.T) {
	const limit = 100
	d, cl, addr := startDaemonWith(t, func(o *Options) { o.Grace = time.Hour; o.MaxInodes = limit })
	ctx := context.Background()
	var mounts []string
	for ds := range 2 {
		root := t.TempDir()
		for i := range 150 {
			dir := filepath.Join(root, fmt.Sprintf("d%d", i/50))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), []byte{byte(i)}, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		m, err := cl.Mount(ctx, api.MountRequest{Holder: fmt.Sprint("h", ds), Dataset: fmt.Sprint("ds", ds), Source: "file://" + root, ReadOnly: true, MetaCache: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		mounts = append(mounts, m.MountPath)
	}
	file := func(mnt string, i int) string { return filepath.Join(mnt, fmt.Sprintf("d%d", i/50), fmt.Sprint(i)) }
	for _, mnt := range mounts {
		for i := range 150 {
			if _, err := os.Stat(file(mnt, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	nodes := func() (total int64, per []int64) {
		st, err := cl.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, ds := range st.Datasets {
			total += ds.Nodes
			per = append(per, ds.Nodes)
		}
		return total, per
	}
	if total, _ := nodes(); total < 2*153 {
		t.Fatalf("stats show %d nodes after looking up 2 x 150 files in 3 directories; want at least %d", total, 2*153)
	}
	if !d.pruneOnce() {
		t.Skip("this kernel cannot prune (FUSE_NOTIFY_PRUNE needs Linux 6.18)")
	}
	deadline := time.Now().Add(5 * time.Second)
	total, per := nodes()
	for ; total > limit && time.Now().Before(deadline); total, per = nodes() {
		time.Sleep(20 * time.Millisecond)
	}
	if total > limit {
		t.Fatalf("%d nodes (%v) after pruning; want at most %d", total, per, limit)
	}
	for _, n := range per {
		if n < limit/4 {
			t.Errorf("nodes per mount after pruning %v: one mount lost more than its share", per)
		}
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var metric int64 = -1
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "cistern_cache_inodes "); ok {
			fmt.Sscan(v, &metric)
		}
	}
	if metric < 0 || metric > limit {
		t.Errorf("metric cistern_cache_inodes = %d (-1: missing); want the nodes held, at most %d", metric, limit)
	}
	for _, mnt := range mounts {
		for i := range 150 {
			if b, err := os.ReadFile(file(mnt, i)); err != nil || len(b) != 1 || b[0] != byte(i) {
				t.Fatalf("%s after pruning: %v, %v", file(mnt, i), b, err)
			}
		}
	}
}
