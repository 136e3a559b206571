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

// listingMount mounts a POSIX dataset whose directory d holds n files and
// returns its source directory, the counting source and the mount point.
func listingMount(t *testing.T, n int, opts Options) (string, *listCounting, string) {
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
	c := newTestCache(t, t.TempDir(), 1<<30)
	t.Cleanup(func() { c.Close() })
	_, mnt := mountTest(t, src, c, opts)
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
// source. Before, every listing did.
func TestTheKernelKeepsListings(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      Options
		wantLists int64
	}{
		{"read-only, metacache 1h", Options{ReadOnly: true, MetaCache: time.Hour}, 1},
		{"read-write, metacache 1m", Options{MetaCache: time.Minute}, 1},
		{"read-only, metacache 0", Options{ReadOnly: true}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const files = 3000 // many READDIRs of 4 KiB
			_, src, mnt := listingMount(t, files, tc.opts)
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
// source behind the mount's back shows once the metacache period is over.
func TestKeptListingsFollowChanges(t *testing.T) {
	root, src, mnt := listingMount(t, 10, Options{MetaCache: time.Second})
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
	if err := os.WriteFile(filepath.Join(root, "d", "made-behind"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	before := src.lists.Load()
	time.Sleep(2100 * time.Millisecond) // the period, in the whole seconds it is counted in
	if got := names(t, d); !slices.Contains(got, "made-behind") || len(got) != 12 {
		t.Fatalf("after the metacache period a listing shows %d entries, made-behind: %t", len(got), slices.Contains(got, "made-behind"))
	}
	if src.lists.Load() == before {
		t.Errorf("a listing after the metacache period did not reach the source")
	}
}
