package group

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// pki is a CA and a certificate it signed, PEM-encoded.
type pki struct{ ca, cert, key []byte }

func newPKI(t *testing.T, name string) pki {
	t.Helper()
	ca, cert, key, err := NewPKI(name)
	if err != nil {
		t.Fatal(err)
	}
	return pki{ca, cert, key}
}

// blocks is a BlockSource of one version whose blocks are their index
// repeated; it counts the blocks it serves.
type blocksOf struct {
	version string
	served  atomic.Int64
	delay   time.Duration
}

func (s *blocksOf) Block(ctx context.Context, name, object string, index int64) ([]byte, error) {
	if object != s.version {
		return nil, ErrVersion
	}
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.served.Add(1)
	return bytes.Repeat([]byte{byte(index)}, 1000), nil
}

// startPeer serves h over TLS on loopback and returns it as a member.
func startPeer(t *testing.T, id string, h http.Handler, tc *tls.Config) Member {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = tc
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return Member{ID: id, Addr: strings.TrimPrefix(srv.URL, "https://"), Weight: 1}
}

// groupTLS returns a member's server and client TLS configurations,
// certified by a new group CA.
func groupTLS(t *testing.T) (stc, ctc *tls.Config) {
	t.Helper()
	p := newPKI(t, "group")
	stc, ctc, err := TLSConfigs(p.cert, p.key, p.ca)
	if err != nil {
		t.Fatal(err)
	}
	return stc, ctc
}

func client(tc *tls.Config) *Client {
	return &Client{HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}, Deadline: 300 * time.Millisecond, Cooldown: time.Minute}
}

// TestPeersServeBlocks: a member gets a block from the first peer in the
// ranking that serves it: a peer without the dataset (404), with another
// version of the file (409), too slow (past the deadline, then skipped),
// or sending a block that fails its checksum is passed over; with none
// left the caller is told to read the source.
func TestPeersServeBlocks(t *testing.T) {
	stc, ctc := groupTLS(t)
	key := DatasetKey("s3://bucket/research", []byte("secret"))

	owner := NewServer()
	good := &blocksOf{version: "v1"}
	owner.Serve(key, good)
	empty := NewServer()
	stale := NewServer()
	stale.Serve(key, &blocksOf{version: "v0"})
	slow := NewServer()
	slowSrc := &blocksOf{version: "v1", delay: 2 * time.Second}
	slow.Serve(key, slowSrc)
	corrupt := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte{3}, 12+1000+16)) // a sealed block's length, not one
	})

	big := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte{3}, 64<<10)) // more than a block of 1000 bytes
	})
	gone := NewServer()
	gone.Serve(key, BlockSourceFunc(func(context.Context, string, string, int64) ([]byte, error) { return nil, fs.ErrNotExist }))
	mBig := startPeer(t, "big", big, stc)
	mGone := startPeer(t, "gone", gone, stc)
	mOwner := startPeer(t, "owner", owner, stc)
	mEmpty := startPeer(t, "empty", empty, stc)
	mStale := startPeer(t, "stale", stale, stc)
	mSlow := startPeer(t, "slow", slow, stc)
	mCorrupt := startPeer(t, "corrupt", corrupt, stc)
	c := client(ctc)
	var skipped []string
	c.OnSkip = func(m Member, err error) { skipped = append(skipped, m.ID) }
	ctx := context.Background()

	start := time.Now()
	b, from, err := c.Fetch(ctx, []Member{mEmpty, mStale, mGone, mBig, mCorrupt, mSlow, mOwner}, key, "f", "v1", 3, 1000)
	if err != nil || from.ID != "owner" || !bytes.Equal(b, bytes.Repeat([]byte{3}, 1000)) {
		t.Fatalf("fetch: from %q, %d bytes, %v; want block 3 from the owner", from.ID, len(b), err)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Errorf("a slow peer held the reader %s; the deadline is 300ms", waited)
	}
	// Those put aside are told of (the daemon logs them); a peer that
	// answered (not found, another version) is not.
	if want := []string{"big", "corrupt", "slow"}; !slices.Equal(skipped, want) {
		t.Errorf("peers reported skipped: %v; want %v", skipped, want)
	}
	// The slow and corrupt peers are skipped now: no wait at all.
	start = time.Now()
	if _, from, err := c.Fetch(ctx, []Member{mSlow, mCorrupt, mOwner}, key, "f", "v1", 4, 1000); err != nil || from.ID != "owner" {
		t.Fatalf("second fetch: from %q, %v", from.ID, err)
	}
	if waited := time.Since(start); waited > 200*time.Millisecond {
		t.Errorf("peers that failed were asked again: the fetch took %s", waited)
	}
	// A file removed at the source (404) is no fault of the member's: it
	// is asked again; one that sent more than a block is skipped.
	if c.skipped(mGone.Addr) || !c.skipped(mBig.Addr) {
		t.Errorf("skipped: gone %t (want false), too big %t (want true)", c.skipped(mGone.Addr), c.skipped(mBig.Addr))
	}
	if n := good.served.Load(); n != 2 {
		t.Errorf("the owner served %d blocks; want 2", n)
	}
	// No peer has it: the caller reads the source.
	if _, _, err := c.Fetch(ctx, []Member{mEmpty, mStale}, key, "f", "v1", 5, 1000); !errors.Is(err, ErrNoPeer) {
		t.Errorf("no peer has the block: %v; want ErrNoPeer", err)
	}
	// Another dataset key (other credentials) gets nothing.
	other := DatasetKey("s3://bucket/research", []byte("another secret"))
	if _, _, err := c.Fetch(ctx, []Member{mOwner}, other, "f", "v1", 3, 1000); !errors.Is(err, ErrNoPeer) {
		t.Errorf("a key of other credentials: %v; want ErrNoPeer", err)
	}
}

// TestRogueClientsGetNothing: a client without a certificate, or with one
// of another CA, cannot talk to a member at all.
func TestRogueClientsGetNothing(t *testing.T) {
	p := newPKI(t, "group")
	stc, _, err := TLSConfigs(p.cert, p.key, p.ca)
	if err != nil {
		t.Fatal(err)
	}
	key := DatasetKey("file:///datasets/research", nil)
	srv := NewServer()
	src := &blocksOf{version: "v1"}
	srv.Serve(key, src)
	m := startPeer(t, "owner", srv, stc)

	rogue := newPKI(t, "rogue")
	_, rogueTC, err := TLSConfigs(rogue.cert, rogue.key, rogue.ca)
	if err != nil {
		t.Fatal(err)
	}
	// The rogue trusts the group's CA (it learnt the public part) but
	// has no certificate of it.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.ca)
	rogueTC.RootCAs = pool
	noCert := &tls.Config{RootCAs: pool, ServerName: ServerName, MinVersion: tls.VersionTLS13}
	for name, tc := range map[string]*tls.Config{"another CA's certificate": rogueTC, "no certificate": noCert} {
		if _, _, err := client(tc).Fetch(context.Background(), []Member{m}, key, "f", "v1", 0, 1000); err == nil {
			t.Errorf("a client with %s got a block", name)
		}
	}
	if n := src.served.Load(); n != 0 {
		t.Errorf("the member served %d blocks to rogue clients", n)
	}
}

// TestOutsidersLearnNothing: a request names the dataset by a public ID
// and carries the file's name sealed; a request sealed with another key
// is refused (403), and a block answered to a replayed request does not
// open without the dataset's key.
func TestOutsidersLearnNothing(t *testing.T) {
	stc, ctc := groupTLS(t)
	key := DatasetKey("s3://bucket/research", []byte("secret"))
	srv := NewServer()
	if err := srv.Serve(key, &blocksOf{version: "v1"}); err != nil {
		t.Fatal(err)
	}
	m := startPeer(t, "owner", srv, stc)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ctc}}
	own, _ := newSealer(key)
	other, _ := newSealer(DatasetKey("s3://bucket/research", []byte("guess")))
	get := func(q string) (int, []byte) {
		resp, err := hc.Get("https://" + m.Addr + "/v1/blocks/" + own.id + "/3?q=" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	q := own.sealRequest("secret/plans.csv", "v1", 3)
	if strings.Contains(q, "plans") {
		t.Errorf("the request shows the file's name: %s", q)
	}
	if code, _ := get(other.sealRequest("secret/plans.csv", "v1", 3)); code != http.StatusForbidden {
		t.Errorf("a request sealed with another key: HTTP %d, want 403", code)
	}
	code, sealed := get(q) // a member that was sent q replays it
	if code != http.StatusOK {
		t.Fatalf("the replayed request: HTTP %d", code)
	}
	if _, err := other.openBlock(sealed, "v1", 3); err == nil {
		t.Error("the answer opened without the dataset's key")
	}
	if b, err := own.openBlock(sealed, "v1", 3); err != nil || !bytes.Equal(b, bytes.Repeat([]byte{3}, 1000)) {
		t.Errorf("the answer with the key: %v", err)
	}
}

// cachedOf is blocksOf that holds only the blocks in held.
type cachedOf struct {
	blocksOf
	held map[int64]bool
}

func (s *cachedOf) CachedBlock(ctx context.Context, name, object string, index int64) ([]byte, error) {
	if !s.held[index] {
		return nil, fs.ErrNotExist
	}
	return bytes.Repeat([]byte{byte(index)}, 1000), nil
}

// TestHandoffAnswersFromTheCacheOnly: a block asked in a hand-off
// (FetchCached) is answered from what the peer holds, or not at all: the
// peer never fetches it (nor asks anyone; two members whose views differ
// asked each other, each waiting out the other's deadline). A peer that
// cannot tell what it holds answers no.
func TestHandoffAnswersFromTheCacheOnly(t *testing.T) {
	stc, ctc := groupTLS(t)
	key := DatasetKey("s3://bucket/research", []byte("secret"))
	src := &cachedOf{blocksOf: blocksOf{version: "v1"}, held: map[int64]bool{1: true}}
	srv := NewServer()
	srv.Serve(key, src)
	m := startPeer(t, "prev", srv, stc)
	plain := NewServer()
	plainSrc := &blocksOf{version: "v1"}
	plain.Serve(key, plainSrc)
	mPlain := startPeer(t, "plain", plain, stc)
	c := client(ctc)
	ctx := context.Background()
	if b, _, err := c.FetchCached(ctx, []Member{m}, key, "f", "v1", 1, 1000); err != nil || b[0] != 1 {
		t.Fatalf("a held block in a hand-off: %v", err)
	}
	if _, _, err := c.FetchCached(ctx, []Member{m}, key, "f", "v1", 2, 1000); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("a block not held, in a hand-off: %v, want ErrNoPeer", err)
	}
	if _, _, err := c.FetchCached(ctx, []Member{mPlain}, key, "f", "v1", 2, 1000); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("a peer without CachedBlock, in a hand-off: %v, want ErrNoPeer", err)
	}
	if n := src.served.Load() + plainSrc.served.Load(); n != 0 {
		t.Fatalf("hand-off requests fetched %d blocks, want 0", n)
	}
	if _, _, err := c.Fetch(ctx, []Member{m}, key, "f", "v1", 2, 1000); err != nil || src.served.Load() != 1 {
		t.Fatalf("an ordinary request for a block not held: %v, %d fetched; want it fetched", err, src.served.Load())
	}
}

// TestLiveOwnerIsWaitedFor: an owner fetching a block from a slow source
// says so (102 Processing every Heartbeat) and is waited for past the
// Deadline, up to MaxWait: the block is not fetched twice. A peer that
// says nothing (a stopped process: connections accepted, never answered)
// is given up after the Deadline.
func TestLiveOwnerIsWaitedFor(t *testing.T) {
	old := Heartbeat
	Heartbeat = 50 * time.Millisecond
	t.Cleanup(func() { Heartbeat = old })
	stc, ctc := groupTLS(t)
	key := DatasetKey("s3://bucket/research", []byte("secret"))
	busy := NewServer()
	src := &blocksOf{version: "v1", delay: time.Second}
	busy.Serve(key, src)
	mBusy := startPeer(t, "busy", busy, stc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() { // accepts, never answers: as a stopped member's kernel does
		var held []net.Conn
		for {
			c, err := lis.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	mStopped := Member{ID: "stopped", Addr: lis.Addr().String(), Weight: 1}
	ctx := context.Background()

	c := client(ctc) // Deadline 300ms
	start := time.Now()
	b, from, err := c.Fetch(ctx, []Member{mBusy}, key, "f", "v1", 3, 1000)
	if err != nil || from.ID != "busy" || !bytes.Equal(b, bytes.Repeat([]byte{3}, 1000)) {
		t.Fatalf("a live owner 1s into its fetch: from %q, %d bytes, %v; want the block, waited for", from.ID, len(b), err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("the fetch took %s, less than the owner's", waited)
	}

	start = time.Now()
	if _, _, err := c.Fetch(ctx, []Member{mStopped}, key, "f", "v1", 3, 1000); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("a peer that never answers: %v, want ErrNoPeer", err)
	}
	if waited := time.Since(start); waited > time.Second {
		t.Errorf("a silent peer held the reader %s; the deadline is 300ms", waited)
	}

	c = client(ctc)
	c.MaxWait = 500 * time.Millisecond
	src.delay = 10 * time.Second
	start = time.Now()
	if _, _, err := c.Fetch(ctx, []Member{mBusy}, key, "f", "v1", 4, 1000); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("an owner still at it past MaxWait: %v, want ErrNoPeer", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Errorf("an owner past MaxWait held the reader %s; MaxWait is 500ms", waited)
	}
}

// TestServerIdle: a server answering a block request is not idle, however
// long ago the request came (a draining member waits for it); once it
// has answered and no one asked for the period, it is.
func TestServerIdle(t *testing.T) {
	key := DatasetKey("s3://bucket/research", []byte("secret"))
	s := NewServer()
	release := make(chan struct{})
	s.Serve(key, BlockSourceFunc(func(context.Context, string, string, int64) ([]byte, error) {
		<-release
		return nil, fs.ErrNotExist
	}))
	if !s.Idle(0) {
		t.Fatal("a server never asked is not idle")
	}
	c := &Client{}
	seal, err := c.sealer(key)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		q := "/v1/blocks/" + seal.id + "/0?q=" + url.QueryEscape(seal.sealRequest("f", "v1", 0))
		s.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, q, nil))
	}()
	for deadline := time.Now().Add(5 * time.Second); s.inflight.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the request never reached the block source")
		}
	}
	time.Sleep(50 * time.Millisecond)
	if s.Idle(10 * time.Millisecond) {
		t.Error("a server answering a request is idle")
	}
	close(release)
	<-done
	if s.Idle(time.Hour) || !s.Idle(0) {
		t.Errorf("after the answer: idle for an hour %t (want false), idle now %t (want true)", s.Idle(time.Hour), s.Idle(0))
	}
}
