// Package storemodel models a remote object store in front of a loopback S3
// server: a TCP proxy that delays every chunk of every connection by a
// latency in each direction and caps each direction at a bandwidth shared
// by all connections (netem is not in every kernel; this needs none).
package storemodel

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a running model of a remote store.
type Proxy struct {
	Addr      string
	latency   time.Duration
	down, up  *bucket
	lis       net.Listener
	target    string
	BytesDown atomic.Int64 // store -> readers
	BytesUp   atomic.Int64
	wg        sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]bool
}

// bucket is a shared bandwidth limit: take reserves n bytes of the line.
type bucket struct {
	mu   sync.Mutex
	rate float64 // bytes per second; 0 = unlimited
	next time.Time
}

func (b *bucket) take(n int) {
	if b.rate <= 0 {
		return
	}
	b.mu.Lock()
	now := time.Now()
	if b.next.Before(now) {
		b.next = now
	}
	start := b.next
	b.next = b.next.Add(time.Duration(float64(n) / b.rate * float64(time.Second)))
	b.mu.Unlock()
	if d := time.Until(start); d > 0 {
		time.Sleep(d)
	}
}

// Start listens on a loopback port and forwards to target, adding latency
// each way within bitsPerSecond per direction (0: unlimited).
func Start(target string, latency time.Duration, bitsPerSecond int64) (*Proxy, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return Serve(lis, target, latency, bitsPerSecond), nil
}

// Serve is Start on a listener of the caller's (one in another network
// namespace); Close closes it.
func Serve(lis net.Listener, target string, latency time.Duration, bitsPerSecond int64) *Proxy {
	rate := float64(bitsPerSecond) / 8
	p := &Proxy{Addr: lis.Addr().String(), latency: latency, lis: lis, target: target,
		down: &bucket{rate: rate}, up: &bucket{rate: rate}, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	return p
}

// serve accepts connections and connects each to the target in a
// goroutine of its own: a target slow to accept must not hold up the
// accept loop (and with it every client's connect).
func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			p.mu.Lock()
			p.conns[c], p.conns[s] = true, true
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(s, c, p.up, &p.BytesUp)
			go p.pipe(c, s, p.down, &p.BytesDown)
		}()
	}
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk delivered latency after it was read,
// within the direction's bandwidth.
func (p *Proxy) pipe(dst, src net.Conn, lim *bucket, count *atomic.Int64) {
	defer p.wg.Done()
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				q <- chunk{b[:n], time.Now().Add(p.latency)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		lim.take(len(c.b))
		if _, err := dst.Write(c.b); err != nil {
			break
		}
		count.Add(int64(len(c.b)))
	}
	// One side is done: close both so the other direction ends too.
	src.Close()
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	for range q { // drain the reader
	}
	dst.Close()
	p.mu.Lock()
	delete(p.conns, src)
	delete(p.conns, dst)
	p.mu.Unlock()
}

// Close stops accepting and closes every connection.
func (p *Proxy) Close() {
	p.lis.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
