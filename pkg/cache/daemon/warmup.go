package daemon

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"strings"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Warmup fetches every file under paths of dataset key into the cache,
// reporting progress as it goes.
func (d *Daemon) Warmup(ctx context.Context, key string, paths []string, progress func(api.WarmupProgress)) error {
	m, err := d.lookup(key)
	if err != nil {
		return err
	}
	src := m.ds.Source()
	type file struct {
		name string
		attr source.Attr
	}
	var files []file
	var total int64
	var walk func(name string) error
	walk = func(name string) error {
		a, err := src.Stat(ctx, name)
		if err != nil {
			return err
		}
		switch {
		case a.Mode.IsDir():
			ents, err := src.List(ctx, name)
			if err != nil {
				return err
			}
			for _, e := range ents {
				if err := walk(path.Join(name, e.Name)); err != nil {
					return err
				}
			}
		case a.Mode.IsRegular():
			files = append(files, file{name, a})
			total += a.Size
		}
		return nil
	}
	for _, p := range paths {
		p = strings.Trim(path.Clean("/"+p), "/")
		if err := walk(p); err != nil {
			return &statusError{http.StatusNotFound, err}
		}
	}
	var done int64
	for i, f := range files {
		base := done
		if err := m.ds.Warm(ctx, f.name, f.attr, func(n int64) {
			progress(api.WarmupProgress{File: f.name, DoneBytes: base + n, TotalBytes: total, Files: i})
		}); err != nil {
			return err
		}
		done += f.attr.Size
		progress(api.WarmupProgress{File: f.name, DoneBytes: done, TotalBytes: total, Files: i + 1})
	}
	progress(api.WarmupProgress{DoneBytes: done, TotalBytes: total, Files: len(files), Done: true})
	return nil
}

// Evict drops the cached files of dataset key under prefix.
func (d *Daemon) Evict(key, prefix string) (int, error) {
	m, err := d.lookup(key)
	if err != nil {
		return 0, err
	}
	return m.ds.EvictTree(strings.Trim(prefix, "/")), nil
}

// lookup returns the mounted dataset key.
func (d *Daemon) lookup(key string) (*mounted, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.datasets[key]
	if m == nil {
		return nil, &statusError{http.StatusNotFound, fmt.Errorf("dataset key %q is not mounted", key)}
	}
	return m, nil
}
