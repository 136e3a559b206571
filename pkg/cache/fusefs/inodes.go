package fusefs

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// inodes allocates the inode numbers the kernel sees, from a table:
// numbers never collide (go-fuse merges every lookup of one number into
// one inode, so a collision would make one file read and write another).
// A file of a POSIX source is known by its device and inode number,
// whatever its path (a renamed file keeps its number; a hard link shares
// it); a file of an object store, which has no inode numbers, by its path
// (a rename moves the number with it). The table is kept in a log file
// when one is given, so the numbers survive a restart of the daemon.
type inodes struct {
	log klog.Logger

	mu   sync.Mutex
	byID map[string]uint64 // guarded by mu
	next uint64            // guarded by mu; the root is 1
	file *os.File          // guarded by mu; the log, or nil
}

// openInodes loads the table from path ("" = in memory only).
func openInodes(path string, log klog.Logger) (*inodes, error) {
	t := &inodes{log: log, byID: map[string]uint64{}, next: 2}
	if path == "" {
		return t, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("inode table: %w", err)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		id, num, ok := strings.Cut(sc.Text(), "\t")
		n, err := strconv.ParseUint(num, 10, 64)
		if !ok || err != nil {
			continue // a torn last line
		}
		if n == 0 {
			delete(t.byID, id)
			continue
		}
		t.byID[id] = n
		t.next = max(t.next, n+1)
	}
	if err := sc.Err(); err != nil {
		f.Close()
		return nil, fmt.Errorf("inode table %s: %w", path, err)
	}
	t.file = f
	return t, nil
}

// id names the file at path p with attributes a in the table.
func inodeID(p string, a source.Attr) string {
	if a.Ino != 0 {
		return "i:" + strconv.FormatUint(a.Dev, 10) + ":" + strconv.FormatUint(a.Ino, 10)
	}
	return "p:" + p
}

// number returns the inode number of the file, allocating one on first
// sight.
func (t *inodes) number(p string, a source.Attr) uint64 {
	id := inodeID(p, a)
	t.mu.Lock()
	defer t.mu.Unlock()
	if n, ok := t.byID[id]; ok {
		return n
	}
	n := t.next
	t.next++
	t.byID[id] = n
	t.appendLocked(id, n)
	return n
}

// rename moves the number of a path-named file (an object store's) from
// one path to the other; the old path gets a new number when it is used
// again.
func (t *inodes) rename(from, to string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.byID["p:"+from]
	if !ok {
		return
	}
	delete(t.byID, "p:"+from)
	t.byID["p:"+to] = n
	t.appendLocked("p:"+from, 0)
	t.appendLocked("p:"+to, n)
}

func (t *inodes) appendLocked(id string, n uint64) {
	if t.file == nil || strings.ContainsAny(id, "\t\n") {
		return // in memory only (a name with a tab or newline is never logged)
	}
	if _, err := fmt.Fprintf(t.file, "%s\t%d\n", id, n); err != nil {
		t.log.Error(err, "Inode table write failed; numbers stay in memory")
		t.file.Close()
		t.file = nil
	}
}

func (t *inodes) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.file == nil {
		return nil
	}
	err := t.file.Close()
	t.file = nil
	return err
}
