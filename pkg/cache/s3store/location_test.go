package s3store

import (
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	good := []struct {
		in   string
		want Location
	}{
		{"s3://data", Location{Bucket: "data"}},
		{"s3://data/imagenet/train", Location{Bucket: "data", Prefix: "imagenet/train"}},
		{"s3://my.bucket-1/a", Location{Bucket: "my.bucket-1", Prefix: "a"}},
		{"s3://data/p?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=us-east-1", Location{Bucket: "data", Prefix: "p", Endpoint: "http://127.0.0.1:9000", Region: "us-east-1"}},
		{"s3://data?addressing=path&anonymous=true", Location{Bucket: "data", Addressing: "path", Anonymous: true}},
	}
	for _, c := range good {
		got, err := ParseURL(c.in)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("ParseURL(%q) = %+v, want %+v", c.in, got, c.want)
		}
		if got.String() != c.in {
			t.Errorf("String() = %q, want the input %q back", got.String(), c.in)
		}
	}
	bad := map[string]string{
		"file:///x":                        "not an s3:// URL",
		"s3://":                            "bucket",
		"s3://ab":                          "bucket",
		"s3://Data":                        "bucket",
		"s3://data/../x":                   "prefix",
		"s3://data/a//b":                   "clean",
		"s3://data/a/":                     "clean",
		"s3://data/./a":                    "clean",
		"s3://192.168.1.1/a":               "bucket",
		"s3://data/a#b":                    "not allowed",
		"s3://data?endpoint=ftp%3A%2F%2Fh": "endpoint",
		"s3://data?endpoint=http%3A%2F%2Fu%3Ap%40h":          "endpoint",
		"s3://data?endpoint=http%3A%2F%2Fh%2Fpath":           "endpoint",
		"s3://data?region=US%20EAST":                         "region",
		"s3://data?addressing=dns":                           "addressing",
		"s3://data?anonymous=false":                          "anonymous",
		"s3://data?color=red":                                "unknown option",
		"s3://data?region=b&endpoint=http%3A%2F%2F127.0.0.1": "canonical",
	}
	for in, want := range bad {
		_, err := ParseURL(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseURL(%q) = %v, want an error about %q", in, err, want)
		}
	}
}

func TestKeys(t *testing.T) {
	l := Location{Bucket: "b", Prefix: "p/q"}
	if got := l.Key(""); got != "p/q" {
		t.Errorf("Key(\"\") = %q", got)
	}
	if got := l.Key("x/y"); got != "p/q/x/y" {
		t.Errorf("Key = %q", got)
	}
	if got := l.DirKey("x"); got != "p/q/x/" {
		t.Errorf("DirKey = %q", got)
	}
	whole := Location{Bucket: "b"}
	if whole.DirKey("") != "" || whole.Key("a") != "a" || whole.DirKey("a") != "a/" {
		t.Errorf("whole-bucket keys: %q %q %q", whole.DirKey(""), whole.Key("a"), whole.DirKey("a"))
	}
}

func TestUnder(t *testing.T) {
	local := "?endpoint=http%3A%2F%2F127.0.0.1%3A9000"
	l, err := ParseURL("s3://public/imagenet/train" + local)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]bool{
		"s3://public/" + local:                    true,
		"s3://public" + local:                     true,
		"s3://public/imagenet/" + local:           true,
		"s3://public/imagenet/train" + local:      true,
		"s3://public/image" + local:               false, // not a whole segment
		"s3://public/imagenet/train/x" + local:    false,
		"s3://other/" + local:                     false,
		"s3://public/":                            false, // another endpoint (AWS)
		"s3://public/?endpoint=http%3A%2F%2Fevil": false,
	}
	for prefix, want := range cases {
		if got := l.Under(prefix); got != want {
			t.Errorf("Under(%q) = %t, want %t", prefix, got, want)
		}
	}
}

func TestCredentialsFromSecrets(t *testing.T) {
	c, err := CredentialsFromSecrets(map[string]string{"access-key": "AK", "secret-key": "SK"})
	if err != nil || c.AccessKey != "AK" || c.SecretKey != "SK" {
		t.Fatalf("got %+v, %v", c, err)
	}
	if c.Identity() == (Credentials{AccessKey: "AK", SecretKey: "SK2"}).Identity() {
		t.Error("two secret keys share an identity")
	}
	if strings.Contains(c.Identity(), "AK") || strings.Contains(c.Identity(), "SK") {
		t.Error("identity shows a credential")
	}
	for _, m := range []map[string]string{
		{"access-key": "AK"},
		{"secret-key": "SK"},
		{"session-token": "T"},
		{"access-key": "AK", "secret-key": "SK", "password": "hunter2"},
		{"access-key": "AK", "secret-key": "SK", "ca-bundle": "not pem"},
	} {
		_, err := CredentialsFromSecrets(m)
		if err == nil {
			t.Errorf("CredentialsFromSecrets(%v) accepted", m)
			continue
		}
		for _, v := range m {
			if strings.Contains(err.Error(), v) {
				t.Errorf("error %q shows the secret value %q", err, v)
			}
		}
	}
}
