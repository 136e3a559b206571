package driver

import (
	"errors"
	"strings"
	"testing"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
)

func TestVolumeIDRoundTrip(t *testing.T) {
	ids := []VolumeID{
		{Dataset: "imagenet", ReadOnly: true, OnDelete: Retain, NameHash: NameHash("pvc-1"), Source: api.Source{Scheme: "file", Path: "/datasets/imagenet"}, SubPath: "team-a/claim"},
		{Dataset: "feat", OnDelete: Delete, NameHash: NameHash("pvc-2"), Source: api.Source{Scheme: "file", Path: "/data/with#hash and%percent"}, SubPath: "ns/a#b%c d"},
		{Dataset: "public", ReadOnly: true, OnDelete: Retain, NameHash: NameHash("x"), Source: api.Source{Scheme: "file", Path: "/p"}, SubPath: ""},
		{Dataset: "objects", OnDelete: Archive, NameHash: NameHash("s3"), Source: api.Source{Scheme: "s3", S3: s3store.Location{Bucket: "data", Prefix: "team/x", Endpoint: "http://127.0.0.1:9000", Region: "us-east-1", Addressing: "path"}}, SubPath: "ns/v"},
		{Dataset: "open", ReadOnly: true, OnDelete: Retain, NameHash: NameHash("o"), Source: api.Source{Scheme: "s3", S3: s3store.Location{Bucket: "open-data", Anonymous: true}}, SubPath: "ns"},
	}
	for _, id := range ids {
		s := id.String()
		if strings.Count(s, "#") != 6 {
			t.Errorf("%q: want exactly six separators", s)
		}
		got, err := ParseVolumeID(s)
		if err != nil || got != id {
			t.Errorf("ParseVolumeID(%q) = %+v, %v; want %+v", s, got, err, id)
		}
	}
}

func TestParseVolumeIDRejects(t *testing.T) {
	good := VolumeID{Dataset: "d", OnDelete: Delete, NameHash: NameHash("n"), Source: api.Source{Scheme: "file", Path: "/data"}, SubPath: "ns/v"}.String()
	field := func(i int, v string) string {
		f := strings.Split(good, "#")
		f[i] = v
		return strings.Join(f, "#")
	}
	tests := map[string]string{
		"empty":            "",
		"foreign":          "fake-vol-id",
		"other version":    strings.Replace(good, "cistern1", "cistern2", 1),
		"extra field":      good + "#x",
		"bad dataset":      field(1, "D_D"),
		"bad access":       field(2, "wr"),
		"bad onDelete":     field(3, "purge"),
		"ro with delete":   field(2, "ro"),
		"short hash":       field(4, "abc"),
		"upper hash":       field(4, strings.ToUpper(NameHash("n"))),
		"relative source":  field(5, "file:%2F%2Fdata"),
		"dotdot source":    field(5, "file:%2F%2F%2Fdata%2F..%2Fetc"),
		"dotdot subPath":   field(6, "ns%2F..%2F..%2Fetc"),
		"absolute subPath": field(6, "%2Fetc"),
		"NUL subPath":      field(6, "ns%00"),
		"bad escape":       field(6, "%zz"),
		"non-canonical":    field(6, "ns%2Fv%41"),
		"reserved subPath": field(6, ".cistern%2Fvolumes"),
	}
	for name, id := range tests {
		if _, err := ParseVolumeID(id); !errors.Is(err, ErrBadVolumeID) {
			t.Errorf("%s: ParseVolumeID(%q) error = %v, want ErrBadVolumeID", name, id, err)
		}
	}
	if _, err := ParseVolumeID(good); err != nil {
		t.Fatalf("control: %v", err)
	}
}

func TestVolumeIDCarriesNoSecrets(t *testing.T) {
	// A source with user information never parses, so it can never reach
	// an ID.
	if _, err := api.ParseSource("file://admin:hunter2@/data"); err == nil {
		t.Fatal("a source with credentials was accepted")
	}
}
