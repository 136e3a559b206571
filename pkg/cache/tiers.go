package cache

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// ParseTiers parses a cacheTiers spec: comma-separated tiers, hottest
// first, each "mem:SIZE" (a tmpfs the daemon mounts at memDir) or
// "disk:DIR:SIZE". Sizes take the suffixes Ki, Mi, Gi, Ti.
func ParseTiers(spec, memDir string) ([]TierOptions, error) {
	var out []TierOptions
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		kind, rest, _ := strings.Cut(part, ":")
		var t TierOptions
		switch kind {
		case "mem":
			t = TierOptions{Name: "mem", Dir: memDir}
		case "disk":
			i := strings.LastIndexByte(rest, ':')
			if i < 0 {
				return nil, fmt.Errorf("tier %q: want disk:DIR:SIZE", part)
			}
			t = TierOptions{Name: "disk", Dir: rest[:i]}
			rest = rest[i+1:]
			if !filepath.IsAbs(t.Dir) || filepath.Clean(t.Dir) != t.Dir {
				return nil, fmt.Errorf("tier %q: the directory must be an absolute, clean path", part)
			}
		default:
			return nil, fmt.Errorf("tier %q: want mem:SIZE or disk:DIR:SIZE", part)
		}
		if seen[t.Name] {
			return nil, fmt.Errorf("tier %q: only one %s tier is supported", part, t.Name)
		}
		seen[t.Name] = true
		q, err := ParseSize(rest)
		if err != nil {
			return nil, fmt.Errorf("tier %q: %w", part, err)
		}
		t.Quota = q
		out = append(out, t)
	}
	return out, nil
}

// ParseSize parses "512Mi", "40Gi", "1048576".
func ParseSize(s string) (int64, error) {
	mult := int64(1)
	for suf, m := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40} {
		if strings.HasSuffix(s, suf) {
			s, mult = strings.TrimSuffix(s, suf), m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a positive number with an optional Ki, Mi, Gi or Ti suffix", s+"")
	}
	return n * mult, nil
}
