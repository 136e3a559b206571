package driver

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
)

// dataset is what the controller does to a source: check sub-directories,
// create them, delete or archive them, and keep the records of the volumes
// it made. Every sub-path it takes was checked by checkSubPath.
type dataset interface {
	// CheckRoot reports whether the dataset can be reached at all.
	CheckRoot(ctx context.Context) error
	Exists(ctx context.Context, sub string) (bool, error)
	MkdirAll(ctx context.Context, sub string) error
	// Remove deletes sub. It may return a clean-up to run outside the
	// controller's locks (emptying a trash).
	Remove(ctx context.Context, sub string) (after func() error, err error)
	// Archive moves sub aside and returns where it went.
	Archive(ctx context.Context, sub string, now time.Time) (string, error)
	// Records are the volume records kept in the dataset (read-write
	// datasets only).
	Records() records
}

// archiveTimeFormat is the UTC time suffix of an archive's name.
const archiveTimeFormat = "20060102T150405.000000000Z"

// archiveDest is where Archive moves sub at now: the directory
// .cistern/archive/<sub's parent> and in it the name <sub's base>-<UTC time>.
func archiveDest(sub string, now time.Time) (dir, name string) {
	parent, base := path.Split(sub)
	return path.Join(ReservedDir, "archive", parent), base + "-" + now.UTC().Format(archiveTimeFormat)
}

// openDataset returns the controller's view of src. secrets are the CSI
// secrets of the call (an S3 source's credentials).
func (d *Driver) openDataset(src api.Source, secrets map[string]string) (dataset, error) {
	if !src.IsS3() {
		return posixController{posixDataset{root: src.Path, source: true}}, nil
	}
	c, err := s3store.NewFromSecrets(src.S3, secrets, s3store.Config{})
	if err != nil {
		// Say whether the secrets or the source are at fault.
		if _, cerr := s3store.CredentialsFromSecrets(secrets); cerr != nil {
			return nil, status.Errorf(codes.InvalidArgument, "secrets: %v", cerr)
		}
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	return s3Dataset{c: c}, nil
}

// posixController is the controller's view of a file:// dataset.
type posixController struct{ ds posixDataset }

func (p posixController) CheckRoot(context.Context) error {
	ok, err := p.ds.Exists("")
	if err == nil && !ok {
		err = fs.ErrNotExist
	}
	if err != nil {
		return fmt.Errorf("%s is not a reachable directory: %w", p.ds.root, err)
	}
	return nil
}

func (p posixController) Exists(_ context.Context, sub string) (bool, error) {
	return p.ds.Exists(sub)
}

func (p posixController) MkdirAll(_ context.Context, sub string) error { return p.ds.MkdirAll(sub) }

func (p posixController) Remove(_ context.Context, sub string) (func() error, error) {
	if err := p.ds.Trash(sub); err != nil {
		return nil, err
	}
	return p.ds.EmptyTrash, nil
}

func (p posixController) Archive(_ context.Context, sub string, now time.Time) (string, error) {
	return p.ds.Archive(sub, now)
}

func (p posixController) Records() records {
	return ctxRecords{recordStore{dir: filepath.Join(p.ds.root, ReservedDir, "volumes")}}
}

// s3Dataset is the controller's view of an s3:// dataset: a sub-directory
// is a key prefix, made visible when empty by a directory marker.
type s3Dataset struct{ c *s3store.Client }

func (s s3Dataset) CheckRoot(ctx context.Context) error {
	ok, err := s.c.BucketExists(ctx)
	if err == nil && !ok {
		err = fmt.Errorf("bucket %s does not exist: %w", s.c.Location().Bucket, fs.ErrNotExist)
	}
	return err
}

func (s s3Dataset) Exists(ctx context.Context, sub string) (bool, error) {
	return s.c.DirExists(ctx, sub)
}

// MkdirAll writes the marker of sub only: on an object store a parent
// exists as soon as anything lies under it.
func (s s3Dataset) MkdirAll(ctx context.Context, sub string) error {
	return s.c.PutMarker(ctx, sub)
}

// Remove deletes exactly the objects under sub/, page by page.
func (s s3Dataset) Remove(ctx context.Context, sub string) (func() error, error) {
	if sub == "" {
		return nil, fmt.Errorf("refusing to remove the root of dataset %s", s.c.Location().Base())
	}
	start := time.Now()
	n, err := s.c.RemoveAll(ctx, sub, func(done int) {
		klog.FromContext(ctx).V(2).Info("Deleting a volume's objects", "subPath", sub, "deleted", done)
	})
	if err != nil {
		return nil, fmt.Errorf("deleted %d objects, then: %w", n, err)
	}
	klog.FromContext(ctx).Info("Volume objects deleted", "subPath", sub, "objects", n, "took", time.Since(start).Round(time.Millisecond))
	return nil, nil
}

// Archive copies every object under sub/ to .cistern/archive/<sub>-<time>/
// (server-side copies), then deletes the originals. A failure part-way
// leaves the originals in place (the copies may be partial); a retry starts
// again under a new archive name.
func (s s3Dataset) Archive(ctx context.Context, sub string, now time.Time) (string, error) {
	if sub == "" {
		return "", fmt.Errorf("refusing to archive the root of dataset %s", s.c.Location().Base())
	}
	dstDir, dstName := archiveDest(sub, now)
	dst := path.Join(dstDir, dstName)
	copied := 0
	err := s.c.Walk(ctx, sub, func(name string, o s3store.Object) error {
		copied++
		if name == "" || strings.HasSuffix(name, "/") {
			// A directory marker is written, not copied (some stores
			// refuse to copy directory objects).
			return s.c.PutMarker(ctx, path.Join(dst, name))
		}
		return s.c.Copy(ctx, sub+"/"+name, dst+"/"+name, o.Size)
	})
	if err != nil {
		return "", fmt.Errorf("archive %q to %q: %w", sub, dst, err)
	}
	if copied == 0 {
		return "", fmt.Errorf("%q: %w", sub, fs.ErrNotExist)
	}
	if _, err := s.c.RemoveAll(ctx, sub, nil); err != nil {
		return "", fmt.Errorf("archive %q: copied %d objects to %q, then removing the originals: %w", sub, copied, dst, err)
	}
	return dst, nil
}

func (s s3Dataset) Records() records { return s3Records{c: s.c} }
