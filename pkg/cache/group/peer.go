package group

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The peer protocol: a member asks a block's owner for it over HTTPS with
// mutual TLS (every member holds a certificate of the group's CA; a
// process without one gets no data), and the owner answers from its cache
// or fetches the block from the source once, whoever else asks meanwhile.
//
//	GET /v1/blocks/<dataset>/<index>?name=<path>&object=<version>
//
// The dataset is its key in the group (DatasetKey): derived from the
// dataset's source and credentials, which never travel (see DatasetKey
// for what it does not prove yet); the path names the file in it (the
// owner reads it from its own source, with its own credentials). The answer
// carries the block's CRC-32C (Castagnoli), checked by the asker: a block
// corrupt on the way or on the owner's disk is never used.
//
//	200: the block; 404: the owner does not serve that dataset; 409: the
//	owner sees another version of the file; 503: the owner is busy.

// Server answers peers' block requests from the datasets it serves.
type Server struct {
	mu       sync.RWMutex
	datasets map[string]BlockSource // guarded by mu; by dataset key
}

// BlockSource serves one dataset's blocks: from the cache, or fetched
// from the source once however many ask at the same time. ErrVersion: the
// file is not at that version (any more).
type BlockSource interface {
	Block(ctx context.Context, name, object string, index int64) ([]byte, error)
}

// ErrVersion is a BlockSource's answer for a block of another version.
var ErrVersion = errors.New("cache group: the file is at another version")

// NewServer returns a server of no datasets.
func NewServer() *Server { return &Server{datasets: map[string]BlockSource{}} }

// Serve registers the dataset of key; Withdraw removes it.
func (s *Server) Serve(key string, src BlockSource) {
	s.mu.Lock()
	s.datasets[key] = src
	s.mu.Unlock()
}

func (s *Server) Withdraw(key string) {
	s.mu.Lock()
	delete(s.datasets, key)
	s.mu.Unlock()
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const crcHeader = "X-Cistern-Crc32c"

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	key, index, name, object, err := parseBlockPath(r.URL)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.RLock()
	src := s.datasets[key]
	s.mu.RUnlock()
	if src == nil {
		http.Error(w, "dataset not served here", http.StatusNotFound)
		return
	}
	b, err := src.Block(r.Context(), name, object, index)
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
	w.Header().Set(crcHeader, strconv.FormatUint(uint64(crc32.Checksum(b, castagnoli)), 10))
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
}

// parseBlockPath parses /v1/blocks/<dataset>/<index>?name=&object=.
func parseBlockPath(u *url.URL) (key string, index int64, name, object string, err error) {
	const prefix = "/v1/blocks/"
	rest, ok := strings.CutPrefix(u.Path, prefix)
	if !ok {
		return "", 0, "", "", fmt.Errorf("path %q: want %s<dataset>/<index>", u.Path, prefix)
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return "", 0, "", "", fmt.Errorf("path %q: want %s<dataset>/<index>", u.Path, prefix)
	}
	key, ix := rest[:i], rest[i+1:]
	if strings.Contains(key, "/") {
		return "", 0, "", "", fmt.Errorf("path %q: want %s<dataset>/<index>", u.Path, prefix)
	}
	index, err = strconv.ParseInt(ix, 10, 64)
	if err != nil || index < 0 {
		return "", 0, "", "", fmt.Errorf("block index %q: want a number >= 0", ix)
	}
	q := u.Query()
	name, object = q.Get("name"), q.Get("object")
	if name == "" || object == "" {
		return "", 0, "", "", errors.New("a block needs its file's name and version (?name=&object=)")
	}
	return key, index, name, object, nil
}

// Client asks peers for blocks.
type Client struct {
	// HTTP is the client peers are reached with (its TLS config holds
	// this member's certificate and the group's CA).
	HTTP *http.Client
	// Deadline bounds each peer's answer (default 2s): a reader never
	// waits longer on a slow or dead peer before the next one.
	Deadline time.Duration
	// Cooldown is how long a peer that failed is skipped (default 5s).
	Cooldown time.Duration

	mu     sync.Mutex
	broken map[string]time.Time // guarded by mu; peer address -> skipped until
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
	var errs []error
	for _, m := range peers {
		if c.skipped(m.Addr) {
			continue
		}
		b, err := c.fetchFrom(ctx, m, dataset, name, object, index, size)
		if err == nil {
			return b, m, nil
		}
		if ctx.Err() != nil {
			return nil, Member{}, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("%s: %w", m.ID, err))
		var st statusError
		if !errors.As(err, &st) || st.code >= 500 {
			c.breakFor(m.Addr) // unreachable, slow, busy or corrupt
		}
	}
	return nil, Member{}, errors.Join(append([]error{ErrNoPeer}, errs...)...)
}

type statusError struct {
	code int
	msg  string
}

func (e statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.msg) }

func (c *Client) fetchFrom(ctx context.Context, m Member, dataset, name, object string, index int64, size int) ([]byte, error) {
	d := c.Deadline
	if d <= 0 {
		d = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	u := url.URL{Scheme: "https", Host: m.Addr, Path: "/v1/blocks/" + dataset + "/" + strconv.FormatInt(index, 10),
		RawQuery: url.Values{"name": {name}, "object": {object}}.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return nil, statusError{resp.StatusCode, string(msg)}
	}
	// Exactly the block's length, or nothing: a member cannot make this
	// one hold more than the block.
	if resp.ContentLength != int64(size) {
		return nil, statusError{http.StatusBadGateway, fmt.Sprintf("a block of %d bytes, want %d", resp.ContentLength, size)}
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(resp.Body, b); err != nil {
		return nil, err
	}
	want, err := strconv.ParseUint(resp.Header.Get(crcHeader), 10, 32)
	if err != nil || uint32(want) != crc32.Checksum(b, castagnoli) {
		return nil, statusError{http.StatusBadGateway, "the block failed its checksum"}
	}
	return b, nil
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
