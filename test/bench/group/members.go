package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/group"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// countingSource counts a source's reads and bytes.
type countingSource struct {
	*posix.Source
	reads, bytes atomic.Int64
}

func (s *countingSource) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	n, err := s.Source.ReadAt(ctx, name, p, off)
	s.reads.Add(1)
	s.bytes.Add(int64(n))
	return n, err
}

// member is one cache of an in-process group: its own tier, a peer server
// on loopback TLS, the shared source.
type member struct {
	id    string
	cache *cache.Cache
	ds    *cache.Dataset
	lis   net.Listener
	hs    *http.Server
	peer  *group.Server
	node  *group.Node
	addr  string
}

// startMembers starts n members (cache tiers of quota bytes under dir)
// serving src as one group; stop ends them. The first placement is over
// the first owners members (the others use the group as clients until
// setRing places blocks on them too).
func startMembers(n, owners int, dir string, src source.Source, key string, quota, blockSize int64) (ms []*member, stop func(), err error) {
	ca, cert, pkey, err := group.NewPKI("bench")
	if err != nil {
		return nil, nil, err
	}
	stc, ctc, err := group.TLSConfigs(cert, pkey, ca)
	if err != nil {
		return nil, nil, err
	}
	stop = func() {
		for _, m := range ms {
			m.hs.Close() // its listener and connections
			m.cache.Close()
		}
	}
	var ring []group.Member
	var nodes []*group.Node
	for i := range n {
		c, err := cache.New(cache.Options{Tiers: []cache.TierOptions{{Name: "disk", Dir: filepath.Join(dir, fmt.Sprint("member-", i)), Quota: quota}}, BlockSize: blockSize})
		if err != nil {
			stop()
			return nil, nil, err
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			c.Close()
			stop()
			return nil, nil, err
		}
		m := &member{id: fmt.Sprint("node-", i), cache: c, ds: c.Dataset("local", src), lis: lis}
		ms = append(ms, m)
		srv := group.NewServer()
		srv.Serve(key, group.DatasetSource(m.ds))
		// (A refused client's handshake error is the expected answer.)
		hs := &http.Server{Handler: srv, ErrorLog: log.New(io.Discard, "", 0)}
		m.hs, m.peer = hs, srv
		go hs.Serve(tls.NewListener(lis, stc))
		if i < owners {
			ring = append(ring, group.Member{ID: m.id, Addr: lis.Addr().String(), Weight: 1})
		}
		m.addr = lis.Addr().String()
		node := &group.Node{Self: m.id, Client: &group.Client{HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: ctc, MaxIdleConnsPerHost: 64}},
			Deadline: 30 * time.Second}}
		nodes = append(nodes, node)
		m.node = node
		m.ds.JoinGroup(key, node)
	}
	r, err := group.NewRing(ring)
	if err != nil {
		stop()
		return nil, nil, err
	}
	for _, node := range nodes {
		node.SetRing(r)
	}
	return ms, stop, nil
}

// setRing places blocks over all of ms, on every member.
func setRing(ms []*member) error {
	var list []group.Member
	for _, m := range ms {
		list = append(list, group.Member{ID: m.id, Addr: m.addr, Weight: 1})
	}
	r, err := group.NewRing(list)
	if err != nil {
		return err
	}
	for _, m := range ms {
		m.node.SetRing(r)
	}
	return nil
}

// readFile reads name whole through ds with 1 MiB reads.
func readFile(ds *cache.Dataset, src source.Source, name string) error {
	a, err := src.Stat(context.Background(), name)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < a.Size; off += int64(len(buf)) {
		n, err := ds.ReadAt(context.Background(), name, a, buf, off)
		if err != nil && err != io.EOF {
			return err
		}
		if want := min(int64(len(buf)), a.Size-off); int64(n) != want {
			return fmt.Errorf("%s at %d: read %d bytes, want %d", name, off, n, want)
		}
	}
	return nil
}

// writeFile writes size random-looking bytes (pattern) to path.
func writeFile(path string, size int64, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, pattern(size, seed), 0o644)
}

// pattern returns size random-looking bytes made from seed.
func pattern(size int64, seed uint64) []byte {
	b := make([]byte, size+7)
	x := seed*0x9e3779b97f4a7c15 + 1
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	return b[:size]
}

// readAll has every member read every name at once (one goroutine per
// member) and returns the first error.
func readAll(ms []*member, src source.Source, names []string) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(ms))
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, name := range names {
				if err := readFile(m.ds, src, name); err != nil {
					errs <- fmt.Errorf("%s: %w", m.id, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// rogue asks member m for a block as a process without a certificate of
// the group (it trusts the group's CA, so only the member's refusal stops
// it) and reports whether it was refused, and how.
func rogue(m *member, key string) (bool, string) {
	ca, _, _, err := group.NewPKI("rogue")
	if err != nil {
		return false, err.Error()
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	c := &group.Client{HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, ServerName: group.ServerName, InsecureSkipVerify: true}}}, Deadline: 5 * time.Second}
	_, _, err = c.Fetch(context.Background(), []group.Member{{ID: m.id, Addr: m.lis.Addr().String()}}, key, "cold", "any", 0, 1<<20)
	if err == nil {
		return false, "served a block"
	}
	return true, "refused (" + lastLine(err.Error()) + ")"
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return s
}
