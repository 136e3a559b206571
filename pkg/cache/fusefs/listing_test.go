package fusefs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// statCounting counts a POSIX source's Stat calls.
type statCounting struct {
	*posix.Source
	stats atomic.Int64
}

func (s *statCounting) Stat(ctx context.Context, name string) (source.Attr, error) {
	s.stats.Add(1)
	return s.Source.Stat(ctx, name)
}

// TestListingAnswersTheLookupsThatFollowIt: find or ls -l of a directory
// of a POSIX dataset, read-only or read-write (READDIRPLUS, then a stat of
// each entry) asks the source for each entry's attributes once, in the
// listing; the lookups take them from it. Each entry was read twice: a
// POSIX source opened the parent and read the name's attributes again for
// every lookup (on read-write mounts until this session).
func TestListingAnswersTheLookupsThatFollowIt(t *testing.T) {
	for _, ro := range []bool{true, false} {
		t.Run(fmt.Sprintf("readOnly=%t", ro), func(t *testing.T) { listingAnswersLookups(t, ro) })
	}
}

func listingAnswersLookups(t *testing.T, readOnly bool) {
	root := t.TempDir()
	const files = 200
	for i := range files {
		if err := os.WriteFile(filepath.Join(root, fmt.Sprintf("f%03d", i)), []byte{byte(i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := posix.New(root)
	if err != nil {
		t.Fatal(err)
	}
	src := &statCounting{Source: p}
	c := newTestCache(t, t.TempDir(), 1<<30)
	t.Cleanup(func() { c.Close() })
	_, mnt := mountTest(t, src, c, Options{ReadOnly: readOnly, MetaCache: time.Minute})
	before := src.stats.Load()
	ents, err := os.ReadDir(mnt)
	if err != nil || len(ents) != files {
		t.Fatalf("listing: %d entries, %v", len(ents), err)
	}
	for _, e := range ents {
		fi, err := os.Lstat(filepath.Join(mnt, e.Name()))
		if err != nil || fi.Size() != 1 {
			t.Fatalf("lstat %s: %v, %v", e.Name(), fi, err)
		}
	}
	if n := src.stats.Load() - before; n > files/10 {
		t.Errorf("a listing and a stat of each of %d entries asked the source %d times; want the listing's attributes used", files, n)
	}
}

// TestListingReadBeforeAChangeIsNotKept: a listing read while a change was
// made through the mount (its forget came between the listing's start and
// its end) is not kept: it may show the directory as it was.
func TestListingReadBeforeAChangeIsNotKept(t *testing.T) {
	var l listings
	ents := []source.Entry{{Name: "f", Attr: source.Attr{Size: 1}}}
	gen := l.generation()
	l.forget(7) // an unlink in directory 7, while its listing was read
	l.remember(7, ents, gen)
	if _, ok := l.take(7, "f", time.Second); ok {
		t.Error("a listing read before a change was kept")
	}
	l.remember(7, ents, l.generation())
	if a, ok := l.take(7, "f", time.Second); !ok || a.Size != 1 {
		t.Errorf("a listing read after the change: %v, %v; want it kept", a, ok)
	}
}

// TestAChangeOfAttributesForgetsEveryListing: a write, truncate, fallocate
// or chmod (forgetAll, before and after) drops every listing: the file may
// be named in any directory (hard links), and a lookup must not take back
// the attributes it had before the change.
func TestAChangeOfAttributesForgetsEveryListing(t *testing.T) {
	var l listings
	gen := l.generation()
	l.remember(7, []source.Entry{{Name: "f", Attr: source.Attr{Size: 0}}}, gen)
	l.remember(8, []source.Entry{{Name: "link-to-f", Attr: source.Attr{Size: 0}}}, gen)
	l.forgetAll()
	for dir, name := range map[uint64]string{7: "f", 8: "link-to-f"} {
		if a, ok := l.take(dir, name, time.Second); ok {
			t.Errorf("directory %d: %s taken from a listing read before the change (%+v)", dir, name, a)
		}
	}
	// One read while the change was made is not kept either.
	gen = l.generation()
	l.forgetAll()
	l.remember(7, []source.Entry{{Name: "f", Attr: source.Attr{Size: 0}}}, gen)
	if _, ok := l.take(7, "f", time.Second); ok {
		t.Error("a listing read during a change was kept")
	}
}
