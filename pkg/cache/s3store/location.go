// Package s3 is Cistern's client for S3-compatible object stores (AWS S3,
// Alibaba OSS, MinIO, Ceph RGW): where a dataset lives, its credentials, and
// the few operations the cache and the controller need, with retries, a
// deadline on every request and errors mapped to errno.
package s3store

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Location is where an S3 dataset lives. It holds nothing secret.
type Location struct {
	Bucket string
	// Prefix is the dataset's key prefix: "" (the whole bucket) or
	// segments joined by '/', with no leading or trailing '/'.
	Prefix string
	// Endpoint is the store's URL, scheme and host only
	// ("https://oss-cn-hangzhou.aliyuncs.com", "http://127.0.0.1:9000");
	// "" is AWS S3.
	Endpoint string
	// Region is the signing region; "" is us-east-1 (or what the
	// endpoint implies).
	Region string
	// Addressing is "path" (https://host/bucket/key), "virtual"
	// (https://bucket.host/key) or "" (the client decides by endpoint).
	Addressing string
	// Anonymous reads a public bucket without credentials.
	Anonymous bool
}

// Query keys of the canonical URL (see String).
const (
	qEndpoint   = "endpoint"
	qRegion     = "region"
	qAddressing = "addressing"
	qAnonymous  = "anonymous"
)

var (
	bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	regionRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

// Base is the location without its connection options: s3://bucket/prefix.
func (l Location) Base() string {
	if l.Prefix == "" {
		return "s3://" + l.Bucket
	}
	return "s3://" + l.Bucket + "/" + l.Prefix
}

// String is the canonical URL: s3://bucket/prefix followed by the
// connection options as a query with sorted keys, e.g.
// s3://data/imagenet?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=us-east-1.
// ParseURL(l.String()) == l.
func (l Location) String() string {
	q := url.Values{}
	if l.Endpoint != "" {
		q.Set(qEndpoint, l.Endpoint)
	}
	if l.Region != "" {
		q.Set(qRegion, l.Region)
	}
	if l.Addressing != "" {
		q.Set(qAddressing, l.Addressing)
	}
	if l.Anonymous {
		q.Set(qAnonymous, "true")
	}
	if len(q) == 0 {
		return l.Base()
	}
	return l.Base() + "?" + q.Encode()
}

// Key returns the object key of rel, a clean relative path in the dataset
// ("" is the dataset's root, whose key is the prefix).
func (l Location) Key(rel string) string {
	switch {
	case l.Prefix == "":
		return rel
	case rel == "":
		return l.Prefix
	}
	return l.Prefix + "/" + rel
}

// DirKey returns the key prefix of directory rel: its key and a '/' ("" for
// the root of a whole-bucket dataset).
func (l Location) DirKey(rel string) string {
	k := l.Key(rel)
	if k == "" {
		return ""
	}
	return k + "/"
}

// ParseURL parses and validates an s3:// URL, with or without the
// connection-option query of String.
func ParseURL(raw string) (Location, error) {
	rest, ok := strings.CutPrefix(raw, "s3://")
	if !ok {
		return Location{}, fmt.Errorf("%q is not an s3:// URL", raw)
	}
	if strings.ContainsAny(rest, "\x00\\#") {
		return Location{}, fmt.Errorf("%q: NUL, '\\' and '#' are not allowed", raw)
	}
	p, query, hasQuery := strings.Cut(rest, "?")
	bucket, prefix, _ := strings.Cut(p, "/")
	l := Location{Bucket: bucket, Prefix: prefix}
	if err := l.check(); err != nil {
		return Location{}, fmt.Errorf("%q: %w", raw, err)
	}
	if hasQuery {
		q, err := url.ParseQuery(query)
		if err != nil {
			return Location{}, fmt.Errorf("%q: query: %w", raw, err)
		}
		for k, v := range q {
			if len(v) != 1 {
				return Location{}, fmt.Errorf("%q: option %s given %d times", raw, k, len(v))
			}
			switch k {
			case qEndpoint:
				l.Endpoint = v[0]
			case qRegion:
				l.Region = v[0]
			case qAddressing:
				l.Addressing = v[0]
			case qAnonymous:
				if v[0] != "true" {
					return Location{}, fmt.Errorf("%q: anonymous must be true or absent", raw)
				}
				l.Anonymous = true
			default:
				return Location{}, fmt.Errorf("%q: unknown option %q", raw, k)
			}
		}
		if err := l.CheckOptions(); err != nil {
			return Location{}, fmt.Errorf("%q: %w", raw, err)
		}
		if l.String() != raw {
			return Location{}, fmt.Errorf("%q is not in canonical form (want %s)", raw, l.String())
		}
	}
	return l, nil
}

// check validates bucket and prefix.
func (l Location) check() error {
	if !bucketRE.MatchString(l.Bucket) || strings.Contains(l.Bucket, "..") || net.ParseIP(l.Bucket) != nil {
		return fmt.Errorf("bucket %q is not a valid bucket name (3 to 63 lower-case letters, digits, '.' and '-')", l.Bucket)
	}
	if l.Prefix == "" {
		return nil
	}
	if err := source.CheckPath(l.Prefix); err != nil {
		return fmt.Errorf("prefix %q must be clean (no empty segment, no '.', '..' or trailing '/'): %w", l.Prefix, err)
	}
	if len(l.Prefix) > 512 {
		return fmt.Errorf("prefix is %d bytes; at most 512", len(l.Prefix))
	}
	return nil
}

// CheckOptions validates the connection options.
func (l Location) CheckOptions() error {
	var errs []error
	if l.Endpoint != "" {
		if err := checkEndpoint(l.Endpoint); err != nil {
			errs = append(errs, err)
		}
	}
	if l.Region != "" && !regionRE.MatchString(l.Region) {
		errs = append(errs, fmt.Errorf("region %q: want lower-case letters, digits and '-', such as us-east-1", l.Region))
	}
	switch l.Addressing {
	case "", "path", "virtual":
	default:
		errs = append(errs, fmt.Errorf("addressing %q: want path or virtual", l.Addressing))
	}
	return errors.Join(errs...)
}

// checkEndpoint accepts http(s)://host[:port] with nothing else: no user,
// no path, no query. Credentials never travel in an endpoint.
func checkEndpoint(e string) error {
	u, err := url.Parse(e)
	if err != nil {
		return fmt.Errorf("endpoint %q: %v", e, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(e, "/") {
		return fmt.Errorf("endpoint %q: want http(s)://host[:port], with no user, path or query", e)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("endpoint %q: bad port", e)
		}
	}
	return nil
}

// Under reports whether l lies at or under the location prefix names (an
// s3:// URL, bucket and optional key prefix, by whole segments) on the same
// endpoint. It is how an administrator's allow-list of inline sources is
// applied: the endpoint must match too, or an inline volume could make the
// node's daemon talk to any host.
func (l Location) Under(prefix string) bool {
	base, q, hasQuery := strings.Cut(prefix, "?")
	base = strings.TrimSuffix(base, "/")
	if hasQuery {
		base += "?" + q
	}
	p, err := ParseURL(base)
	if err != nil || p.Bucket != l.Bucket || p.Endpoint != l.Endpoint {
		return false
	}
	return p.Prefix == "" || l.Prefix == p.Prefix || strings.HasPrefix(l.Prefix, p.Prefix+"/")
}
