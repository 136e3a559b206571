package s3store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"k8s.io/klog/v2"
)

// Config tunes a client. The zero value takes the defaults.
type Config struct {
	// Timeout bounds every request, retries included (a transfer gets
	// longer in proportion to its size, see deadline): a stalled store
	// fails a reader with EIO after it, never hangs it.
	Timeout time.Duration
	// MaxRetries is how many times a throttled (503 SlowDown), failed
	// (5xx) or broken request is tried, with exponential backoff.
	MaxRetries int
	// PartSize is the multipart upload part size; larger files are
	// uploaded in parts.
	PartSize int64
	// Logger logs failures (once a minute per key); the zero value is
	// klog's default logger.
	Logger klog.Logger
}

// Defaults.
const (
	DefaultTimeout    = 30 * time.Second
	DefaultMaxRetries = 4
	DefaultPartSize   = 16 << 20
	// minRate is the slowest transfer a deadline allows for, in bytes per
	// second, on top of Timeout.
	minRate = 1 << 20
)

func (c Config) withDefaults() Config {
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxRetries <= 0 {
		c.MaxRetries = DefaultMaxRetries
	}
	if c.PartSize <= 0 {
		c.PartSize = DefaultPartSize
	}
	if c.Logger.GetSink() == nil {
		c.Logger = klog.Background()
	}
	return c
}

// Client talks to the store of one Location. Paths it takes are relative
// to the location's prefix: clean, '/'-separated, "" for the root.
type Client struct {
	loc     Location
	cfg     Config
	mc      *minio.Client
	core    minio.Core
	secrets []string // redacted from every error and log line
	log     klog.Logger

	logMu  sync.Mutex
	logged map[string]time.Time // guarded by logMu; key -> last error logged
}

// New returns a client. Without credentials the location must be
// anonymous: a missing secret never silently turns into anonymous access.
func New(loc Location, creds Credentials, cfg Config) (*Client, error) {
	if err := loc.check(); err != nil {
		return nil, err
	}
	if err := loc.CheckOptions(); err != nil {
		return nil, err
	}
	switch {
	case creds.Empty() && !loc.Anonymous:
		return nil, fmt.Errorf("%s needs credentials: a secret with %s and %s (or anonymous access for a public bucket)", loc.Base(), SecretAccessKey, SecretSecretKey)
	case !creds.Empty() && loc.Anonymous:
		return nil, fmt.Errorf("%s is anonymous but credentials were given: drop one", loc.Base())
	}
	cfg = cfg.withDefaults()
	endpoint, secure := "s3.amazonaws.com", true
	if loc.Endpoint != "" {
		u, err := url.Parse(loc.Endpoint)
		if err != nil {
			return nil, err
		}
		endpoint, secure = u.Host, u.Scheme == "https"
	}
	tr, err := transport(creds.CABundle, cfg.Timeout)
	if err != nil {
		return nil, err
	}
	lookup := minio.BucketLookupAuto
	switch loc.Addressing {
	case "path":
		lookup = minio.BucketLookupPath
	case "virtual":
		lookup = minio.BucketLookupDNS
	}
	var cr *credentials.Credentials
	if creds.Empty() {
		cr = credentials.New(&credentials.Static{Value: credentials.Value{SignerType: credentials.SignatureAnonymous}})
	} else {
		cr = credentials.NewStaticV4(creds.AccessKey, creds.SecretKey, creds.SessionToken)
	}
	mc, err := minio.New(endpoint, &minio.Options{
		Creds:        cr,
		Secure:       secure,
		Transport:    tr,
		Region:       loc.Region,
		BucketLookup: lookup,
		MaxRetries:   cfg.MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", loc.Base(), err)
	}
	return &Client{loc: loc, cfg: cfg, mc: mc, core: minio.Core{Client: mc}, secrets: creds.Secrets(), log: cfg.Logger.WithValues("bucket", loc.Bucket), logged: map[string]time.Time{}}, nil
}

// transport is an HTTP transport with bounded connect and header waits and
// enough idle connections for parallel block fetches.
func transport(caPEM string, timeout time.Duration) (*http.Transport, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(caPEM)) {
			return nil, fmt.Errorf("secret key %s holds no PEM certificate", SecretCABundle)
		}
		tlsConf.RootCAs = pool
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: min(timeout, 10*time.Second), KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   min(timeout, 10*time.Second),
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
	}, nil
}

// Location returns where the client points.
func (c *Client) Location() Location { return c.loc }

// Object is one entry of the store, by its name in the dataset.
type Object struct {
	// Name is the base name in a listing, the relative path in Stat.
	Name  string
	Dir   bool
	Size  int64
	ETag  string
	Mtime time.Time
}

// deadline returns ctx bounded by the request timeout plus the time a
// transfer of size bytes takes at minRate.
func (c *Client) deadline(ctx context.Context, size int64) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.Timeout+time.Duration(size/minRate)*time.Second)
}

// watchdog returns a context that is cancelled when no progress was made
// for the request timeout; call the returned function on each step.
func (c *Client) watchdog(ctx context.Context) (context.Context, func(), context.CancelFunc) {
	ctx2, cancel := context.WithCancelCause(ctx)
	t := time.AfterFunc(c.cfg.Timeout, func() { cancel(context.DeadlineExceeded) })
	return ctx2, func() { t.Reset(c.cfg.Timeout) }, func() { t.Stop(); cancel(nil) }
}

// stalled returns the error for a listing stopped by its watchdog.
func stalled(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, context.DeadlineExceeded) {
		return cause
	}
	return err
}
