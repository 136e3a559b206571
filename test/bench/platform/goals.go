package main

import (
	"fmt"
	"strings"
)

// goal is one of the cold-path goals (issue 13) this benchmark can judge:
// the figure measured in this run, the goal, and whether it is met.
type goal struct {
	figure, value, want string
	pass                bool
}

func (g goal) String() string {
	verdict := "fail"
	if g.pass {
		verdict = "pass"
	}
	return fmt.Sprintf("%s: %s (goal %s) %s", g.figure, g.value, g.want, verdict)
}

// goals judges this run against the cold-path goals. A goal this run
// cannot measure is listed as not measured, and fails.
func (r *report) goals() []goal {
	top := r.top()
	var out []goal
	for _, kind := range []string{"small", "large"} {
		g := goal{figure: fmt.Sprintf("%s files, %d readers, cold: average latency against direct", kind, top), want: "<= -40%", value: "n/a"}
		d, ok1 := r.find(kind, top, "direct")
		x, ok2 := r.find(kind, top, "cistern-cold")
		if ok1 && ok2 && d.avg > 0 {
			change := float64(x.avg)/float64(d.avg) - 1
			g.value, g.pass = pct(change), change <= -0.40
		}
		out = append(out, g)
	}
	// No worse than rclone or s3fs, cold, in average or p99, in any step.
	var worse []string
	steps := 0
	for _, kind := range []string{"small", "large"} {
		for _, n := range r.c.levels {
			x, ok := r.find(kind, n, "cistern-cold")
			if !ok {
				continue
			}
			steps++
			for _, peer := range []string{"rclone-cold", "s3fs-cold"} {
				p, ok := r.find(kind, n, peer)
				if !ok || p.err != "" {
					continue
				}
				if x.avg > p.avg {
					worse = append(worse, fmt.Sprintf("%s %d avg vs %s", kind, n, strings.TrimSuffix(peer, "-cold")))
				}
				if x.p99 > p.p99 {
					worse = append(worse, fmt.Sprintf("%s %d p99 vs %s", kind, n, strings.TrimSuffix(peer, "-cold")))
				}
			}
		}
	}
	v := fmt.Sprintf("worse in %d comparisons of %d steps", len(worse), steps)
	if len(worse) > 0 {
		v += " (" + strings.Join(worse, "; ") + ")"
	}
	out = append(out, goal{figure: "cold, every step: Cistern's average and p99 against rclone and s3fs", value: v, want: "never worse", pass: steps > 0 && len(worse) == 0})
	// One reader of a whole cold large file against the store model's
	// bandwidth.
	g := goal{figure: fmt.Sprintf("1 reader of a cold %d MiB file: throughput over the store model's bandwidth", r.c.largeSize>>20), want: ">= 0.90", value: "n/a"}
	for _, x := range r.seq {
		if x.system == "cistern" && x.err == "" && r.c.bandwidth > 0 {
			ratio := x.mibps() / (float64(r.c.bandwidth) / 8 / (1 << 20))
			g.value, g.pass = fmt.Sprintf("%.2f (%.1f MiB/s)", ratio, x.mibps()), ratio >= 0.90
		}
	}
	out = append(out, g)
	// Warm small files on the default mount.
	g = goal{figure: "warm small16 on the default mount, ratio to native", want: ">= 0.85", value: "n/a"}
	var nat, cst float64
	for _, x := range r.rates {
		switch x.system {
		case "native":
			nat = x.small16
		case "cistern":
			cst = x.small16
		}
	}
	if nat > 0 {
		g.value, g.pass = fmt.Sprintf("%.2f", cst/nat), cst/nat >= 0.85
	}
	out = append(out, g)
	out = append(out, r.metaGoal(), r.cpuGoal())
	return out
}

// metaGoal: find and stat of the meta tree, cold and warm, at least twice
// as fast as the faster of rclone and s3fs.
func (r *report) metaGoal() goal {
	g := goal{figure: fmt.Sprintf("find and stat of %d files, cold and warm, against the best of rclone and s3fs", r.c.metaFiles), want: ">= 2x"}
	var parts []string
	pass := true
	for _, phase := range []string{"cold", "warm"} {
		var mine, best float64
		peer := ""
		for _, m := range r.meta {
			if m.phase != phase || m.err != "" {
				continue
			}
			if m.afterPartial {
				// Its warm walk was partly cold: not a warm rate.
				parts = append(parts, fmt.Sprintf("%s %s not measured (its cold walk was stopped)", m.system, phase))
				continue
			}
			switch {
			case m.system == "cistern":
				mine = m.rate()
			case m.rate() > best:
				best, peer = m.rate(), m.system
			}
		}
		if mine == 0 || best == 0 {
			parts, pass = append(parts, phase+" n/a"), false
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %.1fx (%.0f against %s's %.0f files/s)", phase, mine/best, mine, peer, best))
		pass = pass && mine/best >= 2
	}
	g.value, g.pass = strings.Join(parts, "; "), pass
	return g
}

// cpuGoal: the CPU seconds the serving process spends per GiB read over
// the sweep, cold and warm: Cistern's the lowest.
func (r *report) cpuGoal() goal {
	g := goal{figure: "CPU seconds per GiB served over the sweep (the serving process), cold and warm", want: "Cistern lowest"}
	var parts []string
	pass := true
	for _, phase := range []string{"cold", "warm"} {
		mine, ok := r.cpuPerGiB("cistern", phase)
		if !ok {
			parts, pass = append(parts, phase+" n/a"), false
			continue
		}
		part := fmt.Sprintf("%s: cistern %.2f", phase, mine)
		for _, peer := range []string{"rclone", "s3fs"} {
			if v, ok := r.cpuPerGiB(peer, phase); ok {
				part += fmt.Sprintf(", %s %.2f", peer, v)
				pass = pass && mine < v
			}
		}
		parts = append(parts, part)
	}
	g.value, g.pass = strings.Join(parts, "; "), pass
	return g
}
