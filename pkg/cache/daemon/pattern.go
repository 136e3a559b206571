package daemon

import (
	"context"
	"fmt"
	"path"
	"time"

	"k8s.io/klog/v2"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// A read-only dataset mounted without an accessPattern gets one chosen
// from a sample of its tree, at its first mount on the node:
//
//   - small-files (FUSE no-open mode: no OPEN, FLUSH or RELEASE round
//     trip per file, the page cache kept across opens) when most files are
//     small: a warm small file then reads at nearly the page cache's rate,
//     where each open's round trips would cap it at a fraction of it;
//   - default (an OPEN per file, passthrough to the cached copy or, cold,
//     to a POSIX source's own file) otherwise.
//
// No-open mode is the connection's, not a file's: a large file of a
// small-files dataset is read through the daemon and the page cache, never
// in passthrough. From an object store that costs little (its cold reads
// come through the daemon anyway); from a POSIX source a large file's cold
// read would lose the source's own speed, so there the bytes of large
// files must be a small share of the sample too.
const (
	sampleFiles   = 1000            // files looked at, at most
	sampleDirs    = 64              // directories listed, at most
	sampleTime    = 2 * time.Second // time spent, at most
	sampleMin     = 100             // fewer files: default
	smallFileSize = 1 << 20         // a small file, in bytes
)

// treeSample is what a breadth-first walk of the dataset's first
// directories found.
type treeSample struct {
	dirs, files, small int
	bytes, largeBytes  int64
}

func (s treeSample) String() string {
	return fmt.Sprintf("%d of %d files up to %d KiB, %d of %d MiB in larger files, %d directories listed",
		s.small, s.files, smallFileSize>>10, s.largeBytes>>20, s.bytes>>20, s.dirs)
}

// sampleTree walks src breadth-first from its root until it has seen
// sampleFiles files, listed sampleDirs directories or spent sampleTime.
func sampleTree(ctx context.Context, src source.Source) (treeSample, error) {
	ctx, cancel := context.WithTimeout(ctx, sampleTime)
	defer cancel()
	var s treeSample
	queue := []string{""}
	for len(queue) > 0 && s.dirs < sampleDirs && s.files < sampleFiles {
		dir := queue[0]
		queue = queue[1:]
		entries, err := src.List(ctx, dir)
		if err != nil {
			if ctx.Err() != nil && s.dirs > 0 {
				break // out of time: judge what was seen
			}
			return s, err
		}
		s.dirs++
		for _, e := range entries {
			switch {
			case e.Attr.Mode.IsDir():
				if dir != "" || e.Name != api.ReservedDir {
					queue = append(queue, path.Join(dir, e.Name))
				}
			case e.Attr.Mode.IsRegular() && s.files < sampleFiles:
				s.files++
				s.bytes += e.Attr.Size
				if e.Attr.Size <= smallFileSize {
					s.small++
				} else {
					s.largeBytes += e.Attr.Size
				}
			}
		}
	}
	return s, nil
}

// choosePattern is the access pattern a sample calls for: small-files
// when at least sampleMin files were seen and nine in ten are small (and,
// for a POSIX source, at most a tenth of their bytes are in larger files).
func choosePattern(s treeSample, posix bool) string {
	small := s.files >= sampleMin && s.small*10 >= s.files*9
	if posix {
		small = small && s.largeBytes*10 <= s.bytes
	}
	if small {
		return api.PatternSmallFiles
	}
	return api.PatternDefault
}

// choosePatternOf returns the access pattern to serve req's dataset with:
// the request's, or for a read-only dataset without one, the sample's
// choice (default when the sample fails).
func choosePatternOf(ctx context.Context, req api.MountRequest, src source.Source, log klog.Logger) string {
	if req.AccessPattern != "" || !req.ReadOnly {
		return req.AccessPattern
	}
	started := time.Now()
	s, err := sampleTree(ctx, src)
	if err != nil {
		log.Info("Could not sample the dataset to choose its access pattern: default", "err", err.Error())
		return api.PatternDefault
	}
	_, posix := src.(source.Writable)
	p := choosePattern(s, posix)
	log.Info("Access pattern chosen from a sample of the dataset", "accessPattern", p, "sample", s.String(), "took", time.Since(started))
	return p
}
