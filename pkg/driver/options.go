package driver

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

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
	// InlineSources are the source prefixes inline volumes may name. Empty
	// refuses inline volumes.
	InlineSources []string
	// CacheSocket is the cache daemon's control socket (node and all
	// modes).
	CacheSocket string
	// UnmountTimeout bounds each unmount before it is forced.
	UnmountTimeout time.Duration
	// Version is reported by GetPluginInfo.
	Version string
}

// AddFlags registers the options' flags on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix:///path)")
	fs.StringVar((*string)(&o.Mode), "mode", string(ModeAll), "services to serve: controller, node or all")
	fs.StringVar(&o.NodeID, "node-id", "", "this node's name (required for node and all modes)")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/cistern", "directory for local state")
	fs.StringVar(&o.CacheGroup, "cache-group", "", "cache pool this node serves (topology key cistern.csi.dev/cache-group)")
	fs.Func("inline-sources", "comma-separated source prefixes inline volumes may use, e.g. file:///datasets/,s3://public/?endpoint=https%3A%2F%2Fs3.example.com (an S3 prefix names its endpoint; empty: inline volumes refused)", func(s string) error {
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
		if err := checkInlinePrefix(p); err != nil {
			errs = append(errs, fmt.Errorf("--inline-sources: %w", err))
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

// inlineAllowed reports whether src is one of prefixes or lies under one, by
// whole path segments.
func inlineAllowed(src api.Source, prefixes []string) bool {
	if src.IsS3() {
		// Bucket, key prefix and endpoint must match: an inline volume
		// must not make the node's daemon talk to a host of its choosing.
		for _, p := range prefixes {
			if src.S3.Under(p) {
				return true
			}
		}
		return false
	}
	s := src.String()
	for _, p := range prefixes {
		p = strings.TrimSuffix(p, "/")
		if s == p || strings.HasPrefix(s, p+"/") {
			return true
		}
	}
	return false
}

// SocketPath returns the file path of a unix:// endpoint.
func SocketPath(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" || u.Host != "" || !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("--endpoint %q: want unix:///absolute/path", endpoint)
	}
	return u.Path, nil
}
