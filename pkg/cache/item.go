package cache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errTierFull = errors.New("cache tier full")

// itemEnv is what every item of a cache shares; immutable after New. An
// item reaches the rest of the engine only through it.
type itemEnv struct {
	blockSize int64
	lowWater  float64
	readAhead int
	fetch     *fetcher
	files     *openFiles
	kick      func()      // wakes the cleaner
	markDirty func(*Item) // the item's index is behind: the cleaner saves it
	total     *counters   // node-wide counters
	log       klog.Logger
	borrowed  *borrowed // blocks other members of a cache group sent (peers.go)
}

// Item is the cache of one source file.
type Item struct {
	// immutable after creation
	env         *itemEnv
	tier        *tier
	dataset, id string // the key: the dataset's key and the file's identity (itemID)
	name        string // the path the file was first read at (logs, prefix evictions)
	hash        string
	ctr         *counters // the dataset's; set before the item is shared

	atime atomic.Int64 // last use, UnixNano; the LRU order
	// INVARIANT: bytes is the sum of blockLen over present blocks.
	bytes atomic.Int64

	mu          sync.Mutex
	fingerprint string // guarded by mu
	size        int64  // guarded by mu
	gen         uint64 // guarded by mu; bumped by reset, so fetches of an old version never mark blocks
	// INVARIANT: present, verified and sums have one entry per block of
	// size; a present block has its checksum in sums; a verified block is
	// present; presentCount counts the present blocks.
	present      []bool               // guarded by mu
	presentCount int64                // guarded by mu
	sums         []uint32             // guarded by mu; CRC-32C of each present block
	verified     []bool               // guarded by mu; checked against sums since this process started
	inflight     map[int64]*fetchCall // guarded by mu; nil when empty (a map keeps its buckets: hundreds of bytes per cached file)
	raQueued     map[int64]bool       // guarded by mu; read-ahead waiting for room, not yet in inflight; nil when empty
	lastEnd      int64                // guarded by mu; end of the last read, for read-ahead
	seqStart     int64                // guarded by mu; where the sequential run that reached lastEnd began
	raWindow     int                  // guarded by mu; blocks read ahead: 1, 2, 4... up to readAhead
	unsaved      int                  // guarded by mu; blocks stored since the index was written
	file         *os.File             // guarded by mu; the open data file, or nil
	// INVARIANT: an item's data and index files are named by its own
	// file generation (<hash>-<gen>.data/.meta): another item of the
	// same file (after an eviction) or another version (after a reset)
	// has other names, and only the item that owns a name removes it.
	fileGen uint64 // guarded by mu; names the files (see filePaths); 0: an index of an older version, <hash>.meta
	removed bool   // guarded by mu; evicted: nothing may be stored or saved
	opened  bool   // guarded by mu; the data file of this generation was opened before

	saveMu sync.Mutex    // serialises index writes
	busy   atomic.Int32  // reads and fetches in progress; the cleaner skips busy items
	fdElem *list.Element // guarded by env.files.mu; in the open-file order while file is set
	// (The order packs an Item in Go's 320-byte size class, apart from the
	// FUSE nodes': TestItemsKeepTheirSizeClass says why.)
}

// itemKey is the map key of a dataset's file.
func itemKey(dataset, id string) string { return dataset + "\x00" + id }

// itemID is what a cached file is known by: a POSIX file by its device
// and inode (a renamed file keeps its blocks, the names of a hard-linked
// file share them), a file of a store without inodes by its path.
func itemID(name string, a source.Attr) string {
	if a.Ino != 0 {
		return "inode:" + strconv.FormatUint(a.Dev, 10) + ":" + strconv.FormatUint(a.Ino, 10)
	}
	return name
}

// fileRef is where a read of an item goes: the source and the file's
// current path (an item keyed by inode has no path of its own).
type fileRef struct {
	src  source.Source
	name string
	// fromPeer: a block a group member asked this one, its owner, for:
	// read from the source, never asked of the group in turn.
	fromPeer bool
	// replica: a hot block a member asked this one, its replica, for:
	// asked of the group (its owner) and kept, not borrowed.
	replica bool
}

func itemHash(dataset, id string) string {
	sum := sha256.Sum256([]byte(itemKey(dataset, id)))
	return hex.EncodeToString(sum[:16])
}

func newItem(env *itemEnv, t *tier, dataset, id, name string, ctr *counters) *Item {
	return &Item{env: env, tier: t, dataset: dataset, id: id, name: name, hash: itemHash(dataset, id), ctr: ctr, fileGen: newFileGen()}
}

// retired is what a reset leaves behind: the previous version's open data
// file and file names, for the caller to close and remove outside the
// lock. A passthrough descriptor still open on the old data file keeps
// reading the old version whole, never a mix.
type retired struct {
	file               *os.File
	dataPath, metaPath string
}

// dropRetired closes and removes what a reset retired.
func (it *Item) dropRetired(r retired) {
	if r.file != nil {
		it.env.files.forget(it)
		r.file.Close()
	}
	if r.dataPath != "" {
		it.saveMu.Lock() // a save of the old generation is not renamed in after this
		os.Remove(r.metaPath)
		os.Remove(r.dataPath)
		it.saveMu.Unlock()
	}
}

// resetLocked forgets every block and adopts the attributes a. An item
// that held blocks moves to a new file generation and returns the old one
// to drop.
func (it *Item) resetLocked(a source.Attr) retired {
	var old retired
	if it.fingerprint != "" {
		old = retired{file: it.file}
		old.dataPath, old.metaPath = it.pathsLocked()
		it.file, it.opened = nil, false
		it.fileGen = newFileGen()
	}
	nb := (a.Size + it.env.blockSize - 1) / it.env.blockSize
	it.addBytesLocked(-it.bytes.Load())
	it.fingerprint, it.size = a.Fingerprint(), a.Size
	it.gen++
	it.present, it.verified, it.sums = make([]bool, nb), make([]bool, nb), make([]uint32, nb)
	it.presentCount = 0
	return old
}

func (it *Item) blocks() int64 {
	it.mu.Lock()
	defer it.mu.Unlock()
	return int64(len(it.present))
}

func (it *Item) blockLen(b int64) int64 {
	it.mu.Lock()
	defer it.mu.Unlock()
	return it.blockLenLocked(b)
}

func (it *Item) blockLenLocked(b int64) int64 {
	bs := it.env.blockSize
	return min(bs, it.size-b*bs)
}

func (it *Item) presentBytes() int64 { return it.bytes.Load() }

// addBytesLocked counts n more bytes present in the item, its tier and its
// dataset's share of the tier; it.mu is held (or the item is not shared
// yet).
func (it *Item) addBytesLocked(n int64) {
	it.bytes.Add(n)
	it.tier.used.Add(n)
	it.ctr.tierBytes[it.tier.index].Add(n)
}

// readAt reads p at off (within the file's size, off < end) block by
// block and starts read-ahead when reads are sequential.
func (it *Item) readAt(ctx context.Context, ref fileRef, p []byte, off, end int64) (int, error) {
	bs := it.env.blockSize
	// Read-ahead starts before this read waits for its own block: the
	// next blocks are fetched while this one arrives.
	it.noteRead(ref, off, end)
	n := 0
	for pos := off; pos < end; {
		b := pos / bs
		boff := pos - b*bs
		want := min(bs-boff, end-pos)
		got, err := it.readBlock(ctx, ref, b, p[n:n+int(want)], boff)
		n += got
		if err != nil {
			return n, err
		}
		pos += want
	}
	return n, nil
}

// readBlock copies block b from offset boff into dst.
func (it *Item) readBlock(ctx context.Context, ref fileRef, b int64, dst []byte, boff int64) (int, error) {
	it.busy.Add(1)
	defer it.busy.Add(-1)
	if it.verify(b) {
		if n, err := it.pread(dst, b*it.env.blockSize+boff); err == nil && n == len(dst) {
			it.env.total.hits.Add(1)
			it.ctr.hits.Add(1)
			it.tier.served.Add(int64(n))
			return n, nil
		}
	}
	buf, err := it.fetchUpTo(ctx, ref, b, int(boff)+len(dst))
	if err != nil {
		return 0, err
	}
	if int(boff) >= len(buf) {
		return 0, io.EOF
	}
	n := copy(dst, buf[boff:min(int(boff)+len(dst), len(buf))])
	if n < len(dst) {
		return n, io.ErrUnexpectedEOF
	}
	return n, nil
}

// verify reports whether block b is present and intact. A block not yet
// checked in this process is read and compared with its checksum; a
// corrupt block is dropped so the next read fetches it again.
func (it *Item) verify(b int64) bool {
	it.mu.Lock()
	if b >= int64(len(it.present)) || !it.present[b] {
		it.mu.Unlock()
		return false
	}
	if it.file == nil {
		// Open first: a data file that is not the one the blocks were
		// verified in loses its verification as it opens.
		it.mu.Unlock()
		if _, err := it.openFile(0); err != nil {
			return false
		}
		it.mu.Lock()
		if b >= int64(len(it.present)) || !it.present[b] {
			it.mu.Unlock()
			return false
		}
	}
	if it.verified[b] {
		it.mu.Unlock()
		return true
	}
	gen, want := it.gen, it.sums[b]
	it.mu.Unlock()

	bl := it.blockLen(b)
	buf := make([]byte, bl)
	n, err := it.pread(buf, b*it.env.blockSize)
	ok := err == nil || errors.Is(err, io.EOF)
	ok = ok && int64(n) == bl && crc32.Checksum(buf, castagnoli) == want

	it.mu.Lock()
	defer it.mu.Unlock()
	if gen != it.gen || !it.present[b] || it.removed {
		// (An evicted or sleeping item's reads fail: not corruption,
		// and its bytes are no longer its own to uncount.)
		return false
	}
	if ok {
		it.verified[b] = true
		return true
	}
	it.present[b] = false
	it.presentCount--
	it.addBytesLocked(-bl)
	it.env.total.corrupt.Add(1)
	return false
}

// fetch returns block b, fetching it from the source once however many
// readers ask at the same time. Each caller waits with its own context; the
// fetch itself runs under the fetcher's, so one impatient reader does not
// fail the others.
func (it *Item) fetch(ctx context.Context, ref fileRef, b int64) ([]byte, error) {
	return it.fetchUpTo(ctx, ref, b, math.MaxInt)
}

// fetchUpTo is fetch that returns as soon as the block's first need bytes
// are there; the caller reads only buf[:need] of what it returns.
func (it *Item) fetchUpTo(ctx context.Context, ref fileRef, b int64, need int) ([]byte, error) {
	return it.fetchTry(ctx, ref, b, need, true)
}

// fetchTry is fetchUpTo; retry allows one more attempt when the fetch
// joined ran under another name.
func (it *Item) fetchTry(ctx context.Context, ref fileRef, b int64, need int, retry bool) ([]byte, error) {
	it.mu.Lock()
	if b < int64(len(it.present)) && it.present[b] && it.verified[b] {
		// Stored by a fetch (read-ahead, say) that finished after the
		// caller looked: read it back rather than fetch it twice.
		it.mu.Unlock()
		buf := make([]byte, it.blockLen(b))
		if n, err := it.pread(buf, b*it.env.blockSize); n == len(buf) && (err == nil || errors.Is(err, io.EOF)) {
			it.env.total.hits.Add(1)
			it.ctr.hits.Add(1)
			return buf, nil
		}
		it.mu.Lock()
	}
	call := it.inflight[b]
	if call != nil && ref.fromPeer && call.asking.Load() {
		// A member asking this one must not wait on a local fetch
		// that is itself asking the group (their rings disagree
		// during a join, or a breaker sent each to the other): each
		// would wait out the other's deadline. It reads the source.
		gen, fp, buf := it.gen, it.fingerprint, make([]byte, it.blockLenLocked(b))
		it.mu.Unlock()
		if err := it.readSource(ref, b, gen, fp, buf, func(int) {}); err != nil {
			return nil, err
		}
		return buf, nil
	}
	if call != nil && call.gen != it.gen {
		// A fetch of the version before a reset: its bytes are not
		// this version's. A fetch of its own replaces it in the map
		// (the old one finishes for its own readers and stores
		// nothing).
		call = nil
	}
	if call == nil {
		if err := it.env.fetch.closed(); err != nil {
			it.mu.Unlock()
			return nil, fmt.Errorf("cache closed: %w", err)
		}
		call = newFetchCall(it.blockLenLocked(b))
		call.name, call.gen = ref.name, it.gen
		if it.inflight == nil {
			it.inflight = map[int64]*fetchCall{}
		}
		it.inflight[b] = call
		gen, fp := it.gen, it.fingerprint
		it.busy.Add(1)
		it.env.fetch.spawn(func(context.Context) { it.runFetch(ref, b, gen, fp, call) })
	}
	it.mu.Unlock()
	err := call.wait(ctx, need)
	if err != nil && retry && call.name != ref.name && ctx.Err() == nil {
		// The fetch this reader joined ran under another name of the
		// file (a hard link, or a name since renamed): its failure is
		// not this reader's. Fetch once more, under the reader's name.
		<-call.done
		return it.fetchTry(ctx, ref, b, need, false)
	}
	if err != nil {
		return nil, err
	}
	return call.buf, nil
}

// runFetch reads block b of version gen from the source into call and
// stores it.
func (it *Item) runFetch(ref fileRef, b int64, gen uint64, fingerprint string, call *fetchCall) {
	defer it.busy.Add(-1)
	defer func() {
		it.mu.Lock()
		if it.inflight[b] == call {
			delete(it.inflight, b)
			if len(it.inflight) == 0 {
				it.inflight = nil
			}
		}
		it.mu.Unlock()
		close(call.done)
	}()
	bl := int64(len(call.buf))
	if bl <= 0 {
		call.err = io.EOF
		return
	}
	if it.fromGroup(ref, b, gen, fingerprint, call) {
		return
	}
	call.err = it.readSource(ref, b, gen, fingerprint, call.buf, call.progress)
}

// store writes block b to the tier and marks it present.
func (it *Item) store(b int64, buf []byte, gen uint64) error {
	bl := int64(len(buf))
	t := it.tier
	if t.used.Load()+bl > t.Quota {
		it.env.kick()
		return errTierFull
	}
	if err := it.pwrite(gen, buf, b*it.env.blockSize); err != nil {
		return err
	}
	sum := crc32.Checksum(buf, castagnoli)
	it.mu.Lock()
	if gen != it.gen || it.removed || it.present[b] {
		it.mu.Unlock()
		return nil
	}
	it.present[b], it.verified[b], it.sums[b] = true, true, sum
	it.presentCount++
	it.addBytesLocked(bl)
	// The index is written every saveEvery blocks and when the file is
	// complete, not after every block (a large file's index is rewritten
	// whole each time); the cleaner writes the rest within its interval,
	// and Close all. A crash forgets at most the blocks since: they are
	// fetched again.
	it.unsaved++
	flush := it.unsaved >= saveEvery || it.presentCount == int64(len(it.present))
	it.mu.Unlock()
	if t.used.Load() > int64(float64(t.Quota)*it.env.lowWater) {
		it.env.kick()
	}
	if !flush {
		it.env.markDirty(it)
		return nil
	}
	return it.save()
}

// saveEvery is how many stored blocks an item's index may lag behind.
const saveEvery = 64

// noteRead starts read-ahead when reads are sequential.
func (it *Item) noteRead(ref fileRef, off, end int64) {
	bs := it.env.blockSize
	it.mu.Lock()
	// Sequential within a block's slack: the kernel's read-ahead sends
	// several READs at once, and they arrive in any order.
	seq := it.lastEnd > 0 && off >= it.lastEnd-bs && off <= it.lastEnd+bs
	if seq {
		it.lastEnd = max(it.lastEnd, end)
	} else {
		it.lastEnd, it.seqStart = end, off
		seq = off == 0 && it.raWindow == 0 // the first read of a file
	}
	var todo []int64
	if seq {
		// The window grows each time the reader enters a new quarter
		// of a block, up to half of readAhead blocks, and beyond that
		// to a block per block read in this run: a lone reader has
		// enough in flight to fill the link within its first blocks
		// (growing by a block per block, one reader of a 128 MiB object
		// read at 0.80-0.86 of the store model's bandwidth; so, 0.90),
		// and one that stops early pulled at most as much again as it
		// read, or half the window, from the source.
		q := max(bs/4, 1)
		if (end-1)/q != (off-1)/q || it.raWindow == 0 {
			limit := min(it.env.readAhead, max(it.env.readAhead/2, int((it.lastEnd-it.seqStart)/bs)))
			it.raWindow = min(max(1, it.raWindow*2), limit)
		}
		// The window counts blocks from the reader's position, present
		// or not: the reader, not the fetches, moves it forward.
		first := (end + bs - 1) / bs
		for b := first; b < int64(len(it.present)) && b < first+int64(it.raWindow); b++ {
			if !it.present[b] && it.inflight[b] == nil && !it.raQueued[b] {
				todo = append(todo, b)
				if it.raQueued == nil {
					it.raQueued = map[int64]bool{}
				}
				it.raQueued[b] = true
			}
		}
	} else {
		it.raWindow = 0
	}
	it.mu.Unlock()
	for _, b := range todo {
		it.env.fetch.readAhead(it.blockLen(b), func(ctx context.Context) {
			it.mu.Lock()
			delete(it.raQueued, b)
			if len(it.raQueued) == 0 {
				it.raQueued = nil
			}
			it.mu.Unlock()
			if ctx.Err() == nil {
				_, _ = it.fetch(ctx, ref, b)
			}
		})
	}
}
