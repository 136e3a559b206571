package api

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/cistern-csi/cistern/pkg/cache/s3store"
)

// Source is where a dataset's data lives, as the driver's parameters and
// volume IDs and the daemon's mount requests name it.
type Source struct {
	// Scheme is "file" or "s3".
	Scheme string
	// Path is the absolute, clean root of a file:// dataset on the node.
	Path string
	// S3 is an s3:// dataset's bucket, prefix and connection options.
	S3 s3store.Location
}

// IsS3 reports whether the source is an object store.
func (s Source) IsS3() bool { return s.Scheme == "s3" }

// String returns the canonical URL of the source, with an S3 source's
// connection options (endpoint, region, addressing, anonymous) as a query:
// it is what volume IDs and the cache daemon carry. It never carries
// credentials: they are not part of a Source.
func (s Source) String() string {
	if s.IsS3() {
		return s.S3.String()
	}
	return s.Scheme + "://" + s.Path
}

// URL is the source as a user writes it in the source parameter: without
// the S3 connection options, which have their own parameters.
func (s Source) URL() string {
	if s.IsS3() {
		return s.S3.Base()
	}
	return s.String()
}

// ParseSource parses and validates a source URL: file:///absolute/path
// (clean, not the node's root) or s3://bucket/prefix with an optional
// canonical query of connection options. The driver (parameters, volume
// IDs) and the daemon (mount requests) apply this one rule.
func ParseSource(raw string) (Source, error) {
	if raw == "" {
		return Source{}, fmt.Errorf("source is required")
	}
	if strings.IndexByte(raw, 0) >= 0 {
		return Source{}, fmt.Errorf("source must not contain a NUL byte")
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return Source{}, fmt.Errorf("source %q is not a URL: want file:///path or s3://bucket/prefix", raw)
	}
	switch scheme {
	case "file":
	case "s3":
		loc, err := s3store.ParseURL(raw)
		if err != nil {
			return Source{}, fmt.Errorf("source: %w", err)
		}
		return Source{Scheme: scheme, S3: loc}, nil
	case "juicefs":
		return Source{}, fmt.Errorf("source scheme %s:// is not supported yet (this build serves file:// and s3://)", scheme)
	default:
		return Source{}, fmt.Errorf("source scheme %q is unknown: want file://, s3:// or juicefs://", scheme)
	}
	// Everything after file:// is a literal path: no host, no user, no
	// URL escapes.
	p := rest
	if !strings.HasPrefix(p, "/") {
		return Source{}, fmt.Errorf("source %q: a file:// source is file:///absolute/path, with no host or user", raw)
	}
	if path.Clean(p) != p || p == "/" {
		return Source{}, fmt.Errorf("source %q: the path must be absolute, clean (no '..', '.', '//' or trailing '/') and not '/'", raw)
	}
	return Source{Scheme: scheme, Path: p}, nil
}

// An S3 source's connection options, as dataset parameters name them.
const (
	OptEndpoint   = "endpoint"
	OptRegion     = "region"
	OptAddressing = "addressing"
	OptAnonymous  = "anonymous"
)

// ApplyOptions sets an S3 source's connection options from the dataset
// parameters m (other keys are not looked at); they are refused for any
// other source.
func (s *Source) ApplyOptions(m map[string]string) error {
	for _, k := range []string{OptEndpoint, OptRegion, OptAddressing, OptAnonymous} {
		if _, ok := m[k]; ok && !s.IsS3() {
			return fmt.Errorf("parameter %s applies to s3:// sources only", k)
		}
	}
	if !s.IsS3() {
		return nil
	}
	l := &s.S3
	l.Endpoint, l.Region, l.Addressing = m[OptEndpoint], m[OptRegion], m[OptAddressing]
	if v, ok := m[OptAnonymous]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("parameter %s %q must be true or false", OptAnonymous, v)
		}
		l.Anonymous = b
	}
	if err := l.CheckOptions(); err != nil {
		return fmt.Errorf("parameter %w", err)
	}
	return nil
}
