package driver

import (
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
)

func TestParseParams(t *testing.T) {
	base := func(kv ...string) map[string]string {
		m := map[string]string{"dataset": "imagenet", "source": "file:///datasets/imagenet"}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == "<unset>" {
				delete(m, kv[i])
				continue
			}
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name    string
		in      map[string]string
		inline  bool
		want    Params
		wantErr string
	}{
		{name: "defaults", in: base(), want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "file", Path: "/datasets/imagenet"}, Access: ReadOnly, SubPath: DefaultSubPath, OnDelete: Retain, MetaCache: time.Hour}},
		{name: "inline defaults", in: base(), inline: true, want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "file", Path: "/datasets/imagenet"}, Access: ReadOnly, SubPath: DefaultInlineSubPath, OnDelete: Retain, MetaCache: time.Hour}},
		{name: "shared defaults to root", in: base("shared", "true"), want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "file", Path: "/datasets/imagenet"}, Access: ReadOnly, Shared: true, OnDelete: Retain, MetaCache: time.Hour}},
		{name: "read-write delete", in: base("access", "read-write", "onDelete", "delete", "cacheGroup", "research-groups", "subPath", "${pvc.namespace}/${pv.name}"),
			want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "file", Path: "/datasets/imagenet"}, Access: ReadWrite, SubPath: "${pvc.namespace}/${pv.name}", CacheGroup: "research-groups", OnDelete: Delete, MetaCache: time.Second}},
		{name: "metadata keys are skipped", in: base(MetaPVCNamespace, "a", "csi.storage.k8s.io/provisioner-secret-name", "s"), want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "file", Path: "/datasets/imagenet"}, Access: ReadOnly, SubPath: DefaultSubPath, OnDelete: Retain, MetaCache: time.Hour}},

		{name: "unknown key", in: base("acess", "read-write"), wantErr: `unknown parameter "acess"`},
		{name: "not built yet", in: base("blockSize", "4Mi"), wantErr: `parameter "blockSize" is not supported yet`},
		{name: "small files", in: base("accessPattern", "small-files"), want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "file", Path: "/datasets/imagenet"}, Access: ReadOnly, SubPath: DefaultSubPath, OnDelete: Retain, AccessPattern: "small-files", MetaCache: time.Hour}},
		{name: "small files read-write", in: base("accessPattern", "small-files", "access", "read-write"), wantErr: "needs access=read-only"},
		{name: "metacache and warmup", in: base("metacache", "0", "warmup", "/, train/shard-0/ ,val"), want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "file", Path: "/datasets/imagenet"}, Access: ReadOnly, SubPath: DefaultSubPath, OnDelete: Retain, Warmup: []string{"", "train/shard-0", "val"}}},
		{name: "bad metacache", in: base("metacache", "forever"), wantErr: "metacache \"forever\" must be a duration"},
		{name: "negative metacache", in: base("metacache", "-1s"), wantErr: "must be a duration"},
		{name: "warmup escapes", in: base("warmup", "train,../etc"), wantErr: `".." segment`},
		{name: "warmup empty segment", in: base("warmup", "a//b"), wantErr: "empty segment"},
		{name: "bad pattern", in: base("accessPattern", "tiny"), wantErr: `accessPattern "tiny"`},
		{name: "missing dataset", in: base("dataset", "<unset>"), wantErr: "parameter dataset is required"},
		{name: "dataset not a label", in: base("dataset", "Image_Net"), wantErr: "must be a DNS label"},
		{name: "missing source", in: base("source", "<unset>"), wantErr: "source is required"},
		{name: "s3", in: base("source", "s3://bucket/prefix", "endpoint", "http://127.0.0.1:9000", "region", "us-east-1", "addressing", "path"),
			want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "s3", S3: s3store.Location{Bucket: "bucket", Prefix: "prefix", Endpoint: "http://127.0.0.1:9000", Region: "us-east-1", Addressing: "path"}}, Access: ReadOnly, SubPath: DefaultSubPath, OnDelete: Retain, MetaCache: time.Hour}},
		{name: "s3 anonymous", in: base("source", "s3://public", "anonymous", "true"),
			want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "s3", S3: s3store.Location{Bucket: "public", Anonymous: true}}, Access: ReadOnly, SubPath: DefaultSubPath, OnDelete: Retain, MetaCache: time.Hour}},
		{name: "s3 owners", in: base("source", "s3://bucket", "uid", "1000", "gid", "2000", "fileMode", "0640", "dirMode", "750"),
			want: Params{Dataset: "imagenet", Source: api.Source{Scheme: "s3", S3: s3store.Location{Bucket: "bucket"}}, Access: ReadOnly, SubPath: DefaultSubPath, OnDelete: Retain, MetaCache: time.Hour, Owner: Owner{UID: 1000, GID: 2000, FileMode: 0o640, DirMode: 0o750}}},
		{name: "uid on a file source", in: base("uid", "1000"), wantErr: "uid applies to s3:// sources only"},
		{name: "s3 bad uid", in: base("source", "s3://bucket", "uid", "-1"), wantErr: `uid "-1" must be a numeric id`},
		{name: "s3 bad fileMode", in: base("source", "s3://bucket", "fileMode", "0888"), wantErr: "fileMode \"0888\" must be octal"},
		{name: "s3 fileMode with special bits", in: base("source", "s3://bucket", "fileMode", "4755"), wantErr: "at most 0777"},
		{name: "s3 query in source", in: base("source", "s3://bucket/p?endpoint=http%3A%2F%2Fh"), wantErr: "must not have a query"},
		{name: "s3 bad endpoint", in: base("source", "s3://bucket", "endpoint", "http://user:pw@h"), wantErr: "parameter endpoint"},
		{name: "s3 bad addressing", in: base("source", "s3://bucket", "addressing", "dns"), wantErr: "addressing \"dns\""},
		{name: "s3 bad anonymous", in: base("source", "s3://bucket", "anonymous", "maybe"), wantErr: "anonymous \"maybe\""},
		{name: "s3 bad bucket", in: base("source", "s3://B/x"), wantErr: "not a valid bucket name"},
		{name: "s3 unclean prefix", in: base("source", "s3://bucket/a//b"), wantErr: "must be clean"},
		{name: "endpoint on a file source", in: base("endpoint", "http://127.0.0.1:9000"), wantErr: "endpoint applies to s3:// sources only"},
		{name: "juicefs not yet", in: base("source", "juicefs://vol"), wantErr: "juicefs:// is not supported yet"},
		{name: "unknown scheme", in: base("source", "nfs://server/x"), wantErr: `scheme "nfs" is unknown`},
		{name: "relative source", in: base("source", "file://datasets"), wantErr: "no host or user"},
		{name: "unclean source", in: base("source", "file:///datasets/../etc"), wantErr: "must be absolute, clean"},
		{name: "root source", in: base("source", "file:///"), wantErr: "not '/'"},
		{name: "credentials in source", in: base("source", "file://user:pw@/x"), wantErr: "no host or user"},
		{name: "bad access", in: base("access", "rw"), wantErr: "access \"rw\" must be read-only or read-write"},
		{name: "shared read-write", in: base("shared", "true", "access", "read-write"), wantErr: "shared dataset is served read-only"},
		{name: "bad shared", in: base("shared", "yes"), wantErr: "shared \"yes\" must be true or false"},
		{name: "delete on read-only", in: base("onDelete", "delete"), wantErr: "never writes into a read-only dataset"},
		{name: "bad onDelete", in: base("access", "read-write", "onDelete", "purge"), wantErr: "onDelete \"purge\""},
		{name: "bad cacheGroup", in: base("cacheGroup", "Pool A"), wantErr: "cacheGroup \"Pool A\" must be a DNS label"},
		{name: "template without namespace", in: base("subPath", "${pvc.name}"), wantErr: "must start with ${pvc.namespace}"},
		{name: "template into another namespace", in: base("subPath", "team-b/${pvc.name}"), wantErr: "must start with ${pvc.namespace}"},
		{name: "inline template with pvc variable", in: base("subPath", "${pvc.namespace}"), inline: true, wantErr: "must start with ${pod.namespace}"},
		{name: "inline template with dotdot", in: base("subPath", "${pod.namespace}/../team-b"), inline: true, wantErr: `".." segment`},
		{name: "unknown variable", in: base("subPath", "${pvc.namespace}/${pod.name}"), wantErr: "unknown variable ${pod.name}"},
		{name: "shared into reserved dir", in: base("shared", "true", "subPath", ".cistern/volumes"), wantErr: "reserves"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseParams(tc.in, tc.inline)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseParams() error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseParams() error = %v", err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("ParseParams() = %+v, want %+v", *got, tc.want)
			}
			// The canonical context parses back to the same parameters.
			again, err := ParseParams(got.Context(), tc.inline)
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("ParseParams(Context()) = %+v, %v; want %+v", again, err, *got)
			}
		})
	}
}

func TestContextCarriesNoMetadata(t *testing.T) {
	in := map[string]string{"dataset": "d", "source": "file:///d", MetaPVCNamespace: "ns", MetaPVCName: "claim"}
	p, err := ParseParams(in, false)
	if err != nil {
		t.Fatal(err)
	}
	for k := range maps.Keys(p.Context()) {
		if strings.HasPrefix(k, metaPrefix) {
			t.Errorf("context carries CO metadata key %q", k)
		}
	}
}
