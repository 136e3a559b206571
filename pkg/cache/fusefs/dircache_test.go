package fusefs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// listCounting counts a POSIX source's listings.
type listCounting struct {
	*posix.Source
	lists atomic.Int64
}

func (s *listCounting) List(ctx context.Context, dir string) ([]source.Entry, error) {
	s.lists.Add(1)
	return s.Source.List(ctx, dir)
}

// objectLike hides a source's POSIX side (an object store's directories
// have no modification time that follows their entries).
type objectLike struct{ source.Source }

// listingMount mounts a POSIX dataset whose directory d holds n files and
// returns its source directory, the counting source and the mount point
// (wrap, if not nil, wraps the source).
func listingMount(t *testing.T, n int, opts Options, wrap ...func(source.Source) source.Source) (string, *listCounting, string) {
	t.Helper()
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := os.WriteFile(filepath.Join(root, "d", fmt.Sprintf("file-with-a-longer-name-%05d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := posix.New(root)
	if err != nil {
		t.Fatal(err)
	}
	src := &listCounting{Source: p}
	var served source.Source = src
	for _, w := range wrap {
		served = w(src)
	}
	c := newTestCache(t, t.TempDir(), 1<<30)
	t.Cleanup(func() { c.Close() })
	_, mnt := mountTest(t, served, c, opts)
	return root, src, mnt
}

// names lists dir (os.ReadDir: sorted).
func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestTheKernelKeepsListings: a directory listed again within the
// metacache period is read from the kernel's page cache (the source and
// the daemon are not asked), complete however many READDIRs its first
// listing took; with a metacache under a second every listing reaches the
// source, and so does every listing of an object store's directory (the
// daemon answers it from the source's own copy). Before, every listing
// reached the source.
func TestTheKernelKeepsListings(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      Options
		object    bool
		wantLists int64
	}{
		{"read-only, metacache 1h", Options{ReadOnly: true, MetaCache: time.Hour}, false, 1},
		{"read-write, metacache 1m", Options{MetaCache: time.Minute}, false, 1},
		{"read-only, metacache 0", Options{ReadOnly: true}, false, 3},
		{"object store, read-only, metacache 1h", Options{ReadOnly: true, MetaCache: time.Hour}, true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const files = 3000 // many READDIRs of 4 KiB
			var wrap []func(source.Source) source.Source
			if tc.object {
				wrap = append(wrap, func(s source.Source) source.Source { return objectLike{s} })
			}
			_, src, mnt := listingMount(t, files, tc.opts, wrap...)
			first := names(t, filepath.Join(mnt, "d"))
			if len(first) != files {
				t.Fatalf("the first listing shows %d entries, want %d", len(first), files)
			}
			for range 2 {
				if again := names(t, filepath.Join(mnt, "d")); !slices.Equal(again, first) {
					t.Fatalf("a listing again shows %d entries, not the first listing's %d", len(again), len(first))
				}
			}
			if n := src.lists.Load(); n != tc.wantLists {
				t.Errorf("three listings of the directory listed it in the source %d times, want %d", n, tc.wantLists)
			}
		})
	}
}

// TestKeptListingsFollowChanges: a change through the mount shows in the
// next listing at once (the kernel drops its copy); a change made in the
// source behind the mount's back shows once the metacache period is over,
// and not before: the directory's modification time is put back, so that
// only Cistern's own check of the period drops the kernel's copy.
func TestKeptListingsFollowChanges(t *testing.T) {
	const period = 3 * time.Second
	root, src, mnt := listingMount(t, 10, Options{MetaCache: period})
	d := filepath.Join(mnt, "d")
	if n := len(names(t, d)); n != 10 {
		t.Fatalf("listing: %d entries, want 10", n)
	}
	if err := os.WriteFile(filepath.Join(d, "made-here"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := names(t, d); !slices.Contains(got, "made-here") || len(got) != 11 {
		t.Fatalf("after a create through the mount the listing shows %d entries, made-here: %t", len(got), slices.Contains(got, "made-here"))
	}
	fi, err := os.Stat(filepath.Join(root, "d"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "d", "made-behind"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(root, "d"), fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	before := src.lists.Load()
	// Within the period (it was listed a moment ago; the period is
	// counted in whole seconds, so at least two of the three are left).
	if got := names(t, d); slices.Contains(got, "made-behind") || src.lists.Load() != before {
		t.Fatalf("within the metacache period a listing reached the source (%d listings) or shows made-behind (%t): the kernel's copy was not kept",
			src.lists.Load()-before, slices.Contains(got, "made-behind"))
	}
	time.Sleep(period + 1100*time.Millisecond) // the period, in the whole seconds it is counted in
	if got := names(t, d); !slices.Contains(got, "made-behind") || len(got) != 12 {
		t.Fatalf("after the metacache period a listing shows %d entries, made-behind: %t", len(got), slices.Contains(got, "made-behind"))
	}
	if src.lists.Load() == before {
		t.Errorf("a listing after the metacache period did not reach the source")
	}
}
