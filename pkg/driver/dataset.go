package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/s3"
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

// records stores volumeRecords by name hash.
type records interface {
	Get(ctx context.Context, hash string) (*volumeRecord, error) // fs.ErrNotExist when absent
	Put(ctx context.Context, hash string, r *volumeRecord) error
	Delete(ctx context.Context, hash string) error
	List(ctx context.Context) ([]*volumeRecord, error)
}

// openDataset returns the controller's view of src. secrets are the CSI
// secrets of the call (an S3 source's credentials).
func (d *Driver) openDataset(src Source, secrets map[string]string) (dataset, error) {
	if !src.IsS3() {
		return posixController{posixDataset{root: src.Path}}, nil
	}
	creds, err := s3.CredentialsFromSecrets(secrets)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "secrets: %v", err)
	}
	c, err := s3.New(src.S3, creds, s3.Config{})
	if err != nil {
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

// ctxRecords adapts a recordStore (local files) to records.
type ctxRecords struct{ s recordStore }

func (r ctxRecords) Get(_ context.Context, hash string) (*volumeRecord, error) { return r.s.Get(hash) }
func (r ctxRecords) Put(_ context.Context, hash string, v *volumeRecord) error {
	return r.s.Put(hash, v)
}
func (r ctxRecords) Delete(_ context.Context, hash string) error { return r.s.Delete(hash) }
func (r ctxRecords) List(context.Context) ([]*volumeRecord, error) {
	return r.s.List()
}

// s3Dataset is the controller's view of an s3:// dataset: a sub-directory
// is a key prefix, made visible when empty by a directory marker.
type s3Dataset struct{ c *s3.Client }

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
	dir, base := path.Split(sub)
	dst := path.Join(ReservedDir, "archive", dir, base+"-"+now.UTC().Format("20060102T150405.000000000Z"))
	copied := 0
	err := s.c.Walk(ctx, sub, func(name string, o s3.Object) error {
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

// s3Records keeps volume records as objects .cistern/volumes/<hash>.json
// in the dataset, so the controller stays stateless.
type s3Records struct{ c *s3.Client }

const recordsDir = ReservedDir + "/volumes"

func (r s3Records) Get(ctx context.Context, hash string) (*volumeRecord, error) {
	b, err := r.c.Get(ctx, recordsDir+"/"+hash+".json")
	if errors.Is(err, syscall.ENOENT) {
		return nil, fmt.Errorf("volume record %s: %w", hash, fs.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	var v volumeRecord
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("volume record %s: %w", hash, err)
	}
	return &v, nil
}

func (r s3Records) Put(ctx context.Context, hash string, v *volumeRecord) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = r.c.Put(ctx, recordsDir+"/"+hash+".json", strings.NewReader(string(b)), int64(len(b)))
	return err
}

func (r s3Records) Delete(ctx context.Context, hash string) error {
	return r.c.Remove(ctx, recordsDir+"/"+hash+".json")
}

func (r s3Records) List(ctx context.Context) ([]*volumeRecord, error) {
	objs, err := r.c.List(ctx, recordsDir)
	if err != nil {
		return nil, err
	}
	var out []*volumeRecord
	for _, o := range objs {
		hash, ok := strings.CutSuffix(o.Name, ".json")
		if o.Dir || !ok {
			continue
		}
		v, err := r.Get(ctx, hash)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
