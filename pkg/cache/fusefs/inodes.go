package fusefs

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

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
//
// In memory a number costs about 35 bytes: a POSIX file's key is its
// device and inode (packed, see inoMap), and where a number was seen is
// kept as a hash (to log only a change); the names themselves are read
// back from the log when a takeover needs them, and dropped again once it
// has stopped asking.
type inodes struct {
	log klog.Logger

	mu      sync.Mutex
	byIno   inoMap            // guarded by mu; POSIX files
	byPath  map[string]uint64 // guarded by mu; files of a store without inodes, by path
	seenAt  []uint64          // guarded by mu; by number: placeHash of where it was last seen (0: not known)
	places  map[uint64]place  // guarded by mu; read from the log by path(), or nil
	fresh   map[uint64]place  // guarded by mu; seen while path() reads the log
	loading chan struct{}     // guarded by mu; closed when path()'s read ends
	used    time.Time         // guarded by mu; when path() last used places
	next    uint64            // guarded by mu; the root is 1
	file    *os.File          // guarded by mu; the log, or nil
}

// devIno is a POSIX file's identity.
type devIno struct{ dev, ino uint64 }

// place is where a number was last seen: its parent directory's number and
// its name there.
type place struct {
	parent uint64
	name   string
}

// placesTTL is how long the places read for a takeover stay in memory
// after their last use.
const placesTTL = time.Minute

// placeHash identifies a place in seenAt (never 0).
func placeHash(parent uint64, name string) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], parent)
	h.Write(b[:])
	h.Write([]byte(name))
	return h.Sum64() | 1
}

// openInodes loads the table from path ("" = in memory only).
func openInodes(path string, log klog.Logger) (*inodes, error) {
	t := &inodes{log: log, byIno: newInoMap(), byPath: map[string]uint64{}, next: 2}
	if path == "" {
		return t, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("inode table: %w", err)
	}
	err = scanLog(f, func(n uint64, id string) {
		if n == 0 {
			t.forgetID(id)
			return
		}
		t.setID(id, n)
		t.next = max(t.next, n+1)
	}, func(n uint64, pl place) {
		t.setSeenLocked(n, placeHash(pl.parent, pl.name))
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("inode table %s: %w", path, err)
	}
	t.file = f
	return t, nil
}

// scanLog reads the log from its start: "id\tnumber" allocates (number 0:
// forgets), "@\tnumber\tparent\tname" records where the number was seen.
// A torn last line is skipped.
func scanLog(f *os.File, alloc func(n uint64, id string), seen func(n uint64, pl place)) error {
	sc := bufio.NewScanner(io.NewSectionReader(f, 0, math.MaxInt64))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) == 4 && fields[0] == "@" {
			n, err1 := strconv.ParseUint(fields[1], 10, 64)
			parent, err2 := strconv.ParseUint(fields[2], 10, 64)
			if err1 == nil && err2 == nil && fields[3] != "" {
				seen(n, place{parent: parent, name: fields[3]})
			}
			continue
		}
		if len(fields) != 2 {
			continue
		}
		n, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		alloc(n, fields[0])
	}
	return sc.Err()
}

// id names the file at path p with attributes a in the log.
func inodeID(p string, a source.Attr) string {
	if a.Ino != 0 {
		return "i:" + strconv.FormatUint(a.Dev, 10) + ":" + strconv.FormatUint(a.Ino, 10)
	}
	return "p:" + p
}

// setID records number n for a logged id; t.mu is held (or t is not
// shared yet).
func (t *inodes) setID(id string, n uint64) {
	if k, ok := parseInoID(id); ok {
		t.byIno.set(k, n)
	} else if p, ok := strings.CutPrefix(id, "p:"); ok {
		t.byPath[p] = n
	}
}

func (t *inodes) forgetID(id string) {
	if k, ok := parseInoID(id); ok {
		t.byIno.delete(k)
	} else if p, ok := strings.CutPrefix(id, "p:"); ok {
		delete(t.byPath, p)
	}
}

// parseInoID parses "i:dev:ino".
func parseInoID(id string) (devIno, bool) {
	rest, ok := strings.CutPrefix(id, "i:")
	if !ok {
		return devIno{}, false
	}
	d, i, ok := strings.Cut(rest, ":")
	if !ok {
		return devIno{}, false
	}
	dev, err1 := strconv.ParseUint(d, 10, 64)
	ino, err2 := strconv.ParseUint(i, 10, 64)
	return devIno{dev, ino}, err1 == nil && err2 == nil
}

// number returns the inode number of the file, allocating one on first
// sight.
func (t *inodes) number(p string, a source.Attr) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a.Ino != 0 {
		k := devIno{a.Dev, a.Ino}
		if n, ok := t.byIno.get(k); ok {
			return n
		}
		n := t.allocLocked(inodeID(p, a))
		t.byIno.set(k, n)
		return n
	}
	if n, ok := t.byPath[p]; ok {
		return n
	}
	n := t.allocLocked(inodeID(p, a))
	t.byPath[p] = n
	return n
}

func (t *inodes) allocLocked(id string) uint64 {
	n := t.next
	t.next++
	t.appendLocked(id, n)
	return n
}

// rename moves the number of a path-named file (an object store's) from
// one path to the other; the old path gets a new number when it is used
// again.
func (t *inodes) rename(from, to string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.byPath[from]
	if !ok {
		return
	}
	delete(t.byPath, from)
	t.byPath[to] = n
	t.appendLocked("p:"+from, 0)
	t.appendLocked("p:"+to, n)
}

// setSeenLocked records place hash h for number n; t.mu is held (or t
// is not shared yet). A slice by number costs 8 bytes a number where a
// map cost about 24; numbers are dense (allocated in turn), and one far
// beyond those allocated (a damaged log) is not recorded.
func (t *inodes) setSeenLocked(n, h uint64) {
	if n >= uint64(len(t.seenAt)) {
		if n > t.next+1<<20 {
			return
		}
		if n >= uint64(cap(t.seenAt)) {
			// Grown by a 32nd (append's growth left up to a quarter
			// unused).
			grown := make([]uint64, len(t.seenAt), n+1+n/32)
			copy(grown, t.seenAt)
			t.seenAt = grown
		}
		old := len(t.seenAt)
		t.seenAt = t.seenAt[:n+1]
		clear(t.seenAt[old:]) // the numbers between: not known
	}
	t.seenAt[n] = h
}

// seen records that number n is name in the directory numbered parent
// (constant cost; the log is written only when the place changes).
func (t *inodes) seen(n, parent uint64, name string) {
	if n == rootNumber || name == "" {
		return
	}
	h := placeHash(parent, name)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fresh != nil {
		t.fresh[n] = place{parent: parent, name: name}
	}
	if t.places != nil {
		if time.Since(t.used) > placesTTL {
			t.places = nil // the takeover that read them is over
		} else {
			t.places[n] = place{parent: parent, name: name}
		}
	}
	if n < uint64(len(t.seenAt)) && t.seenAt[n] == h {
		return
	}
	t.setSeenLocked(n, h)
	if t.file == nil || strings.ContainsAny(name, "\t\n") {
		return
	}
	t.writeLocked(fmt.Sprintf("@\t%d\t%d\t%s\n", n, parent, name))
}

// path returns the names from the root to number n, as last seen; false
// when the table does not know where n is. The places are read from the
// log on first use and kept while it is asked.
func (t *inodes) path(n uint64) ([]string, bool) {
	t.mu.Lock()
	for t.places == nil || time.Since(t.used) > placesTTL {
		if ch := t.loading; ch != nil {
			t.mu.Unlock()
			<-ch
			t.mu.Lock()
			continue
		}
		f := t.file
		if f == nil {
			t.mu.Unlock()
			return nil, false
		}
		// Read outside the lock: lookups go on meanwhile, and what
		// they see is kept in fresh, newer than the log's.
		ch := make(chan struct{})
		t.loading, t.places, t.fresh = ch, nil, map[uint64]place{}
		t.mu.Unlock()
		read := map[uint64]place{}
		err := scanLog(f, func(uint64, string) {}, func(n uint64, pl place) { read[n] = pl })
		t.mu.Lock()
		if err == nil {
			for n, pl := range t.fresh {
				read[n] = pl
			}
			t.places, t.used = read, time.Now()
		}
		t.loading, t.fresh = nil, nil
		close(ch)
		if err != nil {
			t.mu.Unlock()
			t.log.Error(err, "Reading the inode table's places failed")
			return nil, false
		}
	}
	defer t.mu.Unlock()
	t.used = time.Now()
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
