package s3

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// TestS3ListingAnswersLookups: a lookup lists its directory once and its
// siblings cost no request; a name created since is still found (a
// listing never answers "does not exist").
func TestS3ListingAnswersLookups(t *testing.T) {
	e := cachetest.NewS3Env(t)
	src := New(e.Client(t, s3store.Config{}), Options{MetaCache: time.Hour})
	ctx := context.Background()
	a, err := src.Stat(ctx, "day-00/sym-0.csv")
	if err != nil || a.Size != int64(len(e.Files["day-00/sym-0.csv"])) || a.ETag == "" {
		t.Fatalf("Stat = %+v, %v", a, err)
	}
	// The lookup started a listing of its directory in the background.
	for deadline := time.Now().Add(10 * time.Second); src.cached("day-00") == nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no listing of day-00 after a lookup in it")
		}
	}
	e.Srv.Freeze() // siblings must come from the listing now
	for _, n := range []string{"day-00/sym-5.csv", "day-00/sym-10.csv"} {
		if a, err := src.Stat(ctx, n); err != nil || a.Size != int64(len(e.Files[n])) {
			e.Srv.Thaw()
			t.Fatalf("Stat(%s) from the listing = %+v, %v", n, a, err)
		}
	}
	e.Srv.Thaw()
	e.Put(t, "day-00/new.csv", []byte("arrived later"))
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
	e := cachetest.NewS3Env(t)
	src := New(e.Client(t, s3store.Config{Timeout: 2 * time.Second, MaxRetries: 1}), Options{MetaCache: time.Hour})
	ctx := context.Background()
	name := "day-02/sym-7.csv"
	a, err := src.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	want := e.Files[name]
	got := make([]byte, len(want))
	// Another version's fingerprint is never served from the lookup's bytes.
	if _, ok := src.takeHead(name, "etag:other", got, 0); ok {
		t.Error("the lookup's bytes were served for another version")
	}
	e.Srv.Freeze()
	n, err := src.ReadAtVersion(ctx, name, a.Fingerprint(), got, 0, nil)
	e.Srv.Thaw()
	if err != nil || n != len(want) || !bytes.Equal(got, want) {
		t.Fatalf("first read after the lookup, store frozen: %d, %v", n, err)
	}
}

// TestS3ObjectWithoutETagIsReadable: a store that gives no ETag makes a
// size-and-time fingerprint; a read of that version must not send it as
// If-Match (the store answered 412 and the file could never be read).
func TestS3ObjectWithoutETagIsReadable(t *testing.T) {
	e := cachetest.NewS3Env(t)
	src := New(e.Client(t, s3store.Config{}), Options{MetaCache: time.Hour})
	name := "day-03/sym-8.csv"
	want := e.Files[name]
	a := source.Attr{Size: int64(len(want)), Mtime: time.Unix(1700000000, 0)} // no ETag
	got := make([]byte, len(want))
	n, err := src.ReadAtVersion(context.Background(), name, a.Fingerprint(), got, 0, nil)
	if err != nil || n != len(want) || !bytes.Equal(got, want) {
		t.Fatalf("read of an object known without an ETag: %d bytes, %v", n, err)
	}
}

// TestS3LookupsBounded: however many lookups arrive at once, at most
// headSlots hold a first-bytes buffer (256 KiB each); the others ask for
// the attributes alone, and every one is answered.
func TestS3LookupsBounded(t *testing.T) {
	e := cachetest.NewS3Env(t)
	src := New(e.Client(t, s3store.Config{Timeout: 20 * time.Second}), Options{})
	ctx := context.Background()
	names := e.Names()
	if err := e.Srv.Freeze(); err != nil { // every lookup now waits in the store
		t.Fatal(err)
	}
	errs := make(chan error, 4*len(names))
	for range 4 {
		for _, n := range names {
			go func() { _, err := src.Stat(ctx, n); errs <- err }()
		}
	}
	var peak int64
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		peak = max(peak, src.headsInFlight.Load())
	}
	if err := e.Srv.Thaw(); err != nil {
		t.Fatal(err)
	}
	for range 4 * len(names) {
		if err := <-errs; err != nil {
			t.Errorf("lookup: %v", err)
		}
	}
	if peak == 0 || peak > headSlots {
		t.Errorf("%d lookups held a first-bytes buffer at once, want 1..%d", peak, headSlots)
	}
}

// TestS3ListingAnswersListsForItsPeriod: a directory listed again within
// the metacache period costs no request (a walk of the tree lists every
// directory at each pass: with a request each, a warm `find` ran at the
// store's pace); a change made through the source is seen at once; a
// partial listing (a lookup's) or a period of 0 never answers.
func TestS3ListingAnswersListsForItsPeriod(t *testing.T) {
	e := cachetest.NewS3Env(t)
	cfg := s3store.Config{Timeout: 2 * time.Second, MaxRetries: 1}
	src := New(e.Client(t, cfg), Options{MetaCache: time.Hour})
	ctx := context.Background()
	first, err := src.List(ctx, "day-00")
	if err != nil || len(first) == 0 {
		t.Fatalf("List = %d entries, %v", len(first), err)
	}
	e.Srv.Freeze()
	again, err := src.List(ctx, "day-00")
	e.Srv.Thaw()
	if err != nil || !slices.Equal(again, first) {
		t.Fatalf("List again within the period = %d entries, %v; want the %d of the first", len(again), err, len(first))
	}

	// A change through the source drops the listing.
	f, err := os.CreateTemp(t.TempDir(), "up")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Upload(ctx, "day-00/added.csv", f, 0); err != nil {
		t.Fatal(err)
	}
	after, err := src.List(ctx, "day-00")
	if err != nil || len(after) != len(first)+1 {
		t.Errorf("List after an upload = %d entries, %v; want %d", len(after), err, len(first)+1)
	}
	if err := src.RemoveFile(ctx, "day-00/added.csv"); err != nil {
		t.Fatal(err)
	}
	if after, err := src.List(ctx, "day-00"); err != nil || !slices.Equal(after, first) {
		t.Errorf("List after a removal = %d entries, %v; want the %d of the first", len(after), err, len(first))
	}

	// A period of 0: every List asks the store.
	zero := New(e.Client(t, cfg), Options{})
	if _, err := zero.List(ctx, "day-00"); err != nil {
		t.Fatal(err)
	}
	e.Srv.Freeze()
	_, err = zero.List(ctx, "day-00")
	e.Srv.Thaw()
	if err == nil {
		t.Error("List with metacache 0 answered while the store was frozen: it was served from memory")
	}
}
