package group

import (
	"context"
	"errors"

	"github.com/cistern-csi/cistern/pkg/cache"
)

// DatasetSource serves a cache dataset's blocks to the group: fetched
// once and stored (PeerBlock), or from the cache only during a hand-off
// (CachedBlock), or kept as a hot block's replica (ReplicaBlock).
func DatasetSource(ds *cache.Dataset) interface {
	CachedSource
	ReplicaSource
} {
	return datasetSource{ds}
}

type datasetSource struct{ ds *cache.Dataset }

func (s datasetSource) Block(ctx context.Context, name, object string, index int64) ([]byte, error) {
	return versionErr(s.ds.PeerBlock(ctx, name, object, index))
}

func (s datasetSource) ReplicaBlock(ctx context.Context, name, object string, index int64) ([]byte, error) {
	return versionErr(s.ds.ReplicaBlock(ctx, name, object, index))
}

func (s datasetSource) CachedBlock(ctx context.Context, name, object string, index int64) ([]byte, error) {
	return versionErr(s.ds.CachedBlock(ctx, name, object, index))
}

// versionErr answers the engine's ErrVersion as the protocol's.
func versionErr(b []byte, err error) ([]byte, error) {
	if errors.Is(err, cache.ErrVersion) {
		err = ErrVersion
	}
	return b, err
}
