package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
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
// client). With probe, an S3 store is asked once whether the dataset's
// prefix can be listed.
func (d *Daemon) openSource(ctx context.Context, req api.MountRequest, secrets map[string]string, probe bool, log klog.Logger) (source.Source, error) {
	src, err := api.ParseSource(req.Source)
	if err != nil {
		return nil, &statusError{http.StatusBadRequest, err}
	}
	if !src.IsS3() {
		p, err := posix.New(src.Path)
		if errors.Is(err, posix.ErrSymlinkInRoot) {
			return nil, &statusError{http.StatusBadRequest, err}
		}
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
	if probe {
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
	}
	o := s3source.Options{MetaCache: req.MetaCache, UID: req.UID, GID: req.GID, FileMode: fs.FileMode(req.FileMode), DirMode: fs.FileMode(req.DirMode)}
	if req.MountGroup != "" {
		// The volume's fsGroup owns its files, as the kubelet's recursive
		// chown would have made it, with group access.
		o.GID, _ = api.ParseGroup(req.MountGroup)
		o.FileMode, o.DirMode = cmp.Or(o.FileMode, s3source.DefaultFileMode)|0o040, cmp.Or(o.DirMode, s3source.DefaultDirMode)|0o050
		if !req.ReadOnly {
			o.FileMode, o.DirMode = o.FileMode|0o020, o.DirMode|0o020
		}
	}
	return s3source.New(c, o), nil
}
