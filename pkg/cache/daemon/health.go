package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
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

// sweepDeadMounts detaches the dataset mounts under the state directory
// whose FUSE connection is gone (ENOTCONN): a daemon that was killed, or
// whose unmount failed while the kernel still held binds of its mounts,
// leaves them behind, and nothing else would ever remove them (a new
// daemon only replaces the mounts of datasets it mounts again). Live
// mounts are left alone, and those in served are not even asked (a statfs
// of a mount this daemon just took back waits behind every request the
// kernel resent to it). It returns the paths it detached.
func sweepDeadMounts(datasets string, served map[string]bool, log func(path string, err error)) []string {
	var swept []string
	for _, mnt := range cisternMounts() {
		if !strings.HasPrefix(mnt, datasets+"/") || served[mnt] {
			continue
		}
		var st unix.Statfs_t
		if err := unix.Statfs(mnt, &st); !errors.Is(err, unix.ENOTCONN) && !errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		err := unix.Unmount(mnt, unix.MNT_DETACH)
		log(mnt, err)
		if err == nil {
			swept = append(swept, mnt)
		}
	}
	return swept
}

// cisternMounts lists the mount points of Cistern's FUSE mounts in this
// mount namespace.
func cisternMounts() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		// mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && len(g) >= 1 && g[0] == "fuse.cistern" {
			out = append(out, unescapeMountPath(f[4]))
		}
	}
	return out
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
