package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cistern-csi/cistern/pkg/cache"
	"golang.org/x/sys/unix"
)

// ParseTiers parses a cacheTiers spec: comma-separated tiers, hottest
// first, each "mem:SIZE" (a tmpfs the daemon mounts at memDir) or
// "disk:DIR:SIZE". Sizes take the suffixes Ki, Mi, Gi, Ti.
func ParseTiers(spec, memDir string) ([]cache.TierOptions, error) {
	var out []cache.TierOptions
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		kind, rest, _ := strings.Cut(part, ":")
		var t cache.TierOptions
		switch kind {
		case "mem":
			t = cache.TierOptions{Name: "mem", Dir: memDir}
		case "disk":
			i := strings.LastIndexByte(rest, ':')
			if i < 0 {
				return nil, fmt.Errorf("tier %q: want disk:DIR:SIZE", part)
			}
			t = cache.TierOptions{Name: "disk", Dir: rest[:i]}
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

// MountTmpfs mounts the memory tier: a dedicated tmpfs with transparent
// huge pages for files that fit (reads at page-cache speed).
func MountTmpfs(dir string, size int64) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	_ = unix.Unmount(dir, unix.MNT_DETACH) // a previous run's
	opts := fmt.Sprintf("size=%d,huge=within_size,mode=0700", size)
	if err := unix.Mount("cistern-mem", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		// Older kernels without huge pages for tmpfs.
		if err2 := unix.Mount("cistern-mem", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err2 != nil {
			return fmt.Errorf("mount memory tier at %s: %w", dir, err)
		}
	}
	return nil
}
