package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/cistern-csi/cistern/pkg/cache/api"
)

// cacheFlags are the flags every cache command takes.
type cacheFlags struct {
	socket string
}

func (f *cacheFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&f.socket, "socket", "/var/lib/cistern/cache.sock", "control socket of the node's cistern-cache")
}

// runStats prints what the node's cache daemon serves.
func runStats(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cistern stats", flag.ContinueOnError)
	var cf cacheFlags
	cf.add(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	st, err := api.NewClient(cf.socket).Stats(ctx)
	if err != nil {
		return err
	}
	c := st.Cache
	fmt.Fprintf(out, "cache: hits %d, misses %d, read-through %d, corrupt %d, evictions %d, source %s, dormant files %d\n",
		c.Hits, c.Misses, c.ReadThrough, c.Corrupt, c.Evictions, human(c.SourceBytes), c.Dormant)
	if c.IndexLoading {
		fmt.Fprintln(out, "cache index: loading (files read meanwhile load their own entry first)")
	}
	for t, b := range c.TierBytes {
		fmt.Fprintf(out, "tier %-5s holds %s, served %s\n", t, human(b), human(c.TierServed[t]))
	}
	if g := st.Group; g != nil {
		role := "owner"
		if !g.Owner {
			role = "client-only (not among the members, or weight 0)"
		}
		fmt.Fprintf(out, "cache group %s: member %s (%s) on %s, %d members, %d datasets; from peers %s, to peers %s in %d blocks (%d as a hot block's replica)\n",
			g.Name, g.Self, role, g.Listen, len(g.Members), g.Datasets, human(g.PeerBytesIn), human(g.PeerBytesOut), g.BlocksOut, g.ReplicaBlocksOut)
		if len(g.Members) > 0 {
			var ms []string
			for _, m := range g.Members {
				ms = append(ms, fmt.Sprintf("%s (serves %d)", m, len(g.Serving[m])))
			}
			fmt.Fprintf(out, "cache group members: %s\n", strings.Join(ms, ", "))
		}
		if g.MembersError != "" {
			fmt.Fprintf(out, "cache group members: last read failed (%s); the list before is used\n", g.MembersError)
		}
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nDATASET\tKEY\tMODE\tVOLUMES\tFILES\tINODES\tCACHED\tHITS\tMISSES\tWARM-UP\tSOURCE")
	for _, d := range st.Datasets {
		mode := "rw"
		if d.ReadOnly {
			mode = "ro"
		}
		if d.AccessPattern == api.PatternSmallFiles {
			mode += ",small-files"
		}
		var cached int64
		for _, b := range d.Stats.TierBytes {
			cached += b
		}
		warm := "-"
		if w := d.Warmup; w != nil {
			warm = fmt.Sprintf("%s/%s", human(w.DoneBytes), human(w.TotalBytes))
			if w.Error != "" {
				warm = "failed: " + w.Error
			} else if w.Done {
				warm += " done"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%d\t%d\t%s\t%s\n", d.Dataset, d.Key, mode, d.Holders, d.Stats.Files, d.Nodes, human(cached), d.Stats.Hits, d.Stats.Misses, warm, d.Source)
	}
	return tw.Flush()
}

// runWarmup prefetches paths of a mounted dataset, with a progress bar.
func runWarmup(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("cistern warmup", flag.ContinueOnError)
	var cf cacheFlags
	cf.add(fs)
	dataset := fs.String("dataset", "", "the dataset's name (as in its parameters)")
	key := fs.String("key", "", "the dataset key (from cistern stats), when a name is mounted more than once")
	if err := fs.Parse(args); err != nil {
		return err
	}
	paths := fs.Args()
	if len(paths) == 0 {
		paths = []string{""}
	}
	cl := api.NewClient(cf.socket)
	if *key == "" {
		if *dataset == "" {
			return errors.New("--dataset or --key is required")
		}
		st, err := cl.Stats(ctx)
		if err != nil {
			return err
		}
		var keys []string
		for _, d := range st.Datasets {
			if d.Dataset == *dataset {
				keys = append(keys, d.Key)
			}
		}
		switch len(keys) {
		case 0:
			return fmt.Errorf("dataset %q is not mounted on this node", *dataset)
		case 1:
			*key = keys[0]
		default:
			return fmt.Errorf("dataset %q is mounted %d times (keys %s): pick one with --key", *dataset, len(keys), strings.Join(keys, ", "))
		}
	}
	var last api.WarmupProgress
	err := cl.Warmup(ctx, *key, paths, func(p api.WarmupProgress) {
		last = p
		fmt.Fprintf(out, "\r%s", progressBar(p))
	})
	fmt.Fprintln(out)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "warmed %d files, %s\n", last.Files, human(last.DoneBytes))
	return nil
}

func progressBar(p api.WarmupProgress) string {
	const width = 30
	frac := 1.0
	if p.TotalBytes > 0 {
		frac = float64(p.DoneBytes) / float64(p.TotalBytes)
	}
	n := int(frac * width)
	return fmt.Sprintf("[%s%s] %3.0f%% %s / %s, %d files", strings.Repeat("#", n), strings.Repeat(" ", width-n), frac*100, human(p.DoneBytes), human(p.TotalBytes), p.Files)
}

func human(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
