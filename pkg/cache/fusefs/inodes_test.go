package fusefs

import (
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"k8s.io/klog/v2"
)

// TestInodePlacesFromTheLog: where each number was last seen is read back
// from the log (a place logged again only when it changes); a damaged
// line naming a number far beyond those allocated is not recorded (the
// places are a slice by number: it would have allocated for every number
// up to it).
func TestInodePlacesFromTheLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inodes")
	log := "i:1:10\t2\ni:1:11\t3\n@\t2\t1\ta\n@\t3\t1\tb\n@\t3\t2\tc\n@\t999999999999\t1\tdamaged\n"
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	tab, err := openInodes(path, klog.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tab.close()
	if len(tab.seenAt) > 1<<21 {
		t.Fatalf("%d places kept for 2 numbers", len(tab.seenAt))
	}
	if tab.seenAt[2] != placeHash(1, "a") || tab.seenAt[3] != placeHash(2, "c") {
		t.Errorf("places %x, %x; want a in 1, c in 2 (the last)", tab.seenAt[2], tab.seenAt[3])
	}
	before, _ := os.ReadFile(path)
	tab.seen(3, 2, "c") // unchanged: not logged again
	tab.seen(2, 3, "d") // moved: logged
	after, _ := os.ReadFile(path)
	if got := string(after[len(before):]); got != "@\t2\t3\td\n" {
		t.Errorf("logged %q; want only the move of 2", got)
	}
	// Numbers seen in turn (every third one skipped): the slice grows a
	// 32nd at a time (append's growth left up to a quarter unused), the
	// skipped numbers' places stay unknown.
	for n := uint64(4); n < 20000; n++ {
		if n%3 != 0 {
			tab.seen(n, 1, "f")
		}
	}
	for n := uint64(4); n < 20000; n++ {
		if got, want := tab.seenAt[n] != 0, n%3 != 0; got != want {
			t.Fatalf("number %d: place known %v, want %v", n, got, want)
		}
	}
	if l := len(tab.seenAt); l+l/32+1 < cap(tab.seenAt) {
		t.Errorf("%d places in a slice of room for %d", l, cap(tab.seenAt))
	}
}

// TestNodesKeepTheirSizeClass: a node is larger than Go's 320-byte size
// class, where the cache's Items are (pkg/cache TestItemsKeepTheirSizeClass):
// the nodes the kernel keeps do not share spans with the items of files
// read once and put to sleep, which left the spans pinned and empty.
func TestNodesKeepTheirSizeClass(t *testing.T) {
	if size := unsafe.Sizeof(node{}); size <= 320 {
		t.Errorf("a node is %d bytes: in the Items' size class (at most 320)", size)
	}
}
