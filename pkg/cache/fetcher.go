package cache

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// fetcher owns the engine's reads from sources: the fetch slots (one
// semaphore bounds every source read), the read-ahead slots (a quarter of
// them, so readers' own blocks never queue behind speculation), the
// latency of fetches, and the goroutines that run them, which close stops
// and waits for. It knows nothing of items: callers hand it work.
type fetcher struct {
	sem     chan struct{} // fetch slots
	raSem   chan struct{} // read-ahead slots
	latency histogram

	ctx     context.Context // cancelled by close; every fetch runs under it
	stop    context.CancelFunc
	wg      sync.WaitGroup // every goroutine started by spawn
	running atomic.Int64   // goroutines started by spawn and not done (tests settle on 0)
}

func newFetcher(maxFetches int) *fetcher {
	ctx, stop := context.WithCancel(context.Background())
	return &fetcher{
		sem:   make(chan struct{}, maxFetches),
		raSem: make(chan struct{}, max(1, maxFetches/4)),
		ctx:   ctx,
		stop:  stop,
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

// readAhead runs fn in a goroutine once it holds a read-ahead slot. The
// slot is taken before fn's fetch exists: a reader who needs the block
// meanwhile fetches it at once, it never waits for speculation to get a
// slot.
func (f *fetcher) readAhead(fn func(ctx context.Context)) {
	f.spawn(func(ctx context.Context) {
		if err := acquire(ctx, f.raSem); err != nil {
			return
		}
		defer func() { <-f.raSem }()
		fn(ctx)
	})
}

// read reads buf at off of name from src under a fetch slot, conditional
// on fingerprint where the source can make it so.
func (f *fetcher) read(src source.Source, name, fingerprint string, buf []byte, off int64, progress func(int)) (int, error) {
	if err := acquire(f.ctx, f.sem); err != nil {
		return 0, err
	}
	defer func() { <-f.sem }()
	start := time.Now()
	defer func() { f.latency.observe(time.Since(start)) }()
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
