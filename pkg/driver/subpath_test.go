package driver

import (
	"errors"
	"strings"
	"testing"
)

func TestResolveSubPath(t *testing.T) {
	pvc := map[string]string{VarPVCNamespace: "team-a", VarPVCName: "claim-1", VarPVName: "pvc-0a1b"}
	tests := []struct {
		tmpl    string
		vars    map[string]string
		want    string
		wantErr string
	}{
		{tmpl: DefaultSubPath, vars: pvc, want: "team-a/claim-1"},
		{tmpl: "${pvc.namespace}/${pv.name}", vars: pvc, want: "team-a/pvc-0a1b"},
		{tmpl: "${pvc.namespace}/features-${pvc.name}", vars: pvc, want: "team-a/features-claim-1"},
		{tmpl: "", vars: pvc, want: ""},
		{tmpl: "market-data/2026", vars: pvc, want: "market-data/2026"},
		{tmpl: "${pvc.namespace}", vars: map[string]string{VarPVCNamespace: ".."}, wantErr: "not a single path segment"},
		{tmpl: "${pvc.namespace}", vars: map[string]string{VarPVCNamespace: "a/b"}, wantErr: "not a single path segment"},
		{tmpl: "${pvc.namespace}/${pvc.name}", vars: map[string]string{VarPVCNamespace: "a"}, wantErr: "unknown variable ${pvc.name}"},
		{tmpl: "${pvc.namespace}/${pvc.name}", vars: map[string]string{VarPVCNamespace: "a", VarPVCName: ""}, wantErr: "has no value"},
		{tmpl: "${pvc.namespace", vars: pvc, wantErr: "unterminated"},
		{tmpl: "$HOME", vars: pvc, wantErr: "must start a ${variable}"},
		{tmpl: "/etc", vars: pvc, wantErr: "absolute"},
		{tmpl: "a//b", vars: pvc, wantErr: "empty segment"},
		{tmpl: "a/./b", vars: pvc, wantErr: `"." segment`},
		{tmpl: "a/../../etc", vars: pvc, wantErr: `".." segment`},
		{tmpl: "a/\x00b", vars: pvc, wantErr: "NUL"},
		{tmpl: "a/" + strings.Repeat("x", 256), vars: pvc, wantErr: "more than 255"},
		{tmpl: strings.Repeat("abcdefg/", 600), vars: pvc, wantErr: "more than 4095"},
		{tmpl: ".cistern/volumes", vars: pvc, wantErr: "reserves"},
	}
	for _, tc := range tests {
		got, err := ResolveSubPath(tc.tmpl, tc.vars)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalidSubPath) {
				t.Errorf("ResolveSubPath(%.40q) error = %v, want ErrInvalidSubPath containing %q", tc.tmpl, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ResolveSubPath(%q) = %q, %v; want %q", tc.tmpl, got, err, tc.want)
		}
	}
}

func TestOverlaps(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"team-a/x", "team-a/x", true},
		{"team-a", "team-a/x", true},
		{"team-a/x", "team-a", true},
		{"team-a/x", "team-a/xy", false},
		{"team-a/x", "team-b/x", false},
		{"", "team-a", true},
		{"team-a/x/y", "team-a/x", true},
	}
	for _, tc := range tests {
		if got := overlaps(tc.a, tc.b); got != tc.want {
			t.Errorf("overlaps(%q, %q) = %t, want %t", tc.a, tc.b, got, tc.want)
		}
	}
}
