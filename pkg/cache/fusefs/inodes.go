package fusefs

import (
	"bufio"
	"fmt"
	"os"
	"slices"
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
//
// The table also keeps where each number was last seen (its parent's
// number and its name), so that a daemon that takes over a live FUSE
// connection finds the file behind a node ID the kernel still holds.
type inodes struct {
	log klog.Logger

	mu     sync.Mutex
	byID   map[string]uint64 // guarded by mu
	places map[uint64]place  // guarded by mu; where each number was last seen
	next   uint64            // guarded by mu; the root is 1
	file   *os.File          // guarded by mu; the log, or nil
}

// place is where a number was last seen: its parent directory's number and
// its name there.
type place struct {
	parent uint64
	name   string
}

// openInodes loads the table from path ("" = in memory only).
func openInodes(path string, log klog.Logger) (*inodes, error) {
	t := &inodes{log: log, byID: map[string]uint64{}, places: map[uint64]place{}, next: 2}
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
		// "id\tnumber" allocates (number 0: forgets), "@\tnumber\tparent\tname"
		// records where the number was seen.
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) == 4 && fields[0] == "@" {
			n, err1 := strconv.ParseUint(fields[1], 10, 64)
			parent, err2 := strconv.ParseUint(fields[2], 10, 64)
			if err1 == nil && err2 == nil && fields[3] != "" {
				t.places[n] = place{parent: parent, name: fields[3]}
			}
			continue
		}
		if len(fields) != 2 {
			continue // a torn last line
		}
		id := fields[0]
		n, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
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

// seen records that number n is name in the directory numbered parent
// (constant cost; the log is written only when the place changes).
func (t *inodes) seen(n, parent uint64, name string) {
	if n == rootNumber || name == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	pl := place{parent: parent, name: name}
	if t.places[n] == pl {
		return
	}
	t.places[n] = pl
	if t.file == nil || strings.ContainsAny(name, "\t\n") {
		return
	}
	t.writeLocked(fmt.Sprintf("@\t%d\t%d\t%s\n", n, parent, name))
}

// path returns the names from the root to number n, as last seen; false
// when the table does not know where n is.
func (t *inodes) path(n uint64) ([]string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var names []string
	for n != rootNumber {
		pl, ok := t.places[n]
		if !ok || len(names) > 4096 { // unknown, or a cycle
			return nil, false
		}
		names = append(names, pl.name)
		n = pl.parent
	}
	slices.Reverse(names)
	return names, true
}

// rootNumber is the dataset root's inode number (and FUSE node ID).
const rootNumber = 1

func (t *inodes) appendLocked(id string, n uint64) {
	if t.file == nil || strings.ContainsAny(id, "\t\n") {
		return // in memory only (a name with a tab or newline is never logged)
	}
	t.writeLocked(fmt.Sprintf("%s\t%d\n", id, n))
}

func (t *inodes) writeLocked(line string) {
	if _, err := t.file.WriteString(line); err != nil {
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

// allocated returns the first number not handed out yet.
func (t *inodes) allocated() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.next
}
