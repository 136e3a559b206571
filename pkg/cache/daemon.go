package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/s3"
)

// DaemonOptions configure cistern-cache. Flags live in cmd/.
type DaemonOptions struct {
	Socket      string        // control API, a unix socket path
	StateDir    string        // datasets/<key>/mnt and the default disk tier
	MetricsAddr string        // Prometheus metrics, host:port ("" = off)
	Tiers       string        // e.g. "mem:1Gi,disk:/var/lib/cistern/cache:100Gi"
	BlockSize   int64         // cache block size
	LowWater    float64       // evict down to this fraction of a tier's quota
	FreeRatio   float64       // keep this fraction of each tier's file system free
	Grace       time.Duration // how long a released dataset stays mounted
	MaxFetches  int
	// SourceTimeout bounds every request to an object store: a stalled
	// store fails reads with EIO after it.
	SourceTimeout time.Duration
}

// AddFlags registers the options' flags.
func (o *DaemonOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Socket, "socket", "/var/lib/cistern/cache.sock", "control API unix socket")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/cistern", "state directory (dataset mount points, default disk tier)")
	fs.StringVar(&o.MetricsAddr, "metrics-address", "", "serve Prometheus metrics on this host:port (empty: off)")
	fs.StringVar(&o.Tiers, "cache-tiers", "", "cache tiers, hottest first: mem:SIZE (a tmpfs the daemon mounts) and disk:DIR:SIZE (default: disk:<state-dir>/cache:10Gi)")
	fs.Int64Var(&o.BlockSize, "block-size", 4<<20, "cache block size in bytes (a power of two)")
	fs.Float64Var(&o.LowWater, "cache-low", 0.8, "when a tier is full, evict down to this fraction of its quota")
	fs.Float64Var(&o.FreeRatio, "free-space-ratio", 0.1, "keep this fraction of each tier's file system free")
	fs.DurationVar(&o.Grace, "grace", 5*time.Minute, "how long a dataset stays mounted after its last volume is released")
	fs.IntVar(&o.MaxFetches, "max-fetches", 16, "concurrent reads from sources")
	fs.DurationVar(&o.SourceTimeout, "source-timeout", s3.DefaultTimeout, "deadline of each object-store request, retries included (a stalled store fails reads with EIO after it)")
}

// Validate checks the options.
func (o *DaemonOptions) Validate() error {
	var errs []error
	if !filepath.IsAbs(o.Socket) {
		errs = append(errs, fmt.Errorf("--socket %q must be an absolute path", o.Socket))
	}
	if !filepath.IsAbs(o.StateDir) {
		errs = append(errs, fmt.Errorf("--state-dir %q must be an absolute path", o.StateDir))
	}
	if _, err := ParseTiers(o.tiers(), filepath.Join(o.StateDir, "mem")); err != nil {
		errs = append(errs, fmt.Errorf("--cache-tiers: %w", err))
	}
	if o.LowWater < 0 || o.LowWater >= 1 {
		errs = append(errs, fmt.Errorf("--cache-low %g must be below 1 (0: the default, 0.8)", o.LowWater))
	}
	if o.FreeRatio < 0 || o.FreeRatio >= 1 {
		errs = append(errs, fmt.Errorf("--free-space-ratio %g must be below 1 (0: the default, 0.1)", o.FreeRatio))
	}
	if o.SourceTimeout < 0 {
		errs = append(errs, fmt.Errorf("--source-timeout %s must not be negative", o.SourceTimeout))
	}
	if o.Grace < 0 {
		errs = append(errs, fmt.Errorf("--grace %s must not be negative", o.Grace))
	}
	if o.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(o.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("--metrics-address %q: %w", o.MetricsAddr, err))
		}
	}
	return errors.Join(errs...)
}

func (o *DaemonOptions) tiers() string {
	if o.Tiers == "" {
		return "disk:" + filepath.Join(o.StateDir, "cache") + ":10Gi"
	}
	return o.Tiers
}

// MountRequest asks the daemon for a dataset's mount.
type MountRequest struct {
	// Holder names who holds the mount (a volume ID or a target path);
	// the dataset stays mounted while it has holders. Mounting again with
	// the same holder is a no-op.
	Holder        string        `json:"holder"`
	Dataset       string        `json:"dataset"`
	Source        string        `json:"source"`
	ReadOnly      bool          `json:"readOnly"`
	AccessPattern string        `json:"accessPattern,omitempty"` // "" / default, small-files
	MetaCache     time.Duration `json:"metaCache"`
	// Warmup are paths prefetched in the background when the dataset is
	// first mounted ("" = all of it). They do not change what is served,
	// so they are not part of the key.
	Warmup  []string          `json:"warmup,omitempty"`
	Secrets map[string]string `json:"secrets,omitempty"` // never logged
}

// MountResponse says where the dataset is mounted.
type MountResponse struct {
	Key       string `json:"key"`
	MountPath string `json:"mountPath"`
}

// DatasetInfo describes a mounted dataset in stats.
type DatasetInfo struct {
	Key       string       `json:"key"`
	Dataset   string       `json:"dataset"`
	Source    string       `json:"source"`
	ReadOnly  bool         `json:"readOnly"`
	MountPath string       `json:"mountPath"`
	Holders   int          `json:"holders"`
	Reads     int64        `json:"fuseReads"`
	Stats     DatasetStats `json:"stats"`
	// Warmup is the progress of the warm-up started at mount, if any.
	Warmup *WarmupProgress `json:"warmup,omitempty"`
}

// StatsResponse is the daemon's view of the node.
type StatsResponse struct {
	Cache    Stats         `json:"cache"`
	Datasets []DatasetInfo `json:"datasets"`
}

// WarmupProgress is one line of a warm-up's progress stream.
type WarmupProgress struct {
	File       string `json:"file,omitempty"`
	DoneBytes  int64  `json:"doneBytes"`
	TotalBytes int64  `json:"totalBytes"`
	Files      int    `json:"files"`
	Error      string `json:"error,omitempty"`
	Done       bool   `json:"done,omitempty"`
}

// Key returns the dataset key of a request: it hashes the source, the
// options that change what is served, and the identity of the credentials,
// so two secrets never share a mount.
func (r *MountRequest) Key() string {
	h := sha256.New()
	fmt.Fprintf(h, "source=%s\x00ro=%t\x00pattern=%s\x00metacache=%s\x00", r.Source, r.ReadOnly, r.AccessPattern, r.MetaCache)
	keys := make([]string, 0, len(r.Secrets))
	for k := range r.Secrets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "secret:%s=%s\x00", k, r.Secrets[k])
	}
	return hex.EncodeToString(h.Sum(nil)[:10])
}

func (r *MountRequest) validate() error {
	switch {
	case r.Holder == "":
		return errors.New("holder is required")
	case r.Dataset == "":
		return errors.New("dataset is required")
	case !strings.HasPrefix(r.Source, "file:///") && !strings.HasPrefix(r.Source, "s3://"):
		return fmt.Errorf("source %q: this daemon serves file:// and s3:// sources", r.Source)
	case r.AccessPattern != "" && r.AccessPattern != "default" && r.AccessPattern != "small-files":
		return fmt.Errorf("accessPattern %q: want default or small-files", r.AccessPattern)
	case r.AccessPattern == "small-files" && !r.ReadOnly:
		return errors.New("accessPattern small-files needs a read-only dataset (its files must be immutable)")
	case r.MetaCache < 0:
		return errors.New("metaCache must not be negative")
	}
	if strings.HasPrefix(r.Source, "s3://") {
		if _, err := s3.ParseURL(r.Source); err != nil {
			return fmt.Errorf("source: %w", err)
		}
		if _, err := s3.CredentialsFromSecrets(r.Secrets); err != nil {
			return err
		}
		return nil
	}
	p := strings.TrimPrefix(r.Source, "file://")
	if path.Clean(p) != p {
		return fmt.Errorf("source %q is not clean", r.Source)
	}
	return nil
}

// openSource returns the source of a request: the POSIX tree, or an S3
// client with the request's credentials (which live only in this client).
func (d *Daemon) openSource(ctx context.Context, req MountRequest) (Source, error) {
	if !strings.HasPrefix(req.Source, "s3://") {
		src, err := NewPosix(strings.TrimPrefix(req.Source, "file://"))
		if err != nil {
			return nil, &statusError{http.StatusNotFound, err}
		}
		return src, nil
	}
	loc, err := s3.ParseURL(req.Source)
	if err != nil {
		return nil, &statusError{http.StatusBadRequest, err}
	}
	creds, err := s3.CredentialsFromSecrets(req.Secrets)
	if err != nil {
		return nil, &statusError{http.StatusBadRequest, err}
	}
	c, err := s3.New(loc, creds, s3.Config{Timeout: d.opts.SourceTimeout})
	if err != nil {
		return nil, &statusError{http.StatusBadRequest, err}
	}
	// Fail the mount, not the pod's first read, when the store is
	// unreachable or refuses the credentials.
	if _, err := c.DirExists(ctx, ""); err != nil {
		status := http.StatusBadGateway
		switch Errno(err) {
		case unix.EACCES:
			status = http.StatusForbidden
		case unix.ENOENT:
			status = http.StatusNotFound
		}
		return nil, &statusError{status, fmt.Errorf("dataset %s: %w", req.Dataset, err)}
	}
	return NewS3(c, req.MetaCache), nil
}

// mounted is one dataset the daemon serves.
type mounted struct {
	key     string
	req     MountRequest // Secrets cleared
	mnt     string
	fs      *FS
	src     Source
	holders map[string]bool
	timer   *time.Timer        // pending release, or nil
	warm    *WarmupProgress    // guarded by Daemon.mu; the mount-time warm-up
	cancel  context.CancelFunc // stops the mount-time warm-up
}

// Daemon is cistern-cache: one FUSE mount per dataset, one cache for all.
type Daemon struct {
	// immutable after NewDaemon
	opts     DaemonOptions
	cache    *Cache
	memMount string          // the tmpfs of the memory tier, or ""
	ctx      context.Context // cancelled by Close; owns mount-time warm-ups
	stop     context.CancelFunc
	wg       sync.WaitGroup // mount-time warm-ups

	metricsAddr atomic.Value // string: where metrics are served, once listening

	mu       sync.Mutex
	datasets map[string]*mounted      // guarded by mu; by key
	mounting map[string]chan struct{} // guarded by mu; keys being mounted, closed when done
	holders  map[string]string        // guarded by mu; holder -> key
}

// NewDaemon mounts the memory tier (if any) and opens the cache.
func NewDaemon(opts DaemonOptions) (*Daemon, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	memDir := filepath.Join(opts.StateDir, "mem")
	tiers, err := ParseTiers(opts.tiers(), memDir)
	if err != nil {
		return nil, err
	}
	d := &Daemon{opts: opts, datasets: map[string]*mounted{}, mounting: map[string]chan struct{}{}, holders: map[string]string{}}
	d.ctx, d.stop = context.WithCancel(context.Background())
	for _, t := range tiers {
		if t.Name == "mem" {
			if err := MountTmpfs(memDir, t.Quota); err != nil {
				return nil, err
			}
			d.memMount = memDir
		}
	}
	d.cache, err = New(Options{Tiers: tiers, BlockSize: opts.BlockSize, MaxFetches: opts.MaxFetches, LowWater: opts.LowWater, FreeSpaceRatio: opts.FreeRatio})
	if err != nil {
		d.unmountTmpfs()
		return nil, err
	}
	return d, nil
}

// MetricsAddr returns the address metrics are served on ("" until Run
// listens; useful with --metrics-address=127.0.0.1:0).
func (d *Daemon) MetricsAddr() string {
	a, _ := d.metricsAddr.Load().(string)
	return a
}

// Cache returns the daemon's cache (for tests and metrics).
func (d *Daemon) Cache() *Cache { return d.cache }

// MountTmpfs mounts the memory tier: a dedicated tmpfs with transparent
// huge pages for files that fit (reads at page-cache speed).
func MountTmpfs(dir string, size int64) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	_ = unix.Unmount(dir, unix.MNT_DETACH) // a previous run's
	opts := fmt.Sprintf("size=%d,huge=within_size,mode=0700", size)
	if err := unix.Mount("cistern-mem", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		// Older kernels without huge pages for tmpfs.
		if err2 := unix.Mount("cistern-mem", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err2 != nil {
			return fmt.Errorf("mount memory tier at %s: %w", dir, err)
		}
	}
	return nil
}

func (d *Daemon) unmountTmpfs() {
	if d.memMount != "" {
		if err := unix.Unmount(d.memMount, unix.MNT_DETACH); err != nil {
			klog.ErrorS(err, "Unmounting the memory tier failed", "path", d.memMount)
		}
	}
}

// Mount returns the mount of the requested dataset, mounting it on first
// use, and records the holder. The FUSE mount (which touches the source)
// runs outside the daemon's lock: a slow or hung source delays only the
// requests for that dataset, which wait with their own context.
func (d *Daemon) Mount(ctx context.Context, req MountRequest) (MountResponse, error) {
	if err := req.validate(); err != nil {
		return MountResponse{}, &statusError{http.StatusBadRequest, err}
	}
	key := req.Key()
	secrets := req.Secrets
	req.Secrets = nil
	for {
		d.mu.Lock()
		if old, ok := d.holders[req.Holder]; ok && old != key {
			d.mu.Unlock()
			return MountResponse{}, &statusError{http.StatusConflict, fmt.Errorf("holder %q already holds another dataset", req.Holder)}
		}
		if m := d.datasets[key]; m != nil {
			defer d.mu.Unlock()
			return d.attachLocked(m, req.Holder), nil
		}
		if busy := d.mounting[key]; busy != nil {
			d.mu.Unlock()
			select {
			case <-busy: // mounted or failed: look again
				continue
			case <-ctx.Done():
				return MountResponse{}, ctx.Err()
			}
		}
		busy := make(chan struct{})
		d.mounting[key] = busy
		d.mu.Unlock()

		m, err := d.mountDataset(ctx, key, req, secrets)

		d.mu.Lock()
		delete(d.mounting, key)
		close(busy)
		if err != nil {
			d.mu.Unlock()
			return MountResponse{}, err
		}
		d.datasets[key] = m
		if len(req.Warmup) > 0 {
			d.startWarmupLocked(m)
		}
		defer d.mu.Unlock()
		return d.attachLocked(m, req.Holder), nil
	}
}

// startWarmupLocked prefetches the request's warm-up paths in the
// background; progress shows in stats. It stops when the dataset is
// unmounted or the daemon closes.
func (d *Daemon) startWarmupLocked(m *mounted) {
	ctx, cancel := context.WithCancel(d.ctx)
	m.cancel = cancel
	m.warm = &WarmupProgress{}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer cancel()
		err := d.Warmup(ctx, m.key, m.req.Warmup, func(p WarmupProgress) {
			d.mu.Lock()
			*m.warm = p
			d.mu.Unlock()
		})
		if err != nil {
			d.mu.Lock()
			m.warm.Error, m.warm.Done = err.Error(), true
			d.mu.Unlock()
			klog.ErrorS(err, "Mount-time warm-up failed", "dataset", m.req.Dataset, "key", m.key)
			return
		}
		klog.InfoS("Mount-time warm-up done", "dataset", m.req.Dataset, "key", m.key, "files", m.warm.Files, "bytes", m.warm.DoneBytes)
	}()
}

// attachLocked records holder on m and cancels a pending release.
func (d *Daemon) attachLocked(m *mounted, holder string) MountResponse {
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	m.holders[holder] = true
	d.holders[holder] = m.key
	return MountResponse{Key: m.key, MountPath: m.mnt}
}

func (d *Daemon) mountDataset(ctx context.Context, key string, req MountRequest, secrets map[string]string) (*mounted, error) {
	withSecrets := req
	withSecrets.Secrets = secrets
	src, err := d.openSource(ctx, withSecrets)
	if err != nil {
		return nil, err
	}
	mnt := filepath.Join(d.opts.StateDir, "datasets", key, "mnt")
	_ = unix.Unmount(mnt, unix.MNT_DETACH) // left by a crashed daemon
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	fsys, err := Mount(mnt, src, d.cache, FSOptions{
		Dataset:     key,
		ReadOnly:    req.ReadOnly,
		MetaCache:   req.MetaCache,
		SmallFiles:  req.AccessPattern == "small-files",
		Passthrough: req.ReadOnly,
		SpoolDir:    filepath.Join(d.opts.StateDir, "uploads"),
	})
	if err != nil {
		return nil, fmt.Errorf("mount dataset %s: %w", req.Dataset, err)
	}
	klog.InfoS("Dataset mounted", "dataset", req.Dataset, "key", key, "source", req.Source, "readOnly", req.ReadOnly, "mountPath", mnt)
	return &mounted{key: key, req: req, mnt: mnt, fs: fsys, src: src, holders: map[string]bool{}}, nil
}

// Release drops a holder; the dataset is unmounted a grace period after
// its last holder leaves. Releasing an unknown holder is a no-op.
func (d *Daemon) Release(holder string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key, ok := d.holders[holder]
	if !ok {
		return
	}
	delete(d.holders, holder)
	m := d.datasets[key]
	delete(m.holders, holder)
	if len(m.holders) > 0 || m.timer != nil {
		return
	}
	m.timer = time.AfterFunc(d.opts.Grace, func() { d.expire(m) })
}

func (d *Daemon) expire(m *mounted) {
	d.mu.Lock()
	if len(m.holders) > 0 || d.datasets[m.key] != m {
		d.mu.Unlock()
		return
	}
	delete(d.datasets, m.key)
	d.mu.Unlock()
	if m.cancel != nil {
		m.cancel()
	}
	if err := m.fs.Unmount(); err != nil {
		klog.ErrorS(err, "Unmounting a released dataset failed; detaching", "key", m.key)
		_ = unix.Unmount(m.mnt, unix.MNT_DETACH)
	}
	klog.InfoS("Dataset unmounted after its grace period", "dataset", m.req.Dataset, "key", m.key)
}

// Stats returns the daemon's stats.
func (d *Daemon) Stats() StatsResponse {
	d.mu.Lock()
	ms := make([]*mounted, 0, len(d.datasets))
	for _, m := range d.datasets {
		ms = append(ms, m)
	}
	holders := map[string]int{}
	warm := map[string]*WarmupProgress{}
	for _, m := range ms {
		holders[m.key] = len(m.holders)
		if m.warm != nil {
			w := *m.warm
			warm[m.key] = &w
		}
	}
	d.mu.Unlock()
	resp := StatsResponse{Cache: d.cache.Stats()}
	for _, m := range ms {
		resp.Datasets = append(resp.Datasets, DatasetInfo{Key: m.key, Dataset: m.req.Dataset, Source: m.req.Source, ReadOnly: m.req.ReadOnly,
			MountPath: m.mnt, Holders: holders[m.key], Reads: m.fs.Reads.Load(), Stats: d.cache.DatasetStats(m.key), Warmup: warm[m.key]})
	}
	sort.Slice(resp.Datasets, func(i, j int) bool { return resp.Datasets[i].Dataset < resp.Datasets[j].Dataset })
	return resp
}

func (d *Daemon) lookup(key string) (*mounted, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.datasets[key]
	if m == nil {
		return nil, &statusError{http.StatusNotFound, fmt.Errorf("dataset key %q is not mounted", key)}
	}
	return m, nil
}

// Warmup fetches every file under paths of dataset key into the cache,
// reporting progress as it goes.
func (d *Daemon) Warmup(ctx context.Context, key string, paths []string, progress func(WarmupProgress)) error {
	m, err := d.lookup(key)
	if err != nil {
		return err
	}
	type file struct {
		name string
		attr Attr
	}
	var files []file
	var total int64
	var walk func(name string) error
	walk = func(name string) error {
		a, err := m.src.Stat(ctx, name)
		if err != nil {
			return err
		}
		switch {
		case a.Mode.IsDir():
			ents, err := m.src.List(ctx, name)
			if err != nil {
				return err
			}
			for _, e := range ents {
				if err := walk(path.Join(name, e.Name)); err != nil {
					return err
				}
			}
		case a.Mode.IsRegular():
			files = append(files, file{name, a})
			total += a.Size
		}
		return nil
	}
	for _, p := range paths {
		p = strings.Trim(path.Clean("/"+p), "/")
		if err := walk(p); err != nil {
			return &statusError{http.StatusNotFound, err}
		}
	}
	var done int64
	for i, f := range files {
		base := done
		if err := d.cache.Warm(ctx, m.src, key, f.name, f.attr, func(n int64) {
			progress(WarmupProgress{File: f.name, DoneBytes: base + n, TotalBytes: total, Files: i})
		}); err != nil {
			return err
		}
		done += f.attr.Size
		progress(WarmupProgress{File: f.name, DoneBytes: done, TotalBytes: total, Files: i + 1})
	}
	progress(WarmupProgress{DoneBytes: done, TotalBytes: total, Files: len(files), Done: true})
	return nil
}

// Evict drops the cached files of dataset key under prefix.
func (d *Daemon) Evict(key, prefix string) (int, error) {
	if _, err := d.lookup(key); err != nil {
		return 0, err
	}
	return d.cache.Evict(key, strings.Trim(prefix, "/")), nil
}

// Close unmounts every dataset, closes the cache and the memory tier.
func (d *Daemon) Close() error {
	d.stop()
	d.wg.Wait()
	d.mu.Lock()
	ms := d.datasets
	d.datasets = map[string]*mounted{}
	d.holders = map[string]string{}
	d.mu.Unlock()
	var errs []error
	for _, m := range ms {
		if m.timer != nil {
			m.timer.Stop()
		}
		if err := m.fs.Unmount(); err != nil {
			errs = append(errs, err)
			_ = unix.Unmount(m.mnt, unix.MNT_DETACH)
		}
	}
	errs = append(errs, d.cache.Close())
	d.unmountTmpfs()
	return errors.Join(errs...)
}

// statusError carries the HTTP status of a control-API error.
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

// Run serves the control API (and metrics) until ctx is cancelled, then
// closes the daemon.
func (d *Daemon) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(d.opts.Socket), 0o755); err != nil {
		return err
	}
	_ = os.Remove(d.opts.Socket)
	lis, err := net.Listen("unix", d.opts.Socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", d.opts.Socket, err)
	}
	if err := os.Chmod(d.opts.Socket, 0o600); err != nil {
		return err
	}
	srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(lis) }()
	var msrv *http.Server
	if d.opts.MetricsAddr != "" {
		ml, err := net.Listen("tcp", d.opts.MetricsAddr)
		if err != nil {
			srv.Close()
			return fmt.Errorf("metrics listener: %w", err)
		}
		d.metricsAddr.Store(ml.Addr().String())
		msrv = &http.Server{Handler: d.metricsHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- msrv.Serve(ml) }()
	}
	klog.InfoS("Cache daemon serving", "socket", d.opts.Socket, "metrics", d.opts.MetricsAddr, "tiers", d.opts.tiers())
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if msrv != nil {
		_ = msrv.Shutdown(sctx)
	}
	os.Remove(d.opts.Socket)
	return errors.Join(err, d.Close())
}

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/mount", func(w http.ResponseWriter, r *http.Request) {
		var req MountRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := d.Mount(r.Context(), req)
		reply(w, resp, err)
	})
	mux.HandleFunc("POST /v1/release", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Holder string }
		if !decode(w, r, &req) {
			return
		}
		d.Release(req.Holder)
		reply(w, struct{}{}, nil)
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		reply(w, d.Stats(), nil)
	})
	mux.HandleFunc("POST /v1/evict", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Key, Prefix string }
		if !decode(w, r, &req) {
			return
		}
		n, err := d.Evict(req.Key, req.Prefix)
		reply(w, map[string]int{"evicted": n}, err)
	})
	mux.HandleFunc("POST /v1/warmup", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Key   string
			Paths []string
		}
		if !decode(w, r, &req) {
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		fl, _ := w.(http.Flusher)
		var mu sync.Mutex
		last := time.Time{}
		err := d.Warmup(r.Context(), req.Key, req.Paths, func(p WarmupProgress) {
			mu.Lock()
			defer mu.Unlock()
			if !p.Done && time.Since(last) < 100*time.Millisecond {
				return
			}
			last = time.Now()
			_ = enc.Encode(p)
			if fl != nil {
				fl.Flush()
			}
		})
		if err != nil {
			_ = enc.Encode(WarmupProgress{Error: err.Error(), Done: true})
		}
	})
	return mux
}

// maxRequest bounds a control request's body.
const maxRequest = 1 << 20

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		reply(w, nil, &statusError{http.StatusBadRequest, fmt.Errorf("bad request: %w", err)})
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusInternalServerError
		var se *statusError
		if errors.As(err, &se) {
			code = se.code
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}
