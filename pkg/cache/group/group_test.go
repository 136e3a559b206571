package group_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/group"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// countingSource counts the reads of each block of a source.
type countingSource struct {
	*posix.Source
	mu    sync.Mutex
	reads map[string]int
	total atomic.Int64
}

func (s *countingSource) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	s.mu.Lock()
	s.reads[fmt.Sprintf("%s@%d", name, off)]++
	s.mu.Unlock()
	s.total.Add(1)
	return s.Source.ReadAt(ctx, name, p, off)
}

var _ source.Source = (*countingSource)(nil)

// member is one cache of the group: its own tiers, the shared source.
type member struct {
	id    string
	cache *cache.Cache
	ds    *cache.Dataset
	node  *group.Node
	srv   *httptest.Server
	peer  *group.Server
}

// startGroup starts n members over loopback TLS and returns them.
func startGroup(t *testing.T, n int, src source.Source, key string, quota int64) []*member {
	t.Helper()
	server, client := testTLS(t)
	var ms []*member
	var ring []group.Member
	for i := range n {
		c, err := cache.New(cache.Options{Tiers: []cache.TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: quota}}, BlockSize: cachetest.Block})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		m := &member{id: fmt.Sprintf("node-%d", i), cache: c, ds: c.Dataset("local-key", src)}
		srv := group.NewServer()
		srv.Serve(key, group.DatasetSource(m.ds))
		hs := httptest.NewUnstartedServer(srv)
		hs.TLS = server
		hs.StartTLS()
		t.Cleanup(hs.Close)
		m.srv, m.peer = hs, srv
		// A deadline no loaded test machine reaches: these tests are
		// about where blocks come from, not about slow peers.
		m.node = &group.Node{Self: m.id, Client: &group.Client{HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: client}},
			Deadline: time.Minute}}
		ring = append(ring, group.Member{ID: m.id, Addr: strings.TrimPrefix(hs.URL, "https://"), Weight: 1})
		ms = append(ms, m)
	}
	r, err := group.NewRing(ring)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		m.node.SetRing(r)
		m.ds.JoinGroup(key, m.node)
	}
	return ms
}

func readAll(t *testing.T, ds *cache.Dataset, src source.Source, name string) []byte {
	a, err := src.Stat(context.Background(), name)
	if err != nil {
		t.Error(err)
		return nil
	}
	out := make([]byte, a.Size)
	for off := int64(0); off < a.Size; off += 100_003 {
		end := min(off+100_003, a.Size)
		if n, err := ds.ReadAt(context.Background(), name, a, out[off:end], off); int64(n) != end-off || (err != nil && err != io.EOF) {
			t.Errorf("ReadAt(%s, %d) = %d, %v", name, off, n, err)
			return nil
		}
	}
	return out
}

// readAtOnce has every member read name at once and checks the bytes.
func readAtOnce(t *testing.T, ms []*member, src source.Source, name string, want []byte) {
	t.Helper()
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := readAll(t, m.ds, src, name); !bytes.Equal(got, want) {
				t.Errorf("%s read other bytes of %s", m.id, name)
			}
		}()
	}
	wg.Wait()
}

// TestGroupFetchesEachBlockOnce: members reading the same cold file at
// once read each block from the source once (its owner's read), and each
// member stores only what it owns: the group holds the file once.
func TestGroupFetchesEachBlockOnce(t *testing.T) {
	root := t.TempDir()
	const blocks = 48
	want := cachetest.WriteRandom(t, filepath.Join(root, "shard"), blocks*cachetest.Block-17, 7)
	p, _ := posix.New(root)
	src := &countingSource{Source: p, reads: map[string]int{}}
	key := group.DatasetKey("file://"+root, nil)
	ms := startGroup(t, 4, src, key, 1<<30)

	readAtOnce(t, ms, src, "shard", want)
	src.mu.Lock()
	for k, n := range src.reads {
		if n != 1 {
			t.Errorf("block %s read %d times from the source; want once for the group", k, n)
		}
	}
	src.mu.Unlock()
	if n := src.total.Load(); n != blocks {
		t.Errorf("%d source reads for %d blocks; want %d (1.00 per block)", n, blocks, blocks)
	}
	var held, peer int64
	for _, m := range ms {
		st := m.cache.Stats()
		held += st.TierBytes["disk"]
		peer += st.PeerBytes
		if st.TierBytes["disk"] > int64(len(want))/2 {
			t.Errorf("%s holds %d of the file's %d bytes; want about a quarter (what it owns)", m.id, st.TierBytes["disk"], len(want))
		}
	}
	if held != int64(len(want)) {
		t.Errorf("the group holds %d bytes of a file of %d; want it once", held, len(want))
	}
	if peer == 0 {
		t.Error("no member was sent a block by another")
	}
}

// TestGroupCapacityAddsUp: four members whose caches hold just their own
// share of a dataset (about a third of it each) hold it all between them:
// each stores exactly the blocks it owns, and a second pass reads nothing
// from the source. (The quota is the largest share plus two blocks: how
// evenly the blocks fall is the placement's test, not this one.)
func TestGroupCapacityAddsUp(t *testing.T) {
	root := t.TempDir()
	var names []string
	want := map[string][]byte{}
	for i := range 24 {
		name := fmt.Sprintf("f%02d", i)
		want[name] = cachetest.WriteRandom(t, filepath.Join(root, name), 8*cachetest.Block, uint64(20+i))
		names = append(names, name)
	}
	p, _ := posix.New(root)
	src := &countingSource{Source: p, reads: map[string]int{}}
	key := group.DatasetKey("file://"+root, nil)
	var ids []group.Member
	for i := range 4 {
		ids = append(ids, group.Member{ID: fmt.Sprintf("node-%d", i), Weight: 1})
	}
	ring, err := group.NewRing(ids)
	if err != nil {
		t.Fatal(err)
	}
	owned := map[string]int64{}
	for _, name := range names {
		a, _ := src.Stat(context.Background(), name)
		for b := range int64(8) {
			o, _ := ring.Owner(group.Block{Dataset: key, Object: a.Fingerprint(), Index: b})
			owned[o.ID] += cachetest.Block
		}
	}
	var most int64
	for _, n := range owned {
		most = max(most, n)
	}
	ms := startGroup(t, 4, src, key, most+2*cachetest.Block)
	for pass := range 2 {
		before := src.total.Load()
		for _, m := range ms {
			for _, name := range names {
				if got := readAll(t, m.ds, src, name); !bytes.Equal(got, want[name]) {
					t.Fatalf("%s, pass %d: %s read other bytes", m.id, pass, name)
				}
			}
		}
		if reads := src.total.Load() - before; pass == 1 && reads != 0 {
			t.Errorf("second pass: %d source reads; want 0 (the group holds the dataset)", reads)
		}
	}
	for _, m := range ms {
		if held := m.cache.Stats().TierBytes["disk"]; held != owned[m.id] {
			t.Errorf("%s holds %d bytes; it owns %d (of %d in all, at most %d in its cache)", m.id, held, owned[m.id], 24*8*cachetest.Block, most+2*cachetest.Block)
		}
	}
}

// TestGroupSurvivesADeadMember: with a member gone (its server down), the
// others read every block: the owner's is passed over (and skipped for a
// while) and the block read from the source; no read fails.
func TestGroupSurvivesADeadMember(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "shard"), 32*cachetest.Block, 9)
	p, _ := posix.New(root)
	src := &countingSource{Source: p, reads: map[string]int{}}
	ms := startGroup(t, 4, src, group.DatasetKey("file://"+root, nil), 1<<30)
	ms[2].srv.Close()
	for _, m := range []*member{ms[0], ms[1], ms[3]} {
		if got := readAll(t, m.ds, src, "shard"); !bytes.Equal(got, want) {
			t.Fatalf("%s read other bytes with node-2 down", m.id)
		}
	}
}

// testTLS returns a member's server and client TLS configurations (a CA
// and one certificate for the test).
func testTLS(t *testing.T) (*tls.Config, *tls.Config) {
	t.Helper()
	ca, cert, key := group.NewTestPKI(t)
	s, c, err := group.TLSConfigs(cert, key, ca)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

// TestGroupBorrowsWhatPeersSend: a member reading a file in reads smaller
// than a block (as FUSE does: 128 KiB to 1 MiB of 4 MiB blocks) is sent
// each block another member owns once. Each read asked the owner for the
// whole block again: four times the bytes for reads of a quarter block.
func TestGroupBorrowsWhatPeersSend(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "shard"), 32*cachetest.Block, 11)
	p, _ := posix.New(root)
	src := &countingSource{Source: p, reads: map[string]int{}}
	ms := startGroup(t, 2, src, group.DatasetKey("file://"+root, nil), 1<<30)
	a, err := src.Stat(context.Background(), "shard")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, a.Size)
	const chunk = cachetest.Block / 4
	for off := int64(0); off < a.Size; off += chunk {
		if n, err := ms[0].ds.ReadAt(context.Background(), "shard", a, got[off:off+chunk], off); n != chunk || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt at %d: %d, %v", off, n, err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read other bytes")
	}
	sent := ms[0].cache.Stats().PeerBytes
	if sent == 0 || sent > int64(len(want)) {
		t.Errorf("the other member sent %d bytes for a file of %d read in quarter blocks; want each block it owns once (at most the file)", sent, len(want))
	}
}

// byPath is a source whose files have no inode numbers (as an object
// store's): cached by path. It counts Stat calls.
type byPath struct {
	*countingSource
	stats atomic.Int64
}

func (s *byPath) Stat(ctx context.Context, name string) (source.Attr, error) {
	s.stats.Add(1)
	a, err := s.countingSource.Stat(ctx, name)
	a.Ino, a.Dev = 0, 0
	return a, err
}

// TestOwnerAsksTheSourceOncePerFile: an owner serving the blocks of a
// file known by its path (an object) asks the source for its attributes
// once, not for every block a peer asks for (on S3 each is a request).
func TestOwnerAsksTheSourceOncePerFile(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "shard"), 32*cachetest.Block, 13)
	p, _ := posix.New(root)
	src := &byPath{countingSource: &countingSource{Source: p, reads: map[string]int{}}}
	ms := startGroup(t, 2, src, group.DatasetKey("file://"+root, nil), 1<<30)
	if got := readAll(t, ms[0].ds, src, "shard"); !bytes.Equal(got, want) {
		t.Fatal("read other bytes")
	}
	if ms[0].cache.Stats().PeerBytes == 0 {
		t.Fatal("no block came from the other member")
	}
	// One Stat by the reader, one by the owner for its first block (or
	// a few, for the read-ahead's first requests arriving at once); it
	// was one per block the owner served.
	if n := src.stats.Load(); n > 5 {
		t.Errorf("%d Stat calls to read a file of 32 blocks, about half of them owned by the other member; want 2 to 5", n)
	}
}

// ringOf places blocks over ms with the given weights (1 when none).
func ringOf(t *testing.T, ms []*member, weights ...float64) *group.Ring {
	t.Helper()
	var list []group.Member
	for i, m := range ms {
		w := 1.0
		if i < len(weights) {
			w = weights[i]
		}
		list = append(list, group.Member{ID: m.id, Addr: strings.TrimPrefix(m.srv.URL, "https://"), Weight: w})
	}
	r, err := group.NewRing(list)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestGroupRingsDisagree: two members that each believe the other owns a
// file (their views of the group differ for a moment during a join) and
// both read it answer each other at once: a member asked for a block does
// not wait on its own reader's request to the asker. Each waited out the
// other's deadline (a minute here).
func TestGroupRingsDisagree(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "shard"), 16*cachetest.Block, 17)
	p, _ := posix.New(root)
	src := &countingSource{Source: p, reads: map[string]int{}}
	ms := startGroup(t, 2, src, group.DatasetKey("file://"+root, nil), 1<<30)
	ms[0].node.SetRing(ringOf(t, []*member{ms[1], ms[0]}, 1, 0)) // node-0 believes node-1 owns every block,
	ms[1].node.SetRing(ringOf(t, []*member{ms[0], ms[1]}, 1, 0)) // and node-1 the other way round
	start := time.Now()
	readAtOnce(t, ms, src, "shard", want)
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("reading took %s: the members waited on each other", took)
	}
}

// TestJoinTakesBlocksFromTheirPreviousOwners: a member that joins owns
// about a third of the blocks of a file two members had read; it takes
// them from their previous owners, not the source, and keeps them: after
// the join no block is read from the source again, whoever reads.
func TestJoinTakesBlocksFromTheirPreviousOwners(t *testing.T) {
	root := t.TempDir()
	want := cachetest.WriteRandom(t, filepath.Join(root, "shard"), 48*cachetest.Block, 19)
	p, _ := posix.New(root)
	src := &countingSource{Source: p, reads: map[string]int{}}
	key := group.DatasetKey("file://"+root, nil)
	ms := startGroup(t, 3, src, key, 1<<30)
	// Two members first (fresh nodes: no earlier ring to hand off from).
	for _, m := range ms {
		m.node = &group.Node{Self: m.id, Client: m.node.Client}
		m.node.SetRing(ringOf(t, ms[:2]))
		m.ds.JoinGroup(key, m.node)
	}
	readAtOnce(t, ms[:2], src, "shard", want)
	before := src.total.Load()
	if before != 48 {
		t.Fatalf("two members read the source %d times for 48 blocks, want 48", before)
	}
	for _, m := range ms {
		m.node.SetRing(ringOf(t, ms))
	}
	if got := readAll(t, ms[2].ds, src, "shard"); !bytes.Equal(got, want) {
		t.Fatal("the member that joined read other bytes")
	}
	readAtOnce(t, ms[:2], src, "shard", want)
	if n := src.total.Load() - before; n != 0 {
		t.Errorf("after the join the source was read %d more times, want 0", n)
	}
	st := ms[2].cache.Stats()
	var stored int64
	for _, b := range st.TierBytes {
		stored += b
	}
	if stored == 0 || stored >= 48*cachetest.Block {
		t.Errorf("the member that joined stored %d bytes of 48 blocks of %d; want its share (about a third)", stored, cachetest.Block)
	}
}

// TestAHotBlockHasAReplica: a block many members read becomes hot at its
// owner, and the next member in its ranking keeps a copy as its replica;
// when the owner dies, a member reading the block for the first time gets
// it from the replica, and the source is read once in all. Without the
// replica (no block is ever hot) the replica's member reads the source
// again.
func TestAHotBlockHasAReplica(t *testing.T) {
	for _, replicas := range []bool{true, false} {
		t.Run(fmt.Sprint("replicas=", replicas), func(t *testing.T) {
			root := t.TempDir()
			want := cachetest.WriteRandom(t, filepath.Join(root, "weights"), cachetest.Block, 23)
			p, _ := posix.New(root)
			src := &countingSource{Source: p, reads: map[string]int{}}
			key := group.DatasetKey("file://"+root, nil)
			ms := startGroup(t, 5, src, key, 1<<30)
			r := ringOf(t, ms, 1, 1, 1, 1, 0) // node-4 uses the group, owns nothing
			byID := map[string]*member{}
			for _, m := range ms {
				m.node.SetRing(r)
				m.peer.HotAsks = 2 // hot at the second ask
				if !replicas {
					m.peer.HotAsks = 0
				}
				byID[m.id] = m
			}
			a, err := src.Stat(context.Background(), "weights")
			if err != nil {
				t.Fatal(err)
			}
			rank := r.Rank(group.Block{Dataset: key, Object: a.Fingerprint(), Index: 0}, 4)
			owner, replica := byID[rank[0].ID], byID[rank[1].ID]
			// The two others read it (the second ask makes it hot),
			// then the replica's member: its answer says hot.
			for _, m := range []*member{byID[rank[2].ID], byID[rank[3].ID], replica} {
				if got := readAll(t, m.ds, src, "weights"); !bytes.Equal(got, want) {
					t.Fatalf("%s read other bytes", m.id)
				}
			}
			wantHeld := int64(0)
			if replicas {
				wantHeld = int64(len(want))
			}
			held := settled(wantHeld, func() int64 { return replica.cache.Stats().TierBytes["disk"] })
			if replicas && held != int64(len(want)) {
				t.Fatalf("the replica's member holds %d bytes of the hot block; want %d (a copy)", held, len(want))
			}
			if !replicas && held != 0 {
				t.Fatalf("with no hot blocks the replica's member holds %d bytes; want 0", held)
			}
			owner.srv.Close()
			if got := readAll(t, ms[4].ds, src, "weights"); !bytes.Equal(got, want) {
				t.Fatal("node-4 read other bytes with the owner gone")
			}
			wantReads := int64(1)
			if !replicas {
				wantReads = 2 // the replica's member read the source
			}
			if n := src.total.Load(); n != wantReads {
				t.Errorf("the source was read %d times; want %d", n, wantReads)
			}
			if got := settled(1, replica.peer.Blocks.Load); got != 1 {
				t.Errorf("the replica's member served %d blocks; want 1 (to node-4, the owner gone)", got)
			}
		})
	}
}

// settled returns get() once it is want, or after 5 seconds: a block is
// stored, and a server counts what it sent, a moment after its reader
// has the bytes.
func settled(want int64, get func() int64) int64 {
	got := get()
	for end := time.Now().Add(5 * time.Second); got != want && time.Now().Before(end); got = get() {
		time.Sleep(5 * time.Millisecond)
	}
	return got
}
