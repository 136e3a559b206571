package cache

import (
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Item is the cache of one source file.
type Item struct {
	// immutable after creation
	c                  *Cache
	tier               *tier
	dataset, name      string
	hash               string
	dataPath, metaPath string
	ctr                *counters

	atime atomic.Int64 // last use, UnixNano; the LRU order
	busy  atomic.Int32 // reads and fetches in progress; the cleaner skips busy items
	bytes atomic.Int64 // bytes of present blocks

	mu           sync.Mutex
	fingerprint  string               // guarded by mu
	size         int64                // guarded by mu
	gen          uint64               // guarded by mu; bumped by reset, so fetches of an old version never mark blocks
	present      []bool               // guarded by mu
	presentCount int64                // guarded by mu
	sums         []uint32             // guarded by mu; CRC-32C of each present block
	verified     []bool               // guarded by mu; checked against sums since this process started
	inflight     map[int64]*fetchCall // guarded by mu
	lastEnd      int64                // guarded by mu; end of the last read, for read-ahead
	raWindow     int                  // guarded by mu; blocks read ahead: 1, 2, 4... up to ReadAhead
	file         *os.File             // guarded by mu; the data file, opened on first store
	removed      bool                 // guarded by mu

	saveMu sync.Mutex // serialises index writes

	fdElem *list.Element // guarded by c.fdMu; in c.fdOrder while the data file is open
}

// fetchCall is one in-flight block fetch. buf is allocated up front and
// filled as the bytes arrive: a waiter for a range is served as soon as
// its bytes are there (a reader of the block's first MiB does not wait for
// all four), the others after done.
type fetchCall struct {
	done chan struct{}
	buf  []byte
	err  error

	mu     sync.Mutex
	filled int           // guarded by mu; buf[:filled] is final
	moved  chan struct{} // guarded by mu; closed (and replaced) when filled grows
}

func newFetchCall(size int64) *fetchCall {
	return &fetchCall{done: make(chan struct{}), buf: make([]byte, max(size, 0)), moved: make(chan struct{})}
}

// progress records that buf[:n] is final.
func (c *fetchCall) progress(n int) {
	c.mu.Lock()
	if n > c.filled {
		c.filled = n
		close(c.moved)
		c.moved = make(chan struct{})
	}
	c.mu.Unlock()
}

// wait returns once buf[:need] is final (nil) or the fetch failed first.
func (c *fetchCall) wait(ctx context.Context, need int) error {
	for {
		c.mu.Lock()
		filled, moved := c.filled, c.moved
		c.mu.Unlock()
		if filled >= need {
			return nil
		}
		select {
		case <-c.done:
			return c.err
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

var errTierFull = errors.New("cache tier full")

// resetLocked forgets every block and adopts the attributes a.
func (it *Item) resetLocked(a Attr) {
	nb := (a.Size + it.c.opts.BlockSize - 1) / it.c.opts.BlockSize
	it.tier.used.Add(-it.bytes.Swap(0))
	it.fingerprint, it.size = a.Fingerprint(), a.Size
	it.gen++
	it.present, it.verified, it.sums = make([]bool, nb), make([]bool, nb), make([]uint32, nb)
	it.presentCount = 0
	if it.inflight == nil {
		it.inflight = map[int64]*fetchCall{}
	}
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
	bs := it.c.opts.BlockSize
	return min(bs, it.size-b*bs)
}

func (it *Item) presentBytes() int64 { return it.bytes.Load() }

// readBlock copies block b from offset boff into dst.
func (it *Item) readBlock(ctx context.Context, src Source, b int64, dst []byte, boff int64) (int, error) {
	it.busy.Add(1)
	defer it.busy.Add(-1)
	if it.verify(b) {
		if n, err := it.pread(dst, b*it.c.opts.BlockSize+boff); err == nil && n == len(dst) {
			it.c.hits.Add(1)
			it.ctr.hits.Add(1)
			it.tier.served.Add(int64(n))
			return n, nil
		}
	}
	buf, err := it.fetchUpTo(ctx, src, b, int(boff)+len(dst))
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

func (it *Item) pread(dst []byte, off int64) (int, error) {
	for range 3 {
		f, err := it.openFile()
		if err != nil {
			return 0, err
		}
		n, err := f.ReadAt(dst, off)
		if errors.Is(err, os.ErrClosed) {
			continue // closed by the open-file bound meanwhile: reopen
		}
		return n, err
	}
	return 0, fmt.Errorf("cache file of %s closed under three reads in a row: %w", it.name, os.ErrClosed)
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
	if it.verified[b] {
		it.mu.Unlock()
		return true
	}
	gen, want := it.gen, it.sums[b]
	it.mu.Unlock()

	bl := it.blockLen(b)
	buf := make([]byte, bl)
	n, err := it.pread(buf, b*it.c.opts.BlockSize)
	ok := err == nil || errors.Is(err, io.EOF)
	ok = ok && int64(n) == bl && crc32.Checksum(buf, castagnoli) == want

	it.mu.Lock()
	defer it.mu.Unlock()
	if gen != it.gen || !it.present[b] {
		return false
	}
	if ok {
		it.verified[b] = true
		return true
	}
	it.present[b] = false
	it.presentCount--
	it.bytes.Add(-bl)
	it.tier.used.Add(-bl)
	it.c.corrupt.Add(1)
	return false
}

// fetch returns block b, fetching it from the source once however many
// readers ask at the same time. Each caller waits with its own context; the
// fetch itself runs under the cache's, so one impatient reader does not
// fail the others.
func (it *Item) fetch(ctx context.Context, src Source, b int64) ([]byte, error) {
	return it.fetchUpTo(ctx, src, b, math.MaxInt)
}

// fetchUpTo is fetch that returns as soon as the block's first need bytes
// are there; the caller reads only buf[:need] of what it returns.
func (it *Item) fetchUpTo(ctx context.Context, src Source, b int64, need int) ([]byte, error) {
	it.mu.Lock()
	if b < int64(len(it.present)) && it.present[b] && it.verified[b] {
		// Stored by a fetch (read-ahead, say) that finished after the
		// caller looked: read it back rather than fetch it twice.
		it.mu.Unlock()
		buf := make([]byte, it.blockLen(b))
		if n, err := it.pread(buf, b*it.c.opts.BlockSize); n == len(buf) && (err == nil || errors.Is(err, io.EOF)) {
			it.c.hits.Add(1)
			it.ctr.hits.Add(1)
			return buf, nil
		}
		it.mu.Lock()
	}
	call := it.inflight[b]
	if call == nil {
		if err := it.c.ctx.Err(); err != nil {
			it.mu.Unlock()
			return nil, fmt.Errorf("cache closed: %w", err)
		}
		call = newFetchCall(it.blockLenLocked(b))
		it.inflight[b] = call
		gen, fp := it.gen, it.fingerprint
		it.busy.Add(1)
		it.c.wg.Add(1) // Close waits for every fetch
		go it.runFetch(src, b, gen, fp, call)
	}
	it.mu.Unlock()
	if err := call.wait(ctx, need); err != nil {
		return nil, err
	}
	return call.buf, nil
}

func (it *Item) runFetch(src Source, b int64, gen uint64, fingerprint string, call *fetchCall) {
	defer it.c.wg.Done()
	defer it.busy.Add(-1)
	defer func() {
		it.mu.Lock()
		if it.inflight[b] == call {
			delete(it.inflight, b)
		}
		it.mu.Unlock()
		close(call.done)
	}()
	c := it.c
	if err := acquire(c.ctx, c.sem); err != nil {
		call.err = err
		return
	}
	defer func() { <-c.sem }()
	bl := int64(len(call.buf))
	if bl <= 0 {
		call.err = io.EOF
		return
	}
	buf := call.buf
	start := time.Now()
	var n int
	var err error
	if vs, ok := src.(VersionedSource); ok {
		n, err = vs.ReadAtVersion(c.ctx, it.name, fingerprint, buf, b*c.opts.BlockSize, call.progress)
	} else {
		n, err = src.ReadAt(c.ctx, it.name, buf, b*c.opts.BlockSize)
	}
	c.latency.observe(time.Since(start))
	c.sourceBytes.Add(int64(n))
	it.ctr.sourceBytes.Add(int64(n))
	if err != nil && !(errors.Is(err, io.EOF) && int64(n) == bl) {
		call.err = fmt.Errorf("read %s block %d from source: %w", it.name, b, err)
		return
	}
	c.misses.Add(1)
	it.ctr.misses.Add(1)
	if err := it.store(b, buf, gen); err != nil {
		c.readThrough.Add(1)
		if !errors.Is(err, errTierFull) {
			it.c.logOnce(it.tier.Name, err)
		}
	}
}

// store writes block b to the tier and marks it present.
func (it *Item) store(b int64, buf []byte, gen uint64) error {
	bl := int64(len(buf))
	t := it.tier
	if t.used.Load()+bl > t.Quota {
		it.c.kickCleaner()
		return errTierFull
	}
	var err error
	for range 3 {
		var f *os.File
		if f, err = it.openFile(); err != nil {
			return err
		}
		if _, err = f.WriteAt(buf, b*it.c.opts.BlockSize); !errors.Is(err, os.ErrClosed) {
			break // closed by the open-file bound meanwhile: reopen
		}
	}
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			it.c.kickCleaner()
		}
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
	it.bytes.Add(bl)
	t.used.Add(bl)
	it.mu.Unlock()
	if t.used.Load() > int64(float64(t.Quota)*it.c.opts.LowWater) {
		it.c.kickCleaner()
	}
	return it.save()
}

// openFile returns the item's data file, opening it if needed; the cache
// bounds how many stay open.
func (it *Item) openFile() (*os.File, error) {
	f, err := it.openFileLocked()
	if err == nil {
		it.c.noteOpen(it)
	}
	return f, err
}

func (it *Item) openFileLocked() (*os.File, error) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.removed {
		return nil, errors.New("cache item evicted")
	}
	if it.file != nil {
		return it.file, nil
	}
	if err := os.MkdirAll(filepath.Dir(it.dataPath), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(it.dataPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	// A sparse file of the full size: on the tmpfs memory tier
	// (huge=within_size) pages inside i_size may be huge pages, which
	// passthrough reads at page-cache speed.
	if err := f.Truncate(it.size); err != nil {
		f.Close()
		return nil, err
	}
	it.file = f
	return f, nil
}

func (it *Item) closeFile() error {
	it.c.forgetOpen(it)
	it.mu.Lock()
	f := it.file
	it.file = nil
	it.mu.Unlock()
	if f != nil {
		return f.Close()
	}
	return nil
}

// truncateFile drops the data of a reset item and sizes the file for the
// new version.
func (it *Item) truncateFile() error {
	it.mu.Lock()
	size := it.size
	it.mu.Unlock()
	// By path: an open descriptor may be closed by the open-file bound.
	if err := os.Truncate(it.dataPath, 0); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return os.Truncate(it.dataPath, size)
}

// remove deletes the item's files; the caller has taken it out of the map.
func (it *Item) remove() {
	it.c.forgetOpen(it)
	it.mu.Lock()
	it.removed = true
	f := it.file
	it.file = nil
	it.mu.Unlock()
	it.tier.used.Add(-it.bytes.Swap(0))
	if f != nil {
		f.Close()
	}
	it.saveMu.Lock()
	os.Remove(it.metaPath)
	os.Remove(it.dataPath)
	it.saveMu.Unlock()
}

// noteRead starts read-ahead when reads are sequential.
func (it *Item) noteRead(src Source, off, end int64) {
	bs := it.c.opts.BlockSize
	it.mu.Lock()
	seq := off == it.lastEnd
	it.lastEnd = end
	var todo []int64
	if seq {
		// The window grows each time the reader enters a new block, so
		// a reader of a short range does not pull a long one from the
		// source.
		if (end-1)/bs != (off-1)/bs || it.raWindow == 0 {
			it.raWindow = min(max(1, it.raWindow*2), it.c.opts.ReadAhead)
		}
		// The window counts blocks from the reader's position, present
		// or not: the reader, not the fetches, moves it forward.
		first := (end + bs - 1) / bs
		for b := first; b < int64(len(it.present)) && b < first+int64(it.raWindow); b++ {
			if !it.present[b] && it.inflight[b] == nil {
				todo = append(todo, b)
			}
		}
	} else {
		it.raWindow = 0
	}
	it.mu.Unlock()
	for _, b := range todo {
		// The read-ahead slot is taken before the fetch exists: a reader
		// who needs the block meanwhile fetches it at once, it never
		// waits for a speculative fetch to get a slot.
		go func() {
			if err := acquire(it.c.ctx, it.c.raSem); err != nil {
				return
			}
			defer func() { <-it.c.raSem }()
			_, _ = it.fetch(it.c.ctx, src, b)
		}()
	}
}

// itemMeta is an item's persisted index.
type itemMeta struct {
	Dataset     string   `json:"dataset"`
	Name        string   `json:"name"`
	Fingerprint string   `json:"fingerprint"`
	Size        int64    `json:"size"`
	BlockSize   int64    `json:"blockSize"`
	Present     []bool   `json:"present"`
	Sums        []uint32 `json:"sums"`
	Atime       int64    `json:"atime"`
}

// save writes the index (temp file and rename). A crash loses at most
// blocks fetched since the last save; a block marked present whose data did
// not reach the disk fails its checksum and is fetched again.
func (it *Item) save() error {
	it.saveMu.Lock()
	defer it.saveMu.Unlock()
	it.mu.Lock()
	if it.removed {
		it.mu.Unlock()
		return nil
	}
	m := itemMeta{Dataset: it.dataset, Name: it.name, Fingerprint: it.fingerprint, Size: it.size,
		BlockSize: it.c.opts.BlockSize, Present: append([]bool(nil), it.present...), Sums: append([]uint32(nil), it.sums...), Atime: it.atime.Load()}
	it.mu.Unlock()
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := it.metaPath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, it.metaPath)
}

func loadItem(c *Cache, t *tier, metaPath string) (*Item, error) {
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return nil, err
	}
	var m itemMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	nb := (m.Size + c.opts.BlockSize - 1) / c.opts.BlockSize
	if m.BlockSize != c.opts.BlockSize || int64(len(m.Present)) != nb || len(m.Sums) != len(m.Present) {
		return nil, fmt.Errorf("index does not match block size %d", c.opts.BlockSize)
	}
	h := itemHash(m.Dataset, m.Name)
	it := &Item{c: c, tier: t, dataset: m.Dataset, name: m.Name, hash: h,
		dataPath: filepath.Join(t.Dir, h[:2], h+".data"), metaPath: filepath.Join(t.Dir, h[:2], h+".meta"),
		fingerprint: m.Fingerprint, size: m.Size, gen: 1, present: m.Present, sums: m.Sums,
		verified: make([]bool, nb), inflight: map[int64]*fetchCall{}}
	if it.metaPath != metaPath {
		return nil, fmt.Errorf("index at %s names another file", metaPath)
	}
	for bl, p := range m.Present {
		if p {
			it.presentCount++
			it.bytes.Add(min(c.opts.BlockSize, m.Size-int64(bl)*c.opts.BlockSize))
		}
	}
	it.atime.Store(m.Atime)
	if m.Atime == 0 {
		it.atime.Store(time.Now().UnixNano())
	}
	return it, nil
}
