package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// The metadata step: `find` plus `stat` of a tree of many files (the
// dataset's meta/ directory: 100 directories of empty-ish files), cold and
// warm, one walker, as a data loader's index pass or a user's `find` does.

// metaBudget bounds one walk: a system slower than that (rclone cold
// lists a directory in seconds) is measured on the part it walked.
const metaBudget = 60 * time.Second

// errBudget stops a walk at metaBudget.
var errBudget = errors.New("out of time")

// metaResult is one system's walk of the tree.
type metaResult struct {
	system, phase string
	files         int
	elapsed       time.Duration
	partial       bool // stopped at metaBudget: files is what it walked
	afterPartial  bool // warm after a cold walk that was stopped: part of it was cold
	err           string
}

func (m metaResult) label() string {
	if m.phase == "" {
		return m.system
	}
	return m.system + "-" + m.phase
}

// rate is entries (files and directories) per second.
func (m metaResult) rate() float64 {
	if m.elapsed <= 0 {
		return 0
	}
	return float64(m.files) / m.elapsed.Seconds()
}

// generateMeta writes n files of 16 bytes under root/meta.
func generateMeta(root string, n int) error {
	for i := range n {
		p := filepath.Join(root, "meta", fmt.Sprintf("%03d", i%100), fmt.Sprintf("entry-%06d", i))
		if i < 100 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(p, []byte(strconv.Itoa(i)+"\n"), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// walkStat is find plus stat: every entry under dir is listed and lstat'ed;
// it returns the number of files, and errBudget if it ran out of time.
func walkStat(dir string) (int, error) {
	files := 0
	deadline := time.Now().Add(metaBudget)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errBudget
		}
		if _, err := os.Lstat(p); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files++
		}
		return nil
	})
	return files, err
}

// listStore is the direct system's walk: a recursive LIST, which returns
// each object's size and time (its stat).
func listStore(ctx context.Context, acc s3Access, prefix string) (int, error) {
	n := 0
	for o := range acc.mc.ListObjects(ctx, acc.bucket, minio.ListObjectsOptions{Prefix: acc.prefix + "/" + prefix, Recursive: true}) {
		if o.Err != nil {
			return n, o.Err
		}
		n++
	}
	return n, nil
}

// measureMeta walks the meta tree through every system: cold (caches
// emptied, as before a cold sweep step) and warm for those with a cache.
func measureMeta(ctx context.Context, systems []*system, want int) ([]metaResult, error) {
	var out []metaResult
	for _, sys := range systems {
		if sys.skip != "" {
			continue
		}
		for _, phase := range sys.phases() {
			if phase == "cold" {
				if err := sys.makeCold(ctx); err != nil {
					return nil, err
				}
			}
			r := metaResult{system: sys.name, phase: phase}
			if phase == "warm" && len(out) > 0 && out[len(out)-1].partial {
				r.afterPartial = true
			}
			start := time.Now()
			var err error
			switch acc := sys.acc.(type) {
			case s3Access:
				r.files, err = listStore(ctx, acc, "meta/")
			case fileAccess:
				r.files, err = walkStat(filepath.Join(acc.root, "meta"))
			default:
				err = fmt.Errorf("no walk for %T", sys.acc)
			}
			r.elapsed = time.Since(start)
			if errors.Is(err, errBudget) {
				r.partial, err = true, nil
			} else if err == nil && r.files != want {
				err = fmt.Errorf("found %d files, want %d", r.files, want)
			}
			if err != nil {
				r.err = strings.ReplaceAll(err.Error(), "\n", " ")
			}
			out = append(out, r)
			note := r.err
			if r.partial {
				note = "(stopped after " + metaBudget.String() + ")"
			}
			say("metadata %-13s %6d files in %8s: %8.0f files/s %s", r.label(), r.files, r.elapsed.Round(time.Millisecond), r.rate(), note)
		}
	}
	return out, nil
}
