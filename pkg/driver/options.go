package driver

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// Mode selects which CSI services a process serves.
type Mode string

const (
	ModeController Mode = "controller"
	ModeNode       Mode = "node"
	ModeAll        Mode = "all"
)

// Options configure the driver. Flags live in cmd/; AddFlags binds them.
type Options struct {
	// Endpoint is the gRPC listen address, unix:///path/to/csi.sock.
	Endpoint string
	// Mode is controller, node or all.
	Mode Mode
	// NodeID names this node (required in node mode).
	NodeID string
	// StateDir holds the node's and controller's local state.
	StateDir string
	// CacheGroup is the pool of cache nodes this node belongs to ("" = none).
	CacheGroup string
	// InlineSources are the source prefixes inline volumes may name, each
	// with its policy: "POLICY:PREFIX" (shared, read-only or read-write),
	// or "PREFIX" for read-only. Empty refuses inline volumes.
	InlineSources []string
	// CacheSocket is the cache daemon's control socket (node and all
	// modes).
	CacheSocket string
	// UnmountTimeout bounds each unmount before it is forced.
	UnmountTimeout time.Duration
	// Version is reported by GetPluginInfo.
	Version string
	// RegistrationDir is the kubelet's plugins_registry directory, where
	// the node plugin registers itself ("" = leave registration to the
	// node-driver-registrar sidecar).
	RegistrationDir string
	// KubeletEndpoint is the CSI socket's path as the kubelet reaches it
	// ("" = the endpoint's own path).
	KubeletEndpoint string
	// RecordsNamespace, in a cluster, is the namespace whose ConfigMaps
	// hold the records of read-only datasets' volumes; DeleteVolume then
	// also checks the cluster's PersistentVolumes ("" = records under
	// StateDir, no PV check: outside a cluster).
	RecordsNamespace string
	// KeeperSocket is where the node plugin keeps the cache daemon's
	// FUSE connections while the daemon restarts ("" = it does not).
	KeeperSocket string
	// HealthAddr is where GET /healthz is served for a liveness probe
	// ("" = not served).
	HealthAddr string
}

// AddFlags registers the options' flags on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix:///path)")
	fs.StringVar((*string)(&o.Mode), "mode", string(ModeAll), "services to serve: controller, node or all")
	fs.StringVar(&o.NodeID, "node-id", "", "this node's name (required for node and all modes)")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/cistern", "directory for local state")
	fs.StringVar(&o.CacheGroup, "cache-group", "", "cache pool this node serves (its nodes are labelled cistern.csi.dev/cache-group=<pool>)")
	fs.Func("inline-sources", "comma-separated POLICY:PREFIX entries inline volumes may use, POLICY shared (read-only to every namespace), read-only or read-write (each namespace its own sub-directory; a bare PREFIX is read-only), e.g. shared:file:///datasets/public/,read-write:s3://scratch/?endpoint=https%3A%2F%2Fs3.example.com (an S3 prefix names its endpoint; empty: inline volumes refused)", func(s string) error {
		o.InlineSources = nil
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				o.InlineSources = append(o.InlineSources, p)
			}
		}
		return nil
	})
	fs.StringVar(&o.CacheSocket, "cache-socket", "/var/lib/cistern/cache.sock", "control socket of the node's cistern-cache daemon")
	fs.DurationVar(&o.UnmountTimeout, "unmount-timeout", 30*time.Second, "how long an unmount may take before it is forced")
	fs.StringVar(&o.RegistrationDir, "plugin-registration-dir", "", "the kubelet's plugin registration directory (<kubelet root>/plugins_registry, as mounted in this container), where the node plugin registers itself; empty: registration is left to the node-driver-registrar sidecar")
	fs.StringVar(&o.RecordsNamespace, "records-namespace", "", "controller in a cluster: keep the records of read-only datasets' volumes as ConfigMaps in this namespace (every replica sees them), and check the cluster's PersistentVolumes before deleting a directory; uses the pod's service account; empty: records under --state-dir, no PV check")
	fs.StringVar(&o.KeeperSocket, "keeper-socket", "", "node plugin: a unix socket where the cache daemon (its --keeper-socket) leaves its datasets' FUSE connections, so a restart of the daemon pauses pods instead of breaking their mounts; empty: none")
	fs.StringVar(&o.HealthAddr, "health-address", "", "host:port to serve GET /healthz on for a liveness probe (200, or 503 with the reason when the cache daemon does not serve or the kubelet refused the registration); empty: not served")
	fs.StringVar(&o.KubeletEndpoint, "kubelet-registration-path", "", "the CSI socket's path on the host, as the kubelet reaches it (e.g. /var/lib/kubelet/plugins/cistern.csi.dev/csi.sock); default: the --endpoint path")
}

// Validate checks the options and says which one is wrong.
func (o *Options) Validate() error {
	var errs []error
	if _, err := SocketPath(o.Endpoint); err != nil {
		errs = append(errs, err)
	}
	switch o.Mode {
	case ModeController, ModeNode, ModeAll:
	default:
		errs = append(errs, fmt.Errorf("--mode %q: want controller, node or all", o.Mode))
	}
	if o.Mode != ModeController && o.NodeID == "" {
		errs = append(errs, fmt.Errorf("--node-id is required with --mode=%s", o.Mode))
	}
	if o.Mode != ModeController && !filepath.IsAbs(o.CacheSocket) {
		errs = append(errs, fmt.Errorf("--cache-socket %q must be an absolute path", o.CacheSocket))
	}
	if !filepath.IsAbs(o.StateDir) {
		errs = append(errs, fmt.Errorf("--state-dir %q must be an absolute path", o.StateDir))
	}
	if o.CacheGroup != "" && !dnsLabel.MatchString(o.CacheGroup) {
		errs = append(errs, fmt.Errorf("--cache-group %q must be a DNS label", o.CacheGroup))
	}
	for _, p := range o.InlineSources {
		if _, err := ParseInlineSource(p); err != nil {
			errs = append(errs, fmt.Errorf("--inline-sources: %w", err))
		}
	}
	if o.RegistrationDir != "" {
		if o.Mode == ModeController {
			errs = append(errs, fmt.Errorf("--plugin-registration-dir is for the node plugin, not --mode=%s", o.Mode))
		}
		if !filepath.IsAbs(o.RegistrationDir) {
			errs = append(errs, fmt.Errorf("--plugin-registration-dir %q must be an absolute path", o.RegistrationDir))
		}
	}
	if o.KeeperSocket != "" && (o.Mode == ModeController || !filepath.IsAbs(o.KeeperSocket)) {
		errs = append(errs, fmt.Errorf("--keeper-socket %q: an absolute path, for the node plugin", o.KeeperSocket))
	}
	if o.RecordsNamespace != "" && !dnsLabel.MatchString(o.RecordsNamespace) {
		errs = append(errs, fmt.Errorf("--records-namespace %q must be a DNS label", o.RecordsNamespace))
	}
	if o.KubeletEndpoint != "" && !filepath.IsAbs(o.KubeletEndpoint) {
		errs = append(errs, fmt.Errorf("--kubelet-registration-path %q must be an absolute path", o.KubeletEndpoint))
	}
	if o.HealthAddr != "" {
		if _, _, err := net.SplitHostPort(o.HealthAddr); err != nil {
			errs = append(errs, fmt.Errorf("--health-address %q: %w", o.HealthAddr, err))
		}
	}
	if o.UnmountTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--unmount-timeout %s must be positive", o.UnmountTimeout))
	}
	return errors.Join(errs...)
}

// checkInlinePrefix accepts a prefix that is a source URL or a directory of
// one (ending in '/').
func checkInlinePrefix(p string) error {
	base, query, hasQuery := strings.Cut(p, "?")
	base = strings.TrimSuffix(base, "/")
	if hasQuery {
		base += "?" + query
	}
	if _, err := api.ParseSource(base); err != nil {
		return fmt.Errorf("prefix %q: %w", p, err)
	}
	return nil
}

// InlinePolicy is what the node's administrator lets inline volumes of a
// source do. The pod's attributes may narrow it, never widen it.
type InlinePolicy string

const (
	// InlineShared: the dataset (or a fixed sub-path of it) read-only to
	// every namespace.
	InlineShared InlinePolicy = "shared"
	// InlineReadOnly: each namespace reads its own sub-directory.
	InlineReadOnly InlinePolicy = "read-only"
	// InlineReadWrite: each namespace reads and writes its own
	// sub-directory.
	InlineReadWrite InlinePolicy = "read-write"
)

// InlineSource is one --inline-sources entry: a source prefix and its
// policy.
type InlineSource struct {
	Prefix string
	Policy InlinePolicy
}

// ParseInlineSource parses an entry "POLICY:PREFIX" (POLICY shared,
// read-only or read-write) or "PREFIX" (read-only).
func ParseInlineSource(entry string) (InlineSource, error) {
	s := InlineSource{Prefix: entry, Policy: InlineReadOnly}
	if pol, rest, ok := strings.Cut(entry, ":"); ok {
		switch InlinePolicy(pol) {
		case InlineShared, InlineReadOnly, InlineReadWrite:
			s = InlineSource{Prefix: rest, Policy: InlinePolicy(pol)}
		}
	}
	if err := checkInlinePrefix(s.Prefix); err != nil {
		return InlineSource{}, err
	}
	return s, nil
}

// inlineRule returns the entry whose prefix src lies under (the longest,
// by whole path segments; for S3 the endpoint must match too).
func inlineRule(src api.Source, entries []string) (InlineSource, bool) {
	var best InlineSource
	found := false
	for _, e := range entries {
		r, err := ParseInlineSource(e)
		if err != nil || !underPrefix(src, r.Prefix) {
			continue
		}
		if !found || len(r.Prefix) > len(best.Prefix) {
			best, found = r, true
		}
	}
	return best, found
}

// inlineAllowed reports whether src lies under one of the entries.
func inlineAllowed(src api.Source, entries []string) bool {
	_, ok := inlineRule(src, entries)
	return ok
}

// underPrefix reports whether src is prefix or lies under it, by whole
// path segments.
func underPrefix(src api.Source, prefix string) bool {
	if src.IsS3() {
		// Bucket, key prefix and endpoint must match: an inline volume
		// must not make the node's daemon talk to a host of its choosing.
		return src.S3.Under(prefix)
	}
	p := strings.TrimSuffix(prefix, "/")
	s := src.String()
	return s == p || strings.HasPrefix(s, p+"/")
}

// inlineAdminKeys are parameters an inline volume may not set: each
// changes what the node mounts (a mount of its own) or how much work it
// does, which is the administrator's to bound.
var inlineAdminKeys = []string{ParamMetaCache, ParamWarmup, ParamPattern, ParamUID, ParamGID, ParamFileMode, ParamDirMode}

// admits checks an inline volume's parameters against the policy: they
// may narrow it (read-only where it allows writing, one namespace where it
// shares), never widen it.
func (r InlineSource) admits(p *Params, attrs map[string]string) error {
	for _, k := range inlineAdminKeys {
		if _, ok := attrs[k]; ok {
			return status.Errorf(codes.InvalidArgument, "inline volume: parameter %s is set by the node's administrator, not by a pod", k)
		}
	}
	switch {
	case p.Shared && r.Policy != InlineShared:
		return status.Errorf(codes.PermissionDenied, "inline volume: source %s is %s per namespace on this node; shared=true would show other namespaces' data", p.Source.URL(), r.Policy)
	case !p.ReadOnly() && r.Policy != InlineReadWrite:
		return status.Errorf(codes.PermissionDenied, "inline volume: source %s is %s on this node; access=read-write is not allowed", p.Source.URL(), r.Policy)
	}
	return nil
}

// SocketPath returns the file path of a unix:// endpoint.
func SocketPath(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" || u.Host != "" || !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("--endpoint %q: want unix:///absolute/path", endpoint)
	}
	return u.Path, nil
}
