package cache

import (
	"container/list"
	"context"
	"errors"
	"io"
	"io/fs"
	"sync"
	"time"
)

// A cache group (pkg/cache/group) makes the caches of several nodes one:
// each block of a dataset in the group has one owner, which fetches it
// from the source once and stores it; the other members ask the owner and
// serve what it sends without storing it, so the group's capacity is the
// sum of its members'.

// Peers is a cache group as the engine sees it.
type Peers interface {
	// Block returns block index (size bytes) of file name at version
	// object of the group's dataset from the member that owns it. owned: this member
	// owns it (or is the one left to fetch it), and reads the source
	// and stores the block itself; or b is a hot block this member keeps
	// a copy of, its replica.
	Block(ctx context.Context, dataset, name, object string, index int64, size int) (b []byte, owned bool, err error)
	// FromPrevious returns the block from the member that owned it
	// before the last change of members, if this member owns it now:
	// for a block a peer asked for, which the owner reads from no other
	// member (an error: read the source).
	FromPrevious(ctx context.Context, dataset, name, object string, index int64, size int) ([]byte, error)
	// Owns tells whether this member owns the block now.
	Owns(dataset, object string, index int64) bool
}

// group is a dataset's membership of a cache group.
type group struct {
	key   string // the dataset's key in the group
	peers Peers
}

// JoinGroup makes the dataset's misses ask the group's members (peers)
// before the source; key is the dataset's key in the group. A nil peers
// leaves the group.
func (d *Dataset) JoinGroup(key string, peers Peers) {
	d.c.mu.Lock()
	ct := d.c.countersLocked(d.key)
	d.c.mu.Unlock()
	if peers == nil {
		ct.group.Store(nil)
		return
	}
	ct.group.Store(&group{key: key, peers: peers})
}

// ErrVersion: the file is not at the version a peer asked for.
var ErrVersion = errors.New("the file is at another version")

// PeerBlock returns block index of name at version object for a member
// of the dataset's group that asked this one, its owner: from the cache,
// or read from the source once (however many ask at once) and stored.
// It never asks the group in turn, nor reads ahead.
//
// A file known by its path (an object's) whose item in memory is at that
// version is served without asking the source for its attributes again
// (on S3 a request of its own); the asker named the version it wants.
func (d *Dataset) PeerBlock(ctx context.Context, name, object string, index int64) ([]byte, error) {
	return d.peerRead(ctx, fileRef{src: d.src, name: name, fromPeer: true}, object, index)
}

// ReplicaBlock is PeerBlock for a member that asked this one for a hot
// block as its replica: from the cache, or from the group (its owner) once
// and kept (pkg/cache/group's hot.go explains hot blocks).
func (d *Dataset) ReplicaBlock(ctx context.Context, name, object string, index int64) ([]byte, error) {
	return d.peerRead(ctx, fileRef{src: d.src, name: name, replica: true}, object, index)
}

// peerRead reads block index of ref's file at version object whole.
func (d *Dataset) peerRead(ctx context.Context, ref fileRef, object string, index int64) ([]byte, error) {
	it, buf, err := d.peerItem(ctx, ref.name, object, index)
	if err != nil {
		return nil, err
	}
	n, err := it.readBlock(ctx, ref, index, buf, 0)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
		return nil, err
	}
	return buf[:n], nil
}

// CachedBlock is PeerBlock from the cache only: fs.ErrNotExist when the
// block is not stored here. The previous owner of a block answers its new
// owner so during a hand-off: it neither fetches a block it no longer
// owns nor asks anyone (two members whose views of the group differ
// would otherwise ask each other).
func (d *Dataset) CachedBlock(ctx context.Context, name, object string, index int64) ([]byte, error) {
	it, buf, err := d.peerItem(ctx, name, object, index)
	if err != nil {
		return nil, err
	}
	if !it.verify(index) {
		return nil, fs.ErrNotExist
	}
	if n, err := it.pread(buf, index*d.c.opts.BlockSize); n != len(buf) || (err != nil && !errors.Is(err, io.EOF)) {
		return nil, fs.ErrNotExist
	}
	it.env.total.hits.Add(1)
	it.ctr.hits.Add(1)
	return buf, nil
}

// peerItem returns the item of name at version object and a buffer the
// size of block index.
func (d *Dataset) peerItem(ctx context.Context, name, object string, index int64) (*Item, []byte, error) {
	it, size := d.c.itemAtVersion(d.key, name, object)
	if it == nil {
		a, err := d.src.Stat(ctx, name)
		if err != nil {
			return nil, nil, err
		}
		if a.Fingerprint() != object {
			return nil, nil, ErrVersion
		}
		if it, err = d.c.item(d.key, name, a); err != nil {
			return nil, nil, err
		}
		size = a.Size
	}
	bs := d.c.opts.BlockSize
	off := index * bs
	if index < 0 || off >= size {
		return nil, nil, io.EOF
	}
	return it, make([]byte, min(bs, size-off)), nil
}

// itemAtVersion returns the item in memory of dataset's file known by
// path name (not by inode), if it is at version fingerprint, and its size.
func (c *Cache) itemAtVersion(dataset, name, fingerprint string) (*Item, int64) {
	c.mu.Lock()
	it := c.items[itemKey(dataset, name)]
	c.mu.Unlock()
	if it == nil {
		return nil, 0
	}
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.fingerprint != fingerprint || it.removed {
		return nil, 0
	}
	it.atime.Store(time.Now().UnixNano())
	return it, it.size
}

// fromGroup fills call with block b from the group, if the item's dataset
// is in one, another member owns the block and it answers: true. The
// block is not stored (its owner keeps it), only borrowed for a while;
// unless this member owns it and its previous owner sent it (a change of
// members), or it is a hot block's replica: then it is stored as if read
// from the source.
func (it *Item) fromGroup(ref fileRef, b int64, gen uint64, fingerprint string, call *fetchCall) bool {
	g := it.ctr.group.Load()
	if g == nil {
		return false
	}
	if ref.fromPeer {
		data, err := g.peers.FromPrevious(it.env.fetch.ctx, g.key, ref.name, fingerprint, b, len(call.buf))
		if err != nil || len(data) != len(call.buf) {
			return false
		}
		it.env.total.peerBytes.Add(int64(len(data)))
		it.ctr.peerBytes.Add(int64(len(data)))
		copy(call.buf, data)
		call.progress(len(data))
		it.keep(b, call.buf, gen)
		return true
	}
	key := borrowKey{dataset: g.key, object: fingerprint, index: b}
	data := it.env.borrowed.get(key)
	keep := ref.replica // a replica keeps what the owner sends
	if data == nil {
		var err error
		// Asking the owner, peers' requests for the block must not wait
		// on this fetch (fetchTry); an owner asks only the block's
		// previous owner, which asks no one: they may.
		call.asking.Store(!g.peers.Owns(g.key, fingerprint, b))
		var owned bool
		data, owned, err = g.peers.Block(it.env.fetch.ctx, g.key, ref.name, fingerprint, b, len(call.buf))
		call.asking.Store(false)
		if err != nil || len(data) != len(call.buf) {
			if err != nil {
				it.env.log.V(3).Info("No peer served a block; reading the source", "path", ref.name, "block", b, "err", err.Error())
			}
			return false
		}
		if keep = keep || owned; !keep {
			it.env.borrowed.put(key, data)
		}
		it.env.total.peerBytes.Add(int64(len(data)))
		it.ctr.peerBytes.Add(int64(len(data)))
	}
	if len(data) != len(call.buf) {
		return false
	}
	copy(call.buf, data)
	call.progress(len(data))
	if keep {
		it.keep(b, call.buf, gen)
	}
	return true
}

// keep stores block b, which this member owns, sent by its previous owner.
func (it *Item) keep(b int64, buf []byte, gen uint64) {
	if err := it.store(b, buf, gen); err != nil && !errors.Is(err, errTierFull) && !errors.Is(err, errRemoved) {
		it.tier.writeFailed(it.env.log, err)
	}
}

// borrowed keeps the blocks other members sent, the most recently used
// up to a byte bound: FUSE reads are 128 KiB to 1 MiB and blocks 4 MiB,
// and a block read ahead is fetched before its reader asks; without it
// each of them asked the owner for the whole block again.
type borrowed struct {
	mu    sync.Mutex
	max   int64
	size  int64                       // guarded by mu
	order *list.List                  // guarded by mu; of *borrowedBlock, most recent first
	byKey map[borrowKey]*list.Element // guarded by mu
}

// borrowKey names a block of a version of a file of a group's dataset
// (two names of one version share it: their bytes are the same).
type borrowKey struct {
	dataset, object string
	index           int64
}

type borrowedBlock struct {
	key  borrowKey
	data []byte
}

func newBorrowed(max int64) *borrowed {
	return &borrowed{max: max, order: list.New(), byKey: map[borrowKey]*list.Element{}}
}

func (b *borrowed) get(k borrowKey) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.byKey[k]
	if e == nil {
		return nil
	}
	b.order.MoveToFront(e)
	return e.Value.(*borrowedBlock).data
}

func (b *borrowed) put(k borrowKey, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.byKey[k]; e != nil || int64(len(data)) > b.max {
		return
	}
	b.byKey[k] = b.order.PushFront(&borrowedBlock{key: k, data: data})
	b.size += int64(len(data))
	for b.size > b.max {
		e := b.order.Back()
		old := e.Value.(*borrowedBlock)
		b.order.Remove(e)
		delete(b.byKey, old.key)
		b.size -= int64(len(old.data))
	}
}
