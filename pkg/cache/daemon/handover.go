package daemon

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/fusefs"
	"github.com/cistern-csi/cistern/pkg/cache/fusefs/session"
	"github.com/cistern-csi/cistern/pkg/cache/keeper"
)

// With a keeper (--keeper-socket), every dataset is served by a session
// whose connection the keeper also holds, with the mount request and the
// holders: a daemon that dies leaves the mounts alive (requests wait in the
// kernel), and the next one takes them back at start; SIGTERM answers what
// was read and exits without unmounting.

// fsOptions are the file system options of a dataset's mount.
func (d *Daemon) fsOptions(key string, req api.MountRequest, m *mounted) fusefs.Options {
	datasets := filepath.Join(d.opts.StateDir, "datasets")
	return fusefs.Options{
		Name:        key,
		ReadOnly:    req.ReadOnly,
		MetaCache:   req.MetaCache,
		SmallFiles:  m.pattern == api.PatternSmallFiles,
		Passthrough: req.ReadOnly,
		SpoolDir:    filepath.Join(d.opts.StateDir, "uploads"),
		InodeTable:  filepath.Join(datasets, key, "inodes"),
		Hidden:      []string{api.ReservedDir},
		Logger:      m.log,
	}
}

// handOver gives the keeper m's entry: with the connection's descriptor
// (a new mount, a keeper that restarted) or only the holders.
func (d *Daemon) handOver(m *mounted, withDev bool) {
	if d.keeper == nil {
		return
	}
	m.handMu.Lock() // in order: the holders sent last are the latest
	defer m.handMu.Unlock()
	if m.dropped {
		// Released and unmounted while this hand-over waited (a
		// keeper restart noticed at that moment): putting it back
		// would leave the keeper a dead connection.
		return
	}
	conn, ok := m.fs.Conn()
	if !ok {
		return
	}
	d.mu.Lock()
	holders := make([]string, 0, len(m.holders))
	for h := range m.holders {
		holders = append(holders, h)
	}
	d.mu.Unlock()
	slices.Sort(holders)
	req := m.req
	req.Secrets = m.secrets
	e := keeper.Entry{Key: m.key, Request: req, Pattern: m.pattern, Holders: holders, Init: conn.Init, Epoch: conn.Epoch}
	if withDev {
		e.Dev = conn.Dev
	}
	if err := d.keeper.Put(e); err != nil {
		m.log.Error(err, "Handing the dataset's connection to the keeper failed: a restart of this daemon will break its mounts")
	}
}

// dropFromKeeper takes m's connection from the keeper for good: m is
// being unmounted.
func (d *Daemon) dropFromKeeper(m *mounted) {
	if d.keeper == nil {
		return
	}
	m.handMu.Lock()
	defer m.handMu.Unlock()
	m.dropped = true
	if err := d.keeper.Drop(m.key); err != nil {
		m.log.Error(err, "The keeper did not drop the dataset's connection; the mount ends when it is unmounted")
	}
}

// resumeAll takes back the connections the keeper holds, before anything
// looks at the mounts (a held mount no daemon serves does not answer). One
// that cannot be served again is dropped: its mount then ends (ENOTCONN)
// and is swept.
func (d *Daemon) resumeAll() {
	entries, err := d.keeper.List()
	if err != nil {
		d.log.Info("No FUSE connections to take back from the keeper", "reason", err)
		return
	}
	// All at once: pods of every dataset wait until theirs is served,
	// and one slow dataset must not hold back the others.
	var wg sync.WaitGroup
	for _, e := range entries {
		wg.Go(func() {
			defer e.Dev.Close() // the session serves a duplicate
			if err := d.resume(e); err != nil {
				d.log.Error(err, "A dataset's connection could not be taken back; its mounts end", "key", e.Key)
				_ = d.keeper.Drop(e.Key)
			}
		})
	}
	wg.Wait()
}

// resume serves a kept connection again.
func (d *Daemon) resume(e keeper.Entry) error {
	req := e.Request
	if err := req.Validate(); err != nil {
		return err
	}
	// The key hashes the credentials too: computed before they are
	// set aside, as Mount does.
	if got := req.Key(d.salt); got != e.Key {
		return fmt.Errorf("the kept request makes key %s, not %s", got, e.Key)
	}
	secrets := req.Secrets
	req.Secrets = nil
	mnt := filepath.Join(d.opts.StateDir, "datasets", e.Key, "mnt")
	if !slices.Contains(cisternMounts(), mnt) {
		return fmt.Errorf("%s is not mounted", mnt)
	}
	log := d.log.WithValues("dataset", req.Dataset, "key", e.Key)
	ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
	defer cancel()
	// No probe of the store: it answered when the dataset was mounted,
	// and pods wait for this (a store that is down now fails their
	// reads, as it would had the daemon not restarted).
	src, err := d.openSource(ctx, req, secrets, false, log)
	if err != nil {
		return err
	}
	// The pattern the connection was served with (the kernel remembers
	// no-open mode); an entry of an older daemon has the request's only.
	m := &mounted{key: e.Key, req: req, secrets: secrets, mnt: mnt, log: log, holders: map[string]bool{}, pattern: cmp.Or(e.Pattern, req.AccessPattern)}
	m.ds = d.cache.Dataset(e.Key, src)
	d.joinGroup(m)
	started := time.Now()
	m.fs, err = fusefs.Resume(mnt, m.ds, d.fsOptions(e.Key, req, m), session.Conn{Dev: e.Dev, Init: e.Init, Epoch: e.Epoch})
	if err != nil {
		d.leaveGroup(m)
		return err
	}
	d.mu.Lock()
	d.datasets[e.Key] = m
	for _, h := range e.Holders {
		m.holders[h] = true
		d.holders[h] = e.Key
	}
	if len(m.holders) == 0 {
		m.timer = time.AfterFunc(d.opts.Grace, func() { d.expire(m) })
	}
	d.mu.Unlock()
	d.handOver(m, true) // the new epoch
	log.Info("Dataset taken back from the keeper", "mountPath", mnt, "holders", len(e.Holders), "took", time.Since(started))
	return nil
}

// watchKeeper gives a keeper that restarted (it holds nothing) every
// connection again.
func (d *Daemon) watchKeeper() {
	defer d.wg.Done()
	last := ""
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if id, err := d.keeper.Hello(); err == nil && id != last {
			if last != "" {
				d.log.Info("The keeper restarted: handing it every connection again")
			}
			last = id
			d.mu.Lock()
			ms := make([]*mounted, 0, len(d.datasets))
			for _, m := range d.datasets {
				ms = append(ms, m)
			}
			d.mu.Unlock()
			for _, m := range ms {
				d.handOver(m, true)
			}
		}
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// handOverAll is Close with a keeper: each mount a volume holds answers
// what it read and is left to the keeper, mounted; the others (released,
// in their grace period) are returned to be unmounted as without a keeper.
func (d *Daemon) handOverAll(ms map[string]*mounted) (unheld map[string]*mounted, errs []error) {
	unheld = map[string]*mounted{}
	for key, m := range ms {
		if len(m.holders) == 0 {
			d.dropFromKeeper(m)
			unheld[key] = m
			continue
		}
		if m.timer != nil {
			m.timer.Stop()
		}
		d.handOver(m, true)
		if err := m.fs.Drain(); err != nil {
			errs = append(errs, err)
		}
		m.log.Info("Dataset left to the keeper for the next daemon")
	}
	return unheld, errs
}
