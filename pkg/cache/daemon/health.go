package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// healthTimeout bounds the check of one dataset's mount: a FUSE mount whose
// requests are no longer served hangs a statfs, and a liveness probe must
// answer in time to say so.
const healthTimeout = 3 * time.Second

// Health checks that the daemon serves: every dataset it has mounted answers
// a statfs through its FUSE mount in time (the request goes through the
// kernel to this process's FUSE loop and back, so a stuck loop, a lost
// connection or an unmounted dataset is caught). It names each failing
// dataset by key and mount path.
func (d *Daemon) Health(ctx context.Context) error {
	if d.ctx.Err() != nil {
		return errors.New("the cache daemon is stopping")
	}
	d.mu.Lock()
	mnts := make(map[string]string, len(d.datasets))
	for k, m := range d.datasets {
		mnts[k] = m.mnt
	}
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	type result struct {
		key, mnt string
		err      error
	}
	res := make(chan result, len(mnts)) // buffered: a hung statfs goroutine never blocks
	for k, mnt := range mnts {
		go func() {
			var st unix.Statfs_t
			res <- result{k, mnt, unix.Statfs(mnt, &st)}
		}()
	}
	var errs []error
	for range mnts {
		select {
		case r := <-res:
			if r.err != nil {
				errs = append(errs, fmt.Errorf("dataset %s at %s: statfs: %w", r.key, r.mnt, r.err))
			}
		case <-ctx.Done():
			return errors.Join(append(errs, fmt.Errorf("a dataset mount did not answer statfs within %s", healthTimeout))...)
		}
	}
	return errors.Join(errs...)
}

// serveHealth answers GET /healthz: 200, or 503 with the reason.
func (d *Daemon) serveHealth(w http.ResponseWriter, r *http.Request) {
	if err := d.Health(r.Context()); err != nil {
		reply(w, nil, &statusError{http.StatusServiceUnavailable, err})
		return
	}
	reply(w, api.HealthResponse{Status: "ok"}, nil)
}
