package s3store

import (
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"

	"github.com/minio/minio-go/v7"
)

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
