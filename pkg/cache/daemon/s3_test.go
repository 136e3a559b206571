package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/internal/cachetest"
)

func TestDaemonS3(t *testing.T) {
	e := cachetest.NewS3Env(t)
	d, cl, _ := startDaemon(t, 0)
	ctx := context.Background()
	req := api.MountRequest{Holder: "volume:a", Dataset: "objects", Source: e.Loc.String(), ReadOnly: true, MetaCache: time.Hour, Secrets: e.Srv.Secrets()}
	resp, err := cl.Mount(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(resp.MountPath, "day-01/sym-1.csv"))
	if err != nil || !bytes.Equal(got, e.Files["day-01/sym-1.csv"]) {
		t.Fatalf("read through the daemon's mount: %v", err)
	}
	// The same credentials share the mount.
	req.Holder = "volume:b"
	if again, err := cl.Mount(ctx, req); err != nil || again.Key != resp.Key {
		t.Fatalf("second volume: %+v, %v; want key %s", again, err, resp.Key)
	}
	// Wrong credentials: refused, and never the mount of the right ones.
	bad := req
	bad.Holder, bad.Secrets = "volume:c", map[string]string{"access-key": e.Srv.AccessKey, "secret-key": "not-the-secret"}
	_, err = cl.Mount(ctx, bad)
	if !api.IsForbidden(err) {
		t.Errorf("mount with a wrong secret key: %v, want 403", err)
	}
	if err != nil && strings.Contains(err.Error(), "not-the-secret") {
		t.Errorf("the error shows the secret: %v", err)
	}
	// No credentials and not anonymous: a bad request naming what is missing.
	none := req
	none.Holder, none.Secrets = "volume:d", nil
	if _, err := cl.Mount(ctx, none); !api.IsBadRequest(err) || !strings.Contains(err.Error(), "needs credentials") {
		t.Errorf("mount without credentials: %v", err)
	}
	// An unknown secret key is named, its value is not shown.
	odd := req
	odd.Holder, odd.Secrets = "volume:e", map[string]string{"access-key": "a", "secret-key": "b", "token": "tok-value"}
	if _, err := cl.Mount(ctx, odd); !api.IsBadRequest(err) || !strings.Contains(err.Error(), `"token"`) || strings.Contains(err.Error(), "tok-value") {
		t.Errorf("mount with an unknown secret key: %v", err)
	}
	// A store that does not answer: refused at mount, not at first read.
	down := e.Loc
	down.Endpoint = "http://127.0.0.1:1"
	dreq := req
	dreq.Holder, dreq.Source = "volume:f", down.String()
	if _, err := cl.Mount(ctx, dreq); err == nil || api.IsBadRequest(err) {
		t.Errorf("mount of an unreachable store: %v, want a gateway error", err)
	}
	if n := len(d.Stats().Datasets); n != 1 {
		t.Errorf("%d datasets mounted, want 1", n)
	}
	for _, h := range []string{"volume:a", "volume:b"} {
		if err := cl.Release(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
}
