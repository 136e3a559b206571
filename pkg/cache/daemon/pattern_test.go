package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// smallTree writes n files of 4 KiB in 10 directories under dir, and
// large sparse files of 64 MiB.
func smallTree(t *testing.T, dir string, n, large int) {
	t.Helper()
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("d%d", i%10), fmt.Sprintf("f%04d", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range large {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("large-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(64 << 20); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

func TestChoosePattern(t *testing.T) {
	for _, c := range []struct {
		name         string
		small, large int
		posix        bool
		want         string
	}{
		{"many small files", 200, 0, true, api.PatternSmallFiles},
		{"too few files to judge", 50, 0, true, api.PatternDefault},
		{"POSIX: small files, but most bytes in large ones", 200, 2, true, api.PatternDefault},
		{"object store: small files and a few large ones", 200, 2, false, api.PatternSmallFiles},
		{"mostly large files", 100, 30, false, api.PatternDefault},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			smallTree(t, dir, c.small, c.large)
			src, err := posix.New(dir)
			if err != nil {
				t.Fatal(err)
			}
			s, err := sampleTree(context.Background(), src)
			if err != nil {
				t.Fatal(err)
			}
			if s.files != c.small+c.large || s.small != c.small {
				t.Errorf("sample %s: want %d files, %d small", s, c.small+c.large, c.small)
			}
			if got := choosePattern(s, c.posix); got != c.want {
				t.Errorf("pattern %s for %s, want %s", got, s, c.want)
			}
		})
	}
}

// TestSampleStopsAtItsLimit: a tree larger than the sample is judged on
// the sample (a dataset of a million files costs a few listings).
func TestSampleStopsAtItsLimit(t *testing.T) {
	dir := t.TempDir()
	smallTree(t, dir, 3*sampleFiles, 0)
	src, _ := posix.New(dir)
	s, err := sampleTree(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	if s.files != sampleFiles || s.dirs > 1+3*sampleFiles/100 {
		t.Errorf("sample %s: want %d files", s, sampleFiles)
	}
}

// TestAutomaticPatternServesAndSurvivesRestart: a read-only dataset of
// small files mounted without an accessPattern is served in no-open mode
// (its reads open nothing through the daemon), stats say so, and a daemon
// that takes the connection back serves it the same way even if a new
// sample would choose otherwise (the kernel keeps no-open mode for the
// connection's life). A read-write dataset is never sampled.
func TestAutomaticPatternServesAndSurvivesRestart(t *testing.T) {
	cachetest.RequireFUSE(t)
	_, opts := withKeeper(t)
	src := t.TempDir()
	smallTree(t, src, 200, 0)
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	resp, err := d.Mount(ctx, api.MountRequest{Holder: "volume:a", Dataset: "images", Source: "file://" + src, ReadOnly: true, MetaCache: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rw, err := d.Mount(ctx, api.MountRequest{Holder: "volume:b", Dataset: "scratch", Source: "file://" + src, MetaCache: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	patterns := func(d *Daemon) map[string]string {
		got := map[string]string{}
		for _, ds := range d.Stats().Datasets {
			got[ds.Dataset] = ds.AccessPattern
		}
		return got
	}
	if got := patterns(d); got["images"] != api.PatternSmallFiles || got["scratch"] != "" {
		t.Fatalf("patterns %v, want images small-files and scratch none", got)
	}
	for i := range 3 {
		if _, err := os.ReadFile(filepath.Join(resp.MountPath, "d1", fmt.Sprintf("f%04d", 10*i+1))); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	m := d.datasets[resp.Key]
	d.mu.Unlock()
	if opens := m.fs.CachedOpen.Load() + m.fs.Passthrough.Load(); opens != 0 || m.fs.Reads.Load() == 0 {
		t.Errorf("small-files: %d opens reached the daemon, %d reads; want none and some", opens, m.fs.Reads.Load())
	}
	_ = rw
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// Now mostly large bytes: a fresh sample would choose default.
	smallTree(t, src, 0, 30)
	d2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		d2.Release("volume:a")
		d2.Release("volume:b")
		d2.mu.Lock()
		var ms []*mounted
		for _, m := range d2.datasets {
			ms = append(ms, m)
		}
		d2.mu.Unlock()
		for _, m := range ms {
			d2.expire(m)
		}
		if err := d2.Close(); err != nil {
			t.Error(err)
		}
	}()
	if got := patterns(d2); got["images"] != api.PatternSmallFiles {
		t.Errorf("after a restart: patterns %v, want images small-files", got)
	}
	if _, err := os.ReadFile(filepath.Join(resp.MountPath, "d2", "f0002")); err != nil {
		t.Errorf("read after the restart: %v", err)
	}
}
