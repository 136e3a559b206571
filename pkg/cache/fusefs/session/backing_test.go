package session

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// TestBackingLogStaysSmall: every passthrough open and release of a file
// adds a line to the backing log; it is rewritten with the IDs in use
// before it grows past a bound (it once grew by two lines per open for as
// long as the daemon ran), and a takeover still finds every ID in use.
func TestBackingLogStaysSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inodes.backing")
	s := &Session{backing: map[uint64]*backingRef{}, log: klog.Background()}
	if err := s.openBackingLog(path, false); err != nil {
		t.Fatal(err)
	}
	for n := uint64(1); n <= 10; n++ { // ten files stay open
		s.backing[n] = &backingRef{id: int32(n), refs: 1}
		s.logBacking(n, int32(n))
	}
	for i := range 100_000 { // a busy file opened and closed
		id := int32(100 + i%7)
		s.backing[500] = &backingRef{id: id, refs: 1}
		s.logBacking(500, id)
		delete(s.backing, 500)
		s.logBacking(500, 0)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > 64<<10 {
		t.Fatalf("backing log is %d bytes after 100,000 opens of one file, want it bounded", st.Size())
	}
	s.backingLog.Close()
	// A server taking over finds exactly the ten IDs in use.
	s2 := &Session{backing: map[uint64]*backingRef{}, log: klog.Background()}
	if err := s2.openBackingLog(path, true); err != nil {
		t.Fatal(err)
	}
	defer s2.backingLog.Close()
	if len(s2.backing) != 10 {
		b, _ := os.ReadFile(path)
		t.Fatalf("takeover found %d backing IDs, want 10; log:\n%s", len(s2.backing), strings.TrimSpace(string(b)))
	}
	for n := uint64(1); n <= 10; n++ {
		if r := s2.backing[n]; r == nil || r.id != int32(n) || !r.pinned {
			t.Fatalf("node %d: %+v, want ID %d pinned", n, r, n)
		}
	}
}
