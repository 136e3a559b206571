package driver

import (
	"strings"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

func TestOptionsValidate(t *testing.T) {
	good := func() Options {
		return Options{Endpoint: "unix:///csi/csi.sock", Mode: ModeAll, NodeID: "n1", StateDir: "/var/lib/cistern", CacheSocket: "/var/lib/cistern/cache.sock", UnmountTimeout: time.Second}
	}
	tests := []struct {
		name    string
		mutate  func(*Options)
		wantErr string
	}{
		{"good", func(*Options) {}, ""},
		{"controller needs no node ID", func(o *Options) { o.Mode = ModeController; o.NodeID = "" }, ""},
		{"tcp endpoint", func(o *Options) { o.Endpoint = "tcp://127.0.0.1:1" }, "--endpoint"},
		{"relative socket", func(o *Options) { o.Endpoint = "unix://csi.sock" }, "--endpoint"},
		{"bad mode", func(o *Options) { o.Mode = "both" }, "--mode"},
		{"node without ID", func(o *Options) { o.Mode = ModeNode; o.NodeID = "" }, "--node-id is required"},
		{"relative state dir", func(o *Options) { o.StateDir = "state" }, "--state-dir"},
		{"bad cache group", func(o *Options) { o.CacheGroup = "Pool_1" }, "--cache-group"},
		{"bad inline prefix", func(o *Options) { o.InlineSources = []string{"file:///a/../etc/"} }, "--inline-sources"},
		{"relative cache socket", func(o *Options) { o.CacheSocket = "cache.sock" }, "--cache-socket"},
		{"zero unmount timeout", func(o *Options) { o.UnmountTimeout = 0 }, "--unmount-timeout"},
	}
	for _, tc := range tests {
		o := good()
		tc.mutate(&o)
		err := o.Validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: Validate() = %v, want %q", tc.name, err, tc.wantErr)
		}
	}
}

func TestInlineAllowed(t *testing.T) {
	prefixes := []string{"file:///datasets/public/", "file:///exact"}
	for src, want := range map[string]bool{
		"/datasets/public/imagenet": true,
		"/datasets/public":          true,
		"/datasets/public-evil":     false,
		"/datasets":                 false,
		"/exact":                    true,
		"/exact/sub":                true,
		"/exactly":                  false,
	} {
		if got := inlineAllowed(api.Source{Scheme: "file", Path: src}, prefixes); got != want {
			t.Errorf("inlineAllowed(%s) = %t, want %t", src, got, want)
		}
	}
}

func TestInlineAllowedS3(t *testing.T) {
	local := "?endpoint=http%3A%2F%2F127.0.0.1%3A9000"
	o := Options{Endpoint: "unix:///tmp/x.sock", Mode: ModeNode, NodeID: "n", StateDir: "/tmp", CacheSocket: "/tmp/c.sock", UnmountTimeout: 1}
	o.InlineSources = []string{"s3://public/" + local, "s3://aws-open/imagenet/"}
	if err := o.Validate(); err != nil {
		t.Fatalf("S3 prefixes refused: %v", err)
	}
	for raw, want := range map[string]bool{
		"s3://public/x" + local:                                        true,
		"s3://public" + local:                                          true,
		"s3://public/x":                                                false, // AWS, not the allowed endpoint
		"s3://public/x?endpoint=http%3A%2F%2Fevil":                     false,
		"s3://aws-open/imagenet/train":                                 true,
		"s3://aws-open/imagenet-2":                                     false,
		"s3://aws-open/imagenet?region=eu-west-1":                      true, // the region does not change the host allowed
		"s3://aws-open/imagenet?endpoint=http%3A%2F%2F169.254.169.254": false,
	} {
		src, err := api.ParseSource(raw)
		if err != nil {
			t.Fatalf("api.ParseSource(%q): %v", raw, err)
		}
		if got := inlineAllowed(src, o.InlineSources); got != want {
			t.Errorf("inlineAllowed(%s) = %t, want %t", raw, got, want)
		}
	}
}

func TestParseInlineSource(t *testing.T) {
	for entry, want := range map[string]InlineSource{
		"file:///datasets/public/":                                    {Prefix: "file:///datasets/public/", Policy: InlineReadOnly},
		"shared:file:///datasets/public/":                             {Prefix: "file:///datasets/public/", Policy: InlineShared},
		"read-write:file:///scratch":                                  {Prefix: "file:///scratch", Policy: InlineReadWrite},
		"read-only:s3://open/?endpoint=http%3A%2F%2F127.0.0.1%3A9000": {Prefix: "s3://open/?endpoint=http%3A%2F%2F127.0.0.1%3A9000", Policy: InlineReadOnly},
	} {
		got, err := ParseInlineSource(entry)
		if err != nil || got != want {
			t.Errorf("ParseInlineSource(%q) = %+v, %v; want %+v", entry, got, err, want)
		}
	}
	for _, bad := range []string{"writable:file:///x", "shared:", "shared:file://relative"} {
		if _, err := ParseInlineSource(bad); err == nil {
			t.Errorf("ParseInlineSource(%q) accepted", bad)
		}
	}
	// The longest prefix decides.
	r, ok := inlineRule(api.Source{Scheme: "file", Path: "/d/public/scratch/x"}, []string{"shared:file:///d/public", "read-write:file:///d/public/scratch"})
	if !ok || r.Policy != InlineReadWrite {
		t.Errorf("inlineRule = %+v, %t; want the longer read-write prefix", r, ok)
	}
}
