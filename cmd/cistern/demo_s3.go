package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/minio/minio-go/v7"

	"github.com/cistern-csi/cistern/pkg/cache/s3store"
	"github.com/cistern-csi/cistern/test/s3server"
)

// The demo's datasets on a local S3 server: one bucket, one prefix per
// dataset.
const demoBucket = "datasets"

type demoStore struct {
	srv      *s3server.Server
	mc       *minio.Client
	uploaded int
}

// startDemoStore starts versitygw in dir and uploads the datasets' local
// trees (dataset name -> directory) under their prefixes.
func startDemoStore(ctx context.Context, dir string, trees map[string]string) (*demoStore, error) {
	srv, err := s3server.Start(dir)
	if err != nil {
		return nil, err
	}
	st := &demoStore{srv: srv}
	if st.mc, err = srv.Client(); err == nil {
		err = srv.CreateBucket(ctx, demoBucket)
	}
	for name, root := range trees {
		if err != nil {
			break
		}
		err = st.upload(ctx, name, root)
	}
	if err != nil {
		srv.Stop()
		return nil, fmt.Errorf("S3 server: %w", err)
	}
	return st, nil
}

// upload puts every file under root as prefix/relative-path.
func (st *demoStore) upload(ctx context.Context, prefix, root string) error {
	n, err := st.srv.UploadTree(ctx, demoBucket, prefix, root)
	st.uploaded += n
	return err
}

// location is the S3 location of a dataset.
func (st *demoStore) location(name string) s3store.Location {
	return s3store.Location{Bucket: demoBucket, Prefix: name, Endpoint: st.srv.Endpoint, Region: "us-east-1", Addressing: "path"}
}

// count returns how many objects lie under prefix/.
func (st *demoStore) count(ctx context.Context, prefix string) (int, error) {
	n := 0
	for o := range st.mc.ListObjects(ctx, demoBucket, minio.ListObjectsOptions{Prefix: prefix + "/", Recursive: true}) {
		if o.Err != nil {
			return 0, o.Err
		}
		n++
	}
	return n, nil
}

// sourceParams adds the source parameters of dataset name to params.
func (d *demo) sourceParams(name string, params map[string]string) map[string]string {
	if d.store == nil {
		params["source"] = "file://" + d.dirs[name]
		return params
	}
	l := d.store.location(name)
	params["source"] = l.Base()
	params["endpoint"] = l.Endpoint
	params["region"] = l.Region
	params["addressing"] = l.Addressing
	return params
}

// secrets are the CSI secrets of every call: the S3 credentials, or none.
func (d *demo) secrets() map[string]string {
	if d.store == nil {
		return nil
	}
	return d.store.srv.Secrets()
}

// afterDelete reports whether quant-a's features volume is gone and how
// many of quant-a's research files are still there.
func (d *demo) afterDelete() (deleted bool, kept int, err error) {
	if d.store == nil {
		_, statErr := os.Stat(filepath.Join(d.dirs["features"], "quant-a", "features"))
		kept, err = countFiles(filepath.Join(d.dirs["research"], "quant-a"))
		return errors.Is(statErr, fs.ErrNotExist), kept, err
	}
	ctx := context.Background()
	left, err := d.store.count(ctx, "features/quant-a/features")
	if err != nil {
		return false, 0, err
	}
	kept, err = d.store.count(ctx, "research/quant-a")
	return left == 0, kept, err
}
