package daemon

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/s3store"
)

// Options configure cistern-cache. Flags live in cmd/.
type Options struct {
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
	// Keeper is the unix socket of the keeper that holds the FUSE
	// connections across restarts of the daemon ("" = none: a restart
	// breaks the mounts of running pods).
	Keeper string
	// MaxInodes bounds the files and directories all mounts hold for
	// the kernel (about 0.7 KiB of daemon memory each); over it the
	// least recently used idle ones are forgotten (0 = no bound).
	MaxInodes int
	// SleepAfter is how long a cached file stays in memory unused before
	// only a small record of it is kept (its index is read back on use).
	SleepAfter time.Duration
}

// AddFlags registers the options' flags.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Socket, "socket", "/var/lib/cistern/cache.sock", "control API unix socket")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/cistern", "state directory (dataset mount points, default disk tier)")
	fs.StringVar(&o.MetricsAddr, "metrics-address", "", "serve Prometheus metrics on this host:port (empty: off)")
	fs.StringVar(&o.Tiers, "cache-tiers", "", "cache tiers, hottest first: mem:SIZE (a tmpfs the daemon mounts) and disk:DIR:SIZE (default: disk:<state-dir>/cache:10Gi)")
	fs.Int64Var(&o.BlockSize, "block-size", 4<<20, "cache block size in bytes (a power of two)")
	fs.Float64Var(&o.LowWater, "cache-low", 0.8, "when a tier is full, evict down to this fraction of its quota")
	fs.Float64Var(&o.FreeRatio, "free-space-ratio", 0.1, "keep this fraction of each tier's file system free")
	fs.StringVar(&o.Keeper, "keeper-socket", "", "unix socket of the keeper (the node plugin's --keeper-socket) that holds the datasets' FUSE connections while this daemon restarts, so pods see a pause instead of broken mounts; empty: none")
	fs.DurationVar(&o.Grace, "grace", 5*time.Minute, "how long a dataset stays mounted after its last volume is released")
	fs.IntVar(&o.MaxFetches, "max-fetches", 64, "concurrent reads from sources (besides, at most 16 blocks' bytes are read at once)")
	fs.DurationVar(&o.SleepAfter, "cache-sleep-after", time.Minute, "how long a cached file stays in memory unused before only a small record of it is kept (about 60 bytes; its index is read back from disk on use)")
	fs.IntVar(&o.MaxInodes, "max-inodes", 500000, "files and directories the mounts keep for the kernel (about 0.7 KiB of memory each); beyond it the least recently used idle ones are forgotten and looked up again when used (0: no bound)")
	fs.DurationVar(&o.SourceTimeout, "source-timeout", s3store.DefaultTimeout, "deadline of each object-store request, retries included (a stalled store fails reads with EIO after it)")
}

// Validate checks the options.
func (o *Options) Validate() error {
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
	if o.SleepAfter < 0 {
		errs = append(errs, fmt.Errorf("--cache-sleep-after %s must not be negative", o.SleepAfter))
	}
	if o.MaxInodes < 0 {
		errs = append(errs, fmt.Errorf("--max-inodes %d must not be negative", o.MaxInodes))
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

func (o *Options) tiers() string {
	if o.Tiers == "" {
		return "disk:" + filepath.Join(o.StateDir, "cache") + ":10Gi"
	}
	return o.Tiers
}
