package group

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The peer protocol: a member asks a block's owner over HTTPS with mutual
// TLS (every member holds a certificate of the group's CA; a process
// without one gets no data), and the owner answers from its cache or
// fetches the block from the source once, whoever else asks meanwhile.
//
//	GET /v1/blocks/<dataset ID>/<index>?q=<sealed name and version>[&cached=1|&replica=1]
//
// (cached=1: a hand-off, answered from the cache only; replica=1: a hot
// block asked of its replica, hot.go.)
//
// The dataset is named by a public ID of its key in the group
// (DatasetKey, derived from its source and credentials, which never
// travel); the file's path and version ride sealed with that key (the
// owner reads the file from its own source, with its own credentials),
// and the block comes back sealed (seal.go): a member without the
// credentials learns nothing from a request it is sent and cannot read a
// block it is answered. The seal also checks the block end to end.
//
//	200: the sealed block; 403: the request does not open with the
//	owner's key; 404: the owner does not serve that dataset, or the file
//	is gone; 409: the owner sees another version of the file; 400: no
//	such block; 503: the owner cannot serve it now.

// Server answers peers' block requests from the datasets it serves.
type Server struct {
	// Blocks and Bytes count the blocks served to peers and their bytes;
	// Replicas the blocks served as a hot block's replica (hot.go).
	Blocks, Bytes, Replicas atomic.Int64
	// HotAsks is how many asks of a block within HotWindow make it hot
	// (NewServer: DefaultHotAsks; 0: no block is ever hot).
	HotAsks int
	heat    heat
	// asked is when a peer last asked for a block (unix nanoseconds);
	// inflight counts the block requests being answered.
	asked, inflight atomic.Int64

	mu       sync.RWMutex
	datasets map[string]served // guarded by mu; by dataset ID
}

type served struct {
	src  BlockSource
	seal *sealer
}

// BlockSource serves one dataset's blocks: from the cache, or fetched
// from the source once however many ask at the same time. ErrVersion: the
// file is not at that version (any more).
type BlockSource interface {
	Block(ctx context.Context, name, object string, index int64) ([]byte, error)
}

// CachedSource is a BlockSource that can answer from what it holds only
// (fs.ErrNotExist when it does not hold the block): a block's previous
// owner answers its new owner so during a hand-off.
type CachedSource interface {
	BlockSource
	CachedBlock(ctx context.Context, name, object string, index int64) ([]byte, error)
}

// ErrVersion is a BlockSource's answer for a block of another version.
var ErrVersion = errors.New("cache group: the file is at another version")

// LastAsked is when a peer last asked for a block (zero: never).
func (s *Server) LastAsked() time.Time {
	if n := s.asked.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// ReplicaSource is a BlockSource that can keep a copy of a block another
// member owns: a hot block's replica answers from its cache, or asks the
// owner once and keeps what it sends.
type ReplicaSource interface {
	BlockSource
	ReplicaBlock(ctx context.Context, name, object string, index int64) ([]byte, error)
}

// NewServer returns a server of no datasets.
func NewServer() *Server { return &Server{datasets: map[string]served{}, HotAsks: DefaultHotAsks} }

// Serve registers the dataset of group key key; Withdraw removes it.
func (s *Server) Serve(key string, src BlockSource) error {
	seal, err := newSealer(key)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.datasets[seal.id] = served{src: src, seal: seal}
	s.mu.Unlock()
	return nil
}

func (s *Server) Withdraw(key string) {
	s.mu.Lock()
	delete(s.datasets, DatasetID(key))
	s.mu.Unlock()
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path == datasetsPath {
		s.serveDatasets(w)
		return
	}
	s.asked.Store(time.Now().UnixNano())
	id, index, q, err := parseBlockPath(r.URL)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.RLock()
	ds, ok := s.datasets[id]
	s.mu.RUnlock()
	if !ok {
		http.Error(w, "dataset not served here", http.StatusNotFound)
		return
	}
	name, object, err := ds.seal.openRequest(q, index)
	if err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	var b []byte
	rs, replica := ds.src.(ReplicaSource)
	replica = replica && r.URL.Query().Get("replica") == "1"
	switch {
	case r.URL.Query().Get("cached") == "1":
		// A hand-off: from what this member holds, or not at all.
		if cs, ok := ds.src.(CachedSource); ok {
			b, err = cs.CachedBlock(r.Context(), name, object, index)
		} else {
			err = fs.ErrNotExist
		}
	case replica:
		// A hot block's replica: from its cache, or from the owner.
		b, err = s.fetching(w, func() ([]byte, error) { return rs.ReplicaBlock(r.Context(), name, object, index) })
	default:
		if s.HotAsks > 0 && s.heat.ask(Block{Dataset: id, Object: object, Index: index}, HotWindow, time.Now()) >= s.HotAsks {
			w.Header().Set(HotHeader, "1")
		}
		// The block may have to come from the source, behind other
		// fetches: the asker hears that this member is at it.
		b, err = s.fetching(w, func() ([]byte, error) { return ds.src.Block(r.Context(), name, object, index) })
	}
	switch {
	case err == nil:
	case errors.Is(err, ErrVersion):
		http.Error(w, err.Error(), http.StatusConflict)
		return
	case errors.Is(err, fs.ErrNotExist):
		// Removed at the source: not the member's fault (a 5xx would
		// have the asker skip it for every block).
		http.Error(w, "no such file", http.StatusNotFound)
		return
	case errors.Is(err, fs.ErrInvalid), errors.Is(err, io.EOF):
		http.Error(w, "no such block", http.StatusBadRequest)
		return
	default:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	sealed := ds.seal.sealBlock(b, object, index)
	w.Header().Set("Content-Length", strconv.Itoa(len(sealed)))
	if _, err := w.Write(sealed); err == nil {
		s.Blocks.Add(1)
		s.Bytes.Add(int64(len(b)))
		if replica {
			s.Replicas.Add(1)
		}
	}
}

// Heartbeat is how often an owner fetching a block tells the asker it is
// at it (an informational 102 Processing response): a live owner behind a
// slow source is waited for, the fetch is not made twice; a peer that
// stopped (SIGSTOP, a cut link) sends none, and the asker gives up after
// its Deadline.
var Heartbeat = 500 * time.Millisecond

// fetching runs fetch, counted in flight, with a heartbeat on w.
func (s *Server) fetching(w http.ResponseWriter, fetch func() ([]byte, error)) ([]byte, error) {
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	stop := heartbeat(w)
	defer stop() // (before the answer is written; also if fetch panics)
	return fetch()
}

// Idle reports whether no block request is being answered and none came
// in the last d.
func (s *Server) Idle(d time.Duration) bool {
	return s.inflight.Load() == 0 && time.Since(s.LastAsked()) >= d
}

// heartbeat sends 102 Processing on w every Heartbeat until stop is called
// (which returns once no more is sent: the handler writes the answer).
func heartbeat(w http.ResponseWriter) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				w.WriteHeader(http.StatusProcessing)
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// parseBlockPath parses /v1/blocks/<dataset ID>/<index>?q=<sealed>.
func parseBlockPath(u *url.URL) (id string, index int64, q string, err error) {
	const prefix = "/v1/blocks/"
	rest, ok := strings.CutPrefix(u.Path, prefix)
	i := strings.LastIndexByte(rest, '/')
	if !ok || i <= 0 || strings.Contains(rest[:i], "/") {
		return "", 0, "", fmt.Errorf("path %q: want %s<dataset>/<index>", u.Path, prefix)
	}
	id, ix := rest[:i], rest[i+1:]
	index, err = strconv.ParseInt(ix, 10, 64)
	if err != nil || index < 0 {
		return "", 0, "", fmt.Errorf("block index %q: want a number >= 0", ix)
	}
	if q = u.Query().Get("q"); q == "" {
		return "", 0, "", errors.New("no sealed file name and version (?q=)")
	}
	return id, index, q, nil
}

// Client asks peers for blocks.
type Client struct {
	// HTTP is the client peers are reached with (its TLS config holds
	// this member's certificate and the group's CA).
	HTTP *http.Client
	// Deadline bounds each peer's silence (default 2s): a reader never
	// waits longer on a dead or stopped peer before the next one. An
	// owner fetching the block from its source says so every Heartbeat,
	// and is waited for up to MaxWait.
	Deadline time.Duration
	// MaxWait bounds the wait for one peer's block however it keeps
	// saying it is at it (default 30s, a source fetch's own bound).
	MaxWait time.Duration
	// Cooldown is how long a peer that failed is skipped (default 5s).
	Cooldown time.Duration
	// Observe, if set, is told how long each block a peer sent took.
	Observe func(time.Duration)
	// OnSkip, if set, is told of each peer put aside for Cooldown and
	// why: its blocks come from the next in line, or the source,
	// meanwhile (a cost the operator should hear of).
	OnSkip func(Member, error)

	mu      sync.Mutex
	broken  map[string]time.Time // guarded by mu; peer address -> skipped until
	sealers map[string]*sealer   // guarded by mu; by dataset key
}

// sealer returns the sealer of the dataset of group key key.
func (c *Client) sealer(key string) (*sealer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.sealers[key]; s != nil {
		return s, nil
	}
	s, err := newSealer(key)
	if err != nil {
		return nil, err
	}
	if c.sealers == nil {
		c.sealers = map[string]*sealer{}
	}
	c.sealers[key] = s
	return s, nil
}

// ErrNoPeer: no peer answered with the block; the caller reads the
// source.
var ErrNoPeer = errors.New("cache group: no peer has the block")

// Fetch asks the members in order (the block's ranking without the asker)
// for block index (size bytes) of the dataset's file name at version
// object, and returns its
// bytes and the member that served them. Peers that fail, answer late or
// send a corrupt block are passed over (and skipped for Cooldown).
func (c *Client) Fetch(ctx context.Context, peers []Member, dataset, name, object string, index int64, size int) ([]byte, Member, error) {
	b, m, _, err := c.fetch(ctx, asking(peers, ""), dataset, name, object, index, size)
	return b, m, err
}

// FetchCached is Fetch of a block the peers answer from their caches only
// (a hand-off: they neither fetch it nor ask anyone).
func (c *Client) FetchCached(ctx context.Context, peers []Member, dataset, name, object string, index int64, size int) ([]byte, Member, error) {
	b, m, _, err := c.fetch(ctx, asking(peers, "cached"), dataset, name, object, index, size)
	return b, m, err
}

// ask is a member asked for a block, and how: "" (the owner or a
// fallback), "cached" (a hand-off) or "replica" (a hot block's replica).
type ask struct {
	Member
	how string
}

func asking(peers []Member, how string) []ask {
	out := make([]ask, len(peers))
	for i, m := range peers {
		out[i] = ask{m, how}
	}
	return out
}

// fetch asks the members in order; hot: the member that answered said the
// block is hot.
func (c *Client) fetch(ctx context.Context, peers []ask, dataset, name, object string, index int64, size int) ([]byte, Member, bool, error) {
	var errs []error
	for _, m := range peers {
		if c.skipped(m.Addr) {
			continue
		}
		start := time.Now()
		b, hot, err := c.fetchFrom(ctx, m, dataset, name, object, index, size)
		if err == nil {
			if c.Observe != nil {
				c.Observe(time.Since(start))
			}
			return b, m.Member, hot, nil
		}
		if ctx.Err() != nil {
			return nil, Member{}, false, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %w", m.ID, err))
		var st statusError
		if !errors.As(err, &st) || st.code >= 500 {
			c.breakFor(m.Addr) // unreachable, slow, busy or corrupt
			if c.OnSkip != nil {
				c.OnSkip(m.Member, err)
			}
		}
	}
	return nil, Member{}, false, errors.Join(append([]error{ErrNoPeer}, errs...)...)
}

type statusError struct {
	code int
	msg  string
}

func (e statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.msg) }

// get sends GET u to a peer and returns its answer if it is 200: the peer
// must say something (a heartbeat, the answer's headers, the body's
// bytes as they come) within the client's Deadline each time, and finish
// within MaxWait (cancel ends it once the body is read).
func (c *Client) get(ctx context.Context, u string) (*http.Response, context.CancelFunc, error) {
	d := cmp.Or(c.Deadline, 2*time.Second)
	ctx, cancelAll := context.WithTimeout(ctx, max(d, cmp.Or(c.MaxWait, 30*time.Second)))
	ctx, cancelSilent := context.WithCancel(ctx)
	silence := time.AfterFunc(d, cancelSilent)
	cancel := func() { silence.Stop(); cancelSilent(); cancelAll() }
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		Got1xxResponse: func(int, textproto.MIMEHeader) error {
			silence.Reset(d) // the owner is at it
			return nil
		},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		cancel()
		return nil, nil, statusError{resp.StatusCode, string(msg)}
	}
	silence.Reset(d)
	resp.Body = &lively{ReadCloser: resp.Body, silence: silence, d: d}
	return resp, cancel, nil
}

// lively is a body whose every read that brings bytes renews the peer's
// allowance of silence.
type lively struct {
	io.ReadCloser
	silence *time.Timer
	d       time.Duration
}

func (l *lively) Read(p []byte) (int, error) {
	n, err := l.ReadCloser.Read(p)
	if n > 0 {
		l.silence.Reset(l.d)
	}
	return n, err
}

func (c *Client) fetchFrom(ctx context.Context, m ask, dataset, name, object string, index int64, size int) ([]byte, bool, error) {
	seal, err := c.sealer(dataset)
	if err != nil {
		return nil, false, err
	}
	q := url.Values{"q": {seal.sealRequest(name, object, index)}}
	if m.how != "" {
		q.Set(m.how, "1")
	}
	u := url.URL{Scheme: "https", Host: m.Addr, Path: "/v1/blocks/" + seal.id + "/" + strconv.FormatInt(index, 10), RawQuery: q.Encode()}
	resp, cancel, err := c.get(ctx, u.String())
	if err != nil {
		return nil, false, err
	}
	defer cancel()
	defer resp.Body.Close()
	// Exactly the sealed block's length, or nothing: a member cannot
	// make this one hold more than the block.
	want := seal.sealedLen(size)
	if resp.ContentLength != int64(want) {
		return nil, false, statusError{http.StatusBadGateway, fmt.Sprintf("a sealed block of %d bytes, want %d", resp.ContentLength, want)}
	}
	sealed := make([]byte, want)
	if _, err := io.ReadFull(resp.Body, sealed); err != nil {
		return nil, false, err
	}
	b, err := seal.openBlock(sealed, object, index)
	if err != nil {
		return nil, false, statusError{http.StatusBadGateway, "the block does not open with the dataset's key: corrupt, or another dataset's"}
	}
	return b, resp.Header.Get(HotHeader) == "1", nil
}

func (c *Client) skipped(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.broken[addr]
	if ok && time.Now().After(until) {
		delete(c.broken, addr)
		return false
	}
	return ok
}

func (c *Client) breakFor(addr string) {
	d := c.Cooldown
	if d <= 0 {
		d = 5 * time.Second
	}
	c.mu.Lock()
	if c.broken == nil {
		c.broken = map[string]time.Time{}
	}
	c.broken[addr] = time.Now().Add(d)
	c.mu.Unlock()
}

// BlockSourceFunc is a function serving as a BlockSource.
type BlockSourceFunc func(ctx context.Context, name, object string, index int64) ([]byte, error)

// Block implements BlockSource.
func (f BlockSourceFunc) Block(ctx context.Context, name, object string, index int64) ([]byte, error) {
	return f(ctx, name, object, index)
}
