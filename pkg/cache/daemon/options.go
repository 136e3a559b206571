package daemon

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/group"
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

	// Group is the cache group this daemon is a member of ("" = none):
	// the datasets whose volumes name it are read through the group.
	Group string
	// GroupListen is where the peer server listens (host:port).
	GroupListen string
	// GroupID names this member in the group (stable across restarts).
	GroupID string
	// GroupTLSDir holds ca.crt, tls.crt and tls.key: the group's CA and
	// this member's certificate (a Secret mounted as a directory).
	GroupTLSDir string
	// GroupMembers is a static member list (ParseMembers), or @FILE for
	// one read from a file (one member per line or comma-separated, read
	// again when it changes).
	GroupMembers string
	// GroupService is NAMESPACE/NAME of the Service whose EndpointSlices
	// list the members (its port named "group").
	GroupService string
	// GroupCacheService is NAMESPACE/NAME of the Service of the group's
	// cache-only members (members by pod name).
	GroupCacheService string
	// GroupDatasets is a directory of datasets this member serves to the
	// group without volumes (a cache-only member; groupserve.go).
	GroupDatasets string
	// GroupDrain is how long a stopping member keeps answering peers
	// while they take its blocks over (0: it stops at once).
	GroupDrain time.Duration
	// GroupDeadline bounds each peer's answer.
	GroupDeadline time.Duration
	// GroupHotAsks is how many asks of a block within a minute make it
	// hot (replicated on the next member of its ranking); 0: never.
	GroupHotAsks int
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
	fs.DurationVar(&o.SleepAfter, "cache-sleep-after", time.Minute, "how long a cached file stays in memory unused before only a small record of it is kept (about 50 bytes; its index is read back from disk on use)")
	fs.IntVar(&o.MaxInodes, "max-inodes", 500000, "files and directories the mounts keep for the kernel (about 0.7 KiB of memory each); beyond it the least recently used idle ones are forgotten and looked up again when used (0: no bound)")
	fs.StringVar(&o.Group, "group", "", "cache group this daemon is a member of (the node's cistern.csi.dev/cache-group); volumes whose cacheGroup names it read each block through the member that owns it (empty: none)")
	fs.StringVar(&o.GroupListen, "group-listen", ":7480", "host:port the group's peer server listens on (mutual TLS)")
	fs.StringVar(&o.GroupID, "group-id", defaultGroupID(), "this member's ID in the group, stable across restarts (default: $NODE_NAME, else the host name)")
	fs.StringVar(&o.GroupTLSDir, "group-tls-dir", "/etc/cistern/group-tls", "directory with ca.crt (the group's CA), tls.crt and tls.key (this member's certificate, signed by the CA)")
	fs.StringVar(&o.GroupMembers, "group-members", "", "static members: ID=HOST:PORT[/WEIGHT],... or @FILE (one per line, read again every 2 s)")
	fs.StringVar(&o.GroupService, "group-service", "", "NAMESPACE/NAME of the Service whose EndpointSlices list the members (port named \"group\"; members by node name)")
	fs.StringVar(&o.GroupCacheService, "group-cache-service", "", "NAMESPACE/NAME of the Service of the group's cache-only members (port named \"group\"; members by pod name)")
	fs.StringVar(&o.GroupDatasets, "group-datasets", "", "directory of <dataset>.json files: datasets served to the group without volumes (a cache-only member)")
	fs.DurationVar(&o.GroupDrain, "group-drain", 0, "on SIGTERM, keep answering peers for up to this long while they take this member's blocks over (ends once no peer asked for 5 s; 0: stop at once). For cache-only members: a node member that restarts keeps its ID and its blocks")
	fs.DurationVar(&o.GroupDeadline, "group-peer-deadline", 2*time.Second, "longest silence of a peer asked for a block before the next member or the source (an owner fetching it from the source says so every 0.5 s, and is waited for up to --source-timeout)")
	fs.IntVar(&o.GroupHotAsks, "group-hot-asks", group.DefaultHotAsks, "asks of one block within a minute that make it hot: the next member in its ranking keeps a copy and answers half its askers (0: no replicas)")
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
	errs = append(errs, o.validateGroup()...)
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

// validateGroup checks the cache group's options.
func (o *Options) validateGroup() []error {
	if o.Group == "" {
		if o.GroupMembers != "" || o.GroupService != "" || o.GroupCacheService != "" || o.GroupDatasets != "" {
			return []error{errors.New("--group-members, --group-service, --group-cache-service and --group-datasets need --group")}
		}
		return nil
	}
	var errs []error
	if !dnsLabel.MatchString(o.Group) {
		errs = append(errs, fmt.Errorf("--group %q must be a DNS label", o.Group))
	}
	if o.GroupID == "" {
		errs = append(errs, errors.New("--group-id is empty (and neither $NODE_NAME nor the host name gives one)"))
	}
	if _, _, err := net.SplitHostPort(o.GroupListen); err != nil {
		errs = append(errs, fmt.Errorf("--group-listen %q: %w", o.GroupListen, err))
	}
	services := o.GroupService != "" || o.GroupCacheService != ""
	switch {
	case (o.GroupMembers == "") == !services:
		errs = append(errs, errors.New("--group needs either --group-members or the Services (--group-service, --group-cache-service)"))
	case services:
		for flag, v := range map[string]string{"--group-service": o.GroupService, "--group-cache-service": o.GroupCacheService} {
			if ns, name, ok := strings.Cut(v, "/"); v != "" && (!ok || !dnsLabel.MatchString(ns) || !dnsLabel.MatchString(name)) {
				errs = append(errs, fmt.Errorf("%s %q: want NAMESPACE/NAME", flag, v))
			}
		}
	case !strings.HasPrefix(o.GroupMembers, "@"):
		if _, err := ParseMembers(o.GroupMembers); err != nil {
			errs = append(errs, fmt.Errorf("--group-members: %w", err))
		}
	}
	if o.GroupDrain < 0 {
		errs = append(errs, fmt.Errorf("--group-drain %s must not be negative", o.GroupDrain))
	}
	if o.GroupHotAsks < 0 {
		errs = append(errs, fmt.Errorf("--group-hot-asks %d: want 0 (no replicas) or more", o.GroupHotAsks))
	}
	if o.GroupDeadline < 2*group.Heartbeat {
		errs = append(errs, fmt.Errorf("--group-peer-deadline %s must be at least %s: an owner fetching a block says so every %s", o.GroupDeadline, 2*group.Heartbeat, group.Heartbeat))
	}
	return errs
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// defaultGroupID is $NODE_NAME (the chart sets it), else the host name.
func defaultGroupID() string {
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}
