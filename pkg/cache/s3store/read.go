package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"

	"github.com/minio/minio-go/v7"
)

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
			if c.logOnce(prefix + name) {
				c.log.Info("Skipping a key that is not a valid file name", "bucket", c.loc.Bucket, "key", obj.Key)
			}
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
