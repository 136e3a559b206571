package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// fetcher owns the engine's reads from sources: the fetch slots, the
// read-ahead slots, the latency of fetches, and the goroutines that run
// them, which close stops and waits for. It knows nothing of items:
// callers hand it work.
//
// Fetches are bounded twice, each bound first come, first served: by count
// (slots: small whole-file fetches are latency bound, so many may be in
// flight) and by bytes in flight (large blocks are bandwidth bound, and
// their buffers are memory). Read-ahead takes at most half of each, so a
// reader's own block never queues behind speculation alone.
type fetcher struct {
	slots   *semaphore.Weighted // fetches in flight
	bytes   *semaphore.Weighted // bytes in flight
	raSlots *semaphore.Weighted // read-ahead: fetches
	raBytes *semaphore.Weighted // read-ahead: bytes
	// maxBytes caps one fetch's weight (a block larger than the budget
	// still runs, alone).
	maxBytes int64
	latency  LatencyHistogram

	ctx     context.Context // cancelled by close; every fetch runs under it
	stop    context.CancelFunc
	wg      sync.WaitGroup // every goroutine started by spawn
	running atomic.Int64   // goroutines started by spawn and not done (tests settle on 0)
}

func newFetcher(maxFetches int, maxBytes int64) *fetcher {
	ctx, stop := context.WithCancel(context.Background())
	return &fetcher{
		slots:    semaphore.NewWeighted(int64(maxFetches)),
		bytes:    semaphore.NewWeighted(maxBytes),
		raSlots:  semaphore.NewWeighted(int64(max(1, maxFetches/2))),
		raBytes:  semaphore.NewWeighted(max(1, maxBytes/2)),
		maxBytes: maxBytes,
		ctx:      ctx,
		stop:     stop,
	}
}

// close cancels every fetch and waits for their goroutines.
func (f *fetcher) close() {
	f.stop()
	f.wg.Wait()
}

// closed returns the error of a closed fetcher, or nil.
func (f *fetcher) closed() error { return f.ctx.Err() }

// spawn runs fn in a goroutine that close waits for. The caller checked
// closed first (fn still runs if close raced it, under a cancelled ctx).
func (f *fetcher) spawn(fn func(ctx context.Context)) {
	f.wg.Add(1)
	f.running.Add(1)
	go func() {
		defer f.wg.Done()
		defer f.running.Add(-1)
		fn(f.ctx)
	}()
}

// readAhead runs fn, which fetches size bytes, in a goroutine once it
// holds read-ahead room. The room is taken before fn's fetch exists: a
// reader who needs the block meanwhile fetches it at once, it never waits
// for speculation to get room.
func (f *fetcher) readAhead(size int64, fn func(ctx context.Context)) {
	w := min(f.weight(size), max(1, f.maxBytes/2))
	f.spawn(func(ctx context.Context) {
		// fn runs even when the fetcher closed first (under the
		// cancelled ctx), so its caller's bookkeeping is undone.
		if err := f.raSlots.Acquire(ctx, 1); err != nil {
			fn(ctx)
			return
		}
		defer f.raSlots.Release(1)
		if err := f.raBytes.Acquire(ctx, w); err != nil {
			fn(ctx)
			return
		}
		defer f.raBytes.Release(w)
		fn(ctx)
	})
}

// weight is what a fetch of size bytes counts against the byte budget.
func (f *fetcher) weight(size int64) int64 { return min(max(size, 1), f.maxBytes) }

// read reads buf at off of name from src under a fetch slot and room for
// buf, conditional on fingerprint where the source can make it so.
func (f *fetcher) read(src source.Source, name, fingerprint string, buf []byte, off int64, progress func(int)) (int, error) {
	w := f.weight(int64(len(buf)))
	if err := f.bytes.Acquire(f.ctx, w); err != nil {
		return 0, err
	}
	defer f.bytes.Release(w)
	if err := f.slots.Acquire(f.ctx, 1); err != nil {
		return 0, err
	}
	defer f.slots.Release(1)
	start := time.Now()
	defer func() { f.latency.Observe(time.Since(start)) }()
	if vs, ok := src.(source.Versioned); ok {
		return vs.ReadAtVersion(f.ctx, name, fingerprint, buf, off, progress)
	}
	return src.ReadAt(f.ctx, name, buf, off)
}

func acquire(ctx context.Context, sem chan struct{}) error {
	select {
	case sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fetchCall is one in-flight block fetch. buf is allocated up front and
// filled as the bytes arrive: a waiter for a range is served as soon as
// its bytes are there (a reader of the block's first MiB does not wait for
// all four), the others after done.
type fetchCall struct {
	done chan struct{}
	buf  []byte
	err  error  // set before done is closed
	name string // the name of the file the source is read under
	gen  uint64 // the item's generation (version) it fetches
	// asking: the fetch is asking the cache group (a peer's request
	// does not join it: see fetchTry).
	asking atomic.Bool

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

// readSource reads block b of version gen (fingerprint) from the source
// into buf and stores it.
func (it *Item) readSource(ref fileRef, b int64, gen uint64, fingerprint string, buf []byte, progress func(int)) error {
	n, err := it.env.fetch.read(ref.src, ref.name, fingerprint, buf, b*it.env.blockSize, progress)
	it.env.total.sourceBytes.Add(int64(n))
	it.ctr.sourceBytes.Add(int64(n))
	if err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
		return fmt.Errorf("read %s block %d from source: %w", ref.name, b, err)
	}
	it.env.total.misses.Add(1)
	it.ctr.misses.Add(1)
	if err := it.store(b, buf, gen); err != nil {
		it.env.total.readThrough.Add(1)
		if !errors.Is(err, errTierFull) && !errors.Is(err, errRemoved) {
			it.tier.writeFailed(it.env.log, err)
		}
	}
	return nil
}
