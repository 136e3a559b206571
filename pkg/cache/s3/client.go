package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	return &Client{loc: loc, cfg: cfg, mc: mc, core: minio.Core{Client: mc}, secrets: creds.Secrets(), logged: map[string]time.Time{}}, nil
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

// Stat returns the object rel (a file); a directory is reported as
// fs.ErrNotExist here: see DirExists.
func (c *Client) Stat(ctx context.Context, rel string) (Object, error) {
	if rel == "" {
		return Object{}, c.fail(ctx, "HEAD", "", notExist("the dataset root is not an object"))
	}
	ctx2, cancel := c.deadline(ctx, 0)
	defer cancel()
	key := c.loc.Key(rel)
	info, err := c.mc.StatObject(ctx2, c.loc.Bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return Object{}, c.fail(ctx, "HEAD", key, err)
	}
	return Object{Name: rel, Size: info.Size, ETag: info.ETag, Mtime: info.LastModified}, nil
}

// StatRead looks rel up with a GET of its first len(p) bytes instead of a
// HEAD: the same round trip also brings a small file's content. It returns
// the object (its whole size) and how many bytes of p it filled. An empty
// object is looked up with a HEAD.
func (c *Client) StatRead(ctx context.Context, rel string, p []byte) (Object, int, error) {
	if rel == "" || len(p) == 0 {
		o, err := c.Stat(ctx, rel)
		return o, 0, err
	}
	key := c.loc.Key(rel)
	ctx2, cancel := c.deadline(ctx, int64(len(p)))
	defer cancel()
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(0, int64(len(p))-1); err != nil {
		return Object{}, 0, err
	}
	body, info, hdr, err := c.core.GetObject(ctx2, c.loc.Bucket, key, opts)
	if err != nil {
		var er minio.ErrorResponse
		if errors.As(err, &er) && er.Code == "InvalidRange" {
			o, err := c.Stat(ctx, rel) // an empty object has no byte 0
			return o, 0, err
		}
		return Object{}, 0, c.fail(ctx, "GET", key, err)
	}
	defer body.Close()
	size := info.Size
	if cr := hdr.Get("Content-Range"); cr != "" { // bytes 0-262143/1048576
		if i := strings.LastIndexByte(cr, '/'); i >= 0 {
			if n, err := strconv.ParseInt(cr[i+1:], 10, 64); err == nil {
				size = n
			}
		}
	}
	want := min(int64(len(p)), size)
	n := 0
	for int64(n) < want {
		m, err := body.Read(p[n:want])
		n += m
		if err == io.EOF && int64(n) == want {
			break
		}
		if err != nil {
			return Object{}, 0, c.fail(ctx, "GET", key, err)
		}
	}
	return Object{Name: rel, Size: size, ETag: info.ETag, Mtime: info.LastModified}, n, nil
}

// DirExists reports whether any key lies under directory rel (a directory
// marker counts).
func (c *Client) DirExists(ctx context.Context, rel string) (bool, error) {
	ctx2, cancel := c.deadline(ctx, 0)
	defer cancel()
	prefix := c.loc.DirKey(rel)
	if prefix == "" {
		return c.BucketExists(ctx)
	}
	for obj := range c.mc.ListObjectsIter(ctx2, c.loc.Bucket, minio.ListObjectsOptions{Prefix: prefix, MaxKeys: 1}) {
		if obj.Err != nil {
			return false, c.fail(ctx, "LIST", prefix, obj.Err)
		}
		return true, nil
	}
	if err := ctx2.Err(); err != nil {
		return false, c.fail(ctx, "LIST", prefix, err)
	}
	return false, nil
}

// BucketExists reports whether the location's bucket exists.
func (c *Client) BucketExists(ctx context.Context) (bool, error) {
	ctx2, cancel := c.deadline(ctx, 0)
	defer cancel()
	ok, err := c.mc.BucketExists(ctx2, c.loc.Bucket)
	if err != nil {
		return false, c.fail(ctx, "HEAD", "", err)
	}
	return ok, nil
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

// List returns the entries of directory rel: objects as files and common
// prefixes as directories, every page of the listing. Keys that cannot be
// file names (empty segments, ".", "..") are skipped and logged; a name that
// is both an object and a prefix is shown as the directory.
func (c *Client) List(ctx context.Context, rel string) ([]Object, error) {
	return c.ListUpTo(ctx, rel, 0)
}

// ListUpTo is List stopped after max entries (0: no limit).
func (c *Client) ListUpTo(ctx context.Context, rel string, max int) (out []Object, err error) {
	prefix := c.loc.DirKey(rel)
	// A long listing is many pages: it may take as long as it makes
	// progress.
	ctx2, step, cancel := c.watchdog(ctx)
	defer cancel()
	dirs := map[string]bool{}
	files := map[string]int{}
	opts := minio.ListObjectsOptions{Prefix: prefix}
	if max > 0 {
		opts.MaxKeys = min(max+1, 1000)
	}
	for obj := range c.mc.ListObjectsIter(ctx2, c.loc.Bucket, opts) {
		if obj.Err != nil {
			return nil, c.fail(ctx, "LIST", prefix, stalled(ctx2, obj.Err))
		}
		if max > 0 && len(out) >= max {
			return out, nil // there is more
		}
		step()
		name := strings.TrimPrefix(obj.Key, prefix)
		isDir := strings.HasSuffix(name, "/")
		name = strings.TrimSuffix(name, "/")
		if name == "" {
			continue // the directory's own marker
		}
		if name == "." || name == ".." || strings.Contains(name, "/") || strings.ContainsRune(name, 0) {
			c.logOnce(prefix+name, "Skipping a key that is not a valid file name", "bucket", c.loc.Bucket, "key", obj.Key)
			continue
		}
		switch {
		case isDir:
			if i, ok := files[name]; ok {
				out[i].Dir, out[i].Size, out[i].ETag = true, 0, "" // the directory wins
			} else if !dirs[name] {
				out = append(out, Object{Name: name, Dir: true})
			}
			dirs[name] = true
		case dirs[name]:
			// the directory wins
		default:
			files[name] = len(out)
			out = append(out, Object{Name: name, Size: obj.Size, ETag: obj.ETag, Mtime: obj.LastModified})
		}
	}
	return out, nil
}

// ReadAt reads len(p) bytes of rel at off with one ranged GET. A non-empty
// etag makes the read conditional: if the object changed, the error wraps
// ErrChanged and no byte of the new version is returned.
func (c *Client) ReadAt(ctx context.Context, rel, etag string, p []byte, off int64) (int, error) {
	return c.ReadAtProgress(ctx, rel, etag, p, off, nil)
}

// ReadAtProgress is ReadAt calling progress (if not nil) with how many
// bytes of p are filled as they arrive.
func (c *Client) ReadAtProgress(ctx context.Context, rel, etag string, p []byte, off int64, progress func(n int)) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	key := c.loc.Key(rel)
	ctx2, cancel := c.deadline(ctx, int64(len(p)))
	defer cancel()
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(off, off+int64(len(p))-1); err != nil {
		return 0, err
	}
	if etag != "" {
		if err := opts.SetMatchETag(etag); err != nil {
			return 0, err
		}
	}
	body, _, _, err := c.core.GetObject(ctx2, c.loc.Bucket, key, opts)
	if err != nil {
		var er minio.ErrorResponse
		if errors.As(err, &er) && er.Code == "InvalidRange" {
			return 0, io.EOF
		}
		return 0, c.fail(ctx, "GET", key, err)
	}
	defer body.Close()
	n := 0
	for n < len(p) {
		m, err := body.Read(p[n:])
		n += m
		if progress != nil && m > 0 {
			progress(n)
		}
		switch {
		case err == io.EOF && n == len(p):
			return n, nil
		case err == io.EOF:
			// The object ends inside the range: a short read. (A body
			// cut before its Content-Length is io.ErrUnexpectedEOF.)
			return n, io.EOF
		case err != nil:
			return n, c.fail(ctx, "GET", key, err)
		}
	}
	return n, nil
}

// Get returns a whole small object (a volume record, say).
func (c *Client) Get(ctx context.Context, rel string) ([]byte, error) {
	key := c.loc.Key(rel)
	ctx2, cancel := c.deadline(ctx, 0)
	defer cancel()
	body, _, _, err := c.core.GetObject(ctx2, c.loc.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, c.fail(ctx, "GET", key, err)
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, 1<<20))
	if err != nil {
		return nil, c.fail(ctx, "GET", key, err)
	}
	return b, nil
}

// Put stores size bytes of r as object rel, replacing any object there. The
// object appears whole or not at all: above the part size the upload is
// multipart, and a failed one is aborted. r should be an io.ReaderAt (a
// file) for parallel parts and retries.
func (c *Client) Put(ctx context.Context, rel string, r io.Reader, size int64) (Object, error) {
	key := c.loc.Key(rel)
	if rel == "" || strings.HasSuffix(key, "/") {
		return Object{}, fmt.Errorf("put %q: not a file name: %w", key, syscall.EINVAL)
	}
	ctx2, cancel := c.deadline(ctx, size)
	defer cancel()
	info, err := c.mc.PutObject(ctx2, c.loc.Bucket, key, r, size, minio.PutObjectOptions{
		PartSize:    uint64(c.cfg.PartSize),
		NumThreads:  4,
		ContentType: "application/octet-stream",
	})
	if err != nil {
		return Object{}, c.fail(ctx, "PUT", key, err)
	}
	return Object{Name: rel, Size: info.Size, ETag: info.ETag, Mtime: info.LastModified}, nil
}

// PutMarker writes the zero-length marker "rel/" that makes an empty
// directory list.
func (c *Client) PutMarker(ctx context.Context, rel string) error {
	key := c.loc.DirKey(rel)
	if key == "" {
		return nil // the root of a whole-bucket dataset is the bucket
	}
	ctx2, cancel := c.deadline(ctx, 0)
	defer cancel()
	_, err := c.mc.PutObject(ctx2, c.loc.Bucket, key, strings.NewReader(""), 0, minio.PutObjectOptions{ContentType: "application/x-directory"})
	if err != nil {
		return c.fail(ctx, "PUT", key, err)
	}
	return nil
}

// Remove deletes object rel (a file); a missing object is not an error.
func (c *Client) Remove(ctx context.Context, rel string) error {
	return c.removeKey(ctx, c.loc.Key(rel))
}

// RemoveMarker deletes the marker of directory rel.
func (c *Client) RemoveMarker(ctx context.Context, rel string) error {
	if rel == "" {
		return fmt.Errorf("the dataset root has no marker: %w", syscall.EINVAL)
	}
	return c.removeKey(ctx, c.loc.DirKey(rel))
}

func (c *Client) removeKey(ctx context.Context, key string) error {
	ctx2, cancel := c.deadline(ctx, 0)
	defer cancel()
	if err := c.mc.RemoveObject(ctx2, c.loc.Bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return c.fail(ctx, "DELETE", key, err)
	}
	return nil
}

// Copy copies object from to to on the server, replacing to.
func (c *Client) Copy(ctx context.Context, from, to string, size int64) error {
	fk, tk := c.loc.Key(from), c.loc.Key(to)
	ctx2, cancel := c.deadline(ctx, size)
	defer cancel()
	src := minio.CopySrcOptions{Bucket: c.loc.Bucket, Object: fk}
	dst := minio.CopyDestOptions{Bucket: c.loc.Bucket, Object: tk}
	var err error
	if size > 5<<30 {
		// Above 5 GiB a copy is a multipart copy.
		_, err = c.mc.ComposeObject(ctx2, dst, src)
	} else {
		_, err = c.mc.CopyObject(ctx2, dst, src)
	}
	if err != nil {
		return c.fail(ctx, "COPY", fk+" -> "+tk, err)
	}
	return nil
}

// Walk calls fn with every object under directory rel (markers included),
// its path relative to rel, in key order, page by page.
func (c *Client) Walk(ctx context.Context, rel string, fn func(name string, o Object) error) error {
	prefix := c.loc.DirKey(rel)
	if prefix == "" {
		return fmt.Errorf("refusing to walk the whole bucket %s: %w", c.loc.Bucket, syscall.EINVAL)
	}
	ctx2, step, cancel := c.watchdog(ctx)
	defer cancel()
	for obj := range c.mc.ListObjectsIter(ctx2, c.loc.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return c.fail(ctx, "LIST", prefix, stalled(ctx2, obj.Err))
		}
		step()
		if err := fn(strings.TrimPrefix(obj.Key, prefix), Object{Name: obj.Key, Size: obj.Size, ETag: obj.ETag, Mtime: obj.LastModified}); err != nil {
			return err
		}
		step()
	}
	return nil
}

// RemoveAll deletes every object whose key starts with the key prefix of
// directory rel followed by '/' - exactly that directory, never a sibling
// that shares the name's prefix, never a shorter prefix - listing page by
// page and deleting in batches. It returns how many objects it deleted;
// progress, if not nil, is called after each batch.
func (c *Client) RemoveAll(ctx context.Context, rel string, progress func(deleted int)) (int, error) {
	if rel == "" {
		return 0, fmt.Errorf("refusing to remove the root of %s: %w", c.loc.Base(), syscall.EINVAL)
	}
	prefix := c.loc.DirKey(rel)
	deleted := 0
	for {
		// List a page, delete it, repeat: a listing never runs ahead of
		// what is deleted, and a crash leaves a consistent remainder.
		var batch []string
		ctx2, cancel := c.deadline(ctx, 0)
		for obj := range c.mc.ListObjectsIter(ctx2, c.loc.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true, MaxKeys: 1000}) {
			if obj.Err != nil {
				cancel()
				return deleted, c.fail(ctx, "LIST", prefix, obj.Err)
			}
			if !strings.HasPrefix(obj.Key, prefix) { // never: the store filtered by prefix
				cancel()
				return deleted, fmt.Errorf("store listed %q under %q: %w", obj.Key, prefix, syscall.EIO)
			}
			batch = append(batch, obj.Key)
			if len(batch) == 1000 {
				break
			}
		}
		cancel()
		if len(batch) == 0 {
			return deleted, nil
		}
		ch := make(chan minio.ObjectInfo, len(batch))
		for _, k := range batch {
			ch <- minio.ObjectInfo{Key: k}
		}
		close(ch)
		ctx3, cancel3 := c.deadline(ctx, 0)
		for rerr := range c.mc.RemoveObjects(ctx3, c.loc.Bucket, ch, minio.RemoveObjectsOptions{}) {
			cancel3()
			return deleted, c.fail(ctx, "DELETE", rerr.ObjectName, rerr.Err)
		}
		cancel3()
		deleted += len(batch)
		if progress != nil {
			progress(deleted)
		}
	}
}

// ErrChanged is wrapped when a conditional read finds a newer version of
// the object (HTTP 412): the reader must look the file up again.
var ErrChanged = errors.New("object changed while it was read")

// Error is a failed store operation. It unwraps to the errno a file system
// caller should see.
type Error struct {
	Op    string
	Key   string
	Code  string // the S3 error code, or ""
	Errno syscall.Errno
	msg   string // redacted
}

func (e *Error) Error() string {
	return fmt.Sprintf("s3 %s %s: %s", e.Op, e.Key, e.msg)
}

// Unwrap returns the errno, and ErrChanged for a changed object.
func (e *Error) Unwrap() []error {
	if e.Errno == syscall.ESTALE {
		return []error{e.Errno, ErrChanged}
	}
	return []error{e.Errno}
}

// classify maps a store error to an errno and a code.
func classify(ctx context.Context, err error) (syscall.Errno, string) {
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.Code != "" {
		switch er.Code {
		case "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload":
			return syscall.ENOENT, er.Code
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken", "ExpiredToken", "AccountProblem":
			return syscall.EACCES, er.Code
		case "PreconditionFailed":
			return syscall.ESTALE, er.Code
		case "InvalidRange":
			return syscall.EINVAL, er.Code
		case "EntityTooLarge":
			return syscall.EFBIG, er.Code
		}
		return syscall.EIO, er.Code
	}
	if errors.As(err, &er) {
		switch er.StatusCode {
		case http.StatusNotFound:
			return syscall.ENOENT, "NotFound"
		case http.StatusForbidden:
			return syscall.EACCES, "Forbidden"
		case http.StatusPreconditionFailed:
			return syscall.ESTALE, "PreconditionFailed"
		}
	}
	var ue *url.Error
	var ne net.Error
	if errors.As(err, &ue) || errors.As(err, &ne) {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return syscall.EINTR, ""
		}
		return syscall.EIO, "" // refused, reset, timed out: the store is unreachable
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno, ""
	}
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return syscall.EINTR, "" // the caller gave up
	}
	return syscall.EIO, "" // our deadline, a network error, exhausted retries
}

// fail turns err into an *Error, logging it once (per key and minute)
// unless it is a plain "not found" or the caller's own cancellation.
func (c *Client) fail(ctx context.Context, op, key string, err error) error {
	errno, code := classify(ctx, err)
	msg := c.redact(err.Error())
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		msg = fmt.Sprintf("no answer within the %s request timeout (%s)", c.cfg.Timeout, msg)
	}
	e := &Error{Op: op, Key: path.Join(c.loc.Bucket, key), Code: code, Errno: errno, msg: msg}
	switch errno {
	case syscall.ENOENT, syscall.EINTR, syscall.ESTALE:
		klog.V(4).InfoS("S3 request", "op", op, "bucket", c.loc.Bucket, "key", key, "err", e.msg)
	default:
		c.logOnce(op+" "+key, "S3 request failed", "op", op, "bucket", c.loc.Bucket, "key", key, "code", code, "errno", errno.Error(), "err", e.msg)
	}
	return e
}

// notExist is a local "not found".
func notExist(msg string) error { return fmt.Errorf("%s: %w", msg, syscall.ENOENT) }

// redact removes credential values from s.
func (c *Client) redact(s string) string {
	for _, v := range c.secrets {
		s = strings.ReplaceAll(s, v, "[redacted]")
	}
	return s
}

// logOnce logs msg for key at most once a minute.
func (c *Client) logOnce(key, msg string, kv ...any) {
	c.logMu.Lock()
	last, seen := c.logged[key]
	now := time.Now()
	if seen && now.Sub(last) < time.Minute {
		c.logMu.Unlock()
		return
	}
	if len(c.logged) > 4096 {
		clear(c.logged)
	}
	c.logged[key] = now
	c.logMu.Unlock()
	klog.ErrorS(nil, msg, kv...)
}
