package daemon

import (
	"context"
	"fmt"
	"net/http"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
	"github.com/cistern-csi/cistern/pkg/cache/source"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
	s3source "github.com/cistern-csi/cistern/pkg/cache/source/s3"
)

// openSource returns the source of a validated request: the POSIX tree,
// or an S3 client with the request's credentials (which live only in this
// client).
func (d *Daemon) openSource(ctx context.Context, req api.MountRequest, secrets map[string]string, log klog.Logger) (source.Source, error) {
	src, err := api.ParseSource(req.Source)
	if err != nil {
		return nil, &statusError{http.StatusBadRequest, err}
	}
	if !src.IsS3() {
		p, err := posix.New(src.Path)
		if err != nil {
			return nil, &statusError{http.StatusNotFound, err}
		}
		return p, nil
	}
	c, err := s3store.NewFromSecrets(src.S3, secrets, s3store.Config{Timeout: d.opts.SourceTimeout, Logger: log})
	if err != nil {
		return nil, &statusError{http.StatusBadRequest, err}
	}
	// Fail the mount, not the pod's first read, when the store is
	// unreachable or refuses the credentials.
	if _, err := c.DirExists(ctx, ""); err != nil {
		status := http.StatusBadGateway
		switch source.Errno(err) {
		case unix.EACCES:
			status = http.StatusForbidden
		case unix.ENOENT:
			status = http.StatusNotFound
		}
		return nil, &statusError{status, fmt.Errorf("dataset %s: %w", req.Dataset, err)}
	}
	return s3source.New(c, req.MetaCache), nil
}
