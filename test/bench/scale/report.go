package main

import (
	"fmt"
	"strings"
	"time"
)

// report prints the table and the goals.
func report(rows []row, dr dsRow) {
	fmt.Println()
	fmt.Println("| files | memory empty | memory cached | per cached file | read cold | read warm | native | warm/native | find+stat warm | read-only | native | ratio (rw, ro) | create | rename | unlink | native create/rename/unlink |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Printf("| %d | %d MiB | %d MiB | %.0f B | %.0f/s | %.0f/s | %.0f/s | %.2f | %s | %s | %s | %.2f, %.2f | %s | %s | %s | %s / %s / %s |\n",
			r.files, r.rssEmpty>>20, r.rssCached>>20, r.perFile(), r.coldRate, r.warmRate, r.native, r.warmRate/r.native,
			r.walk.Round(time.Millisecond), r.walkRO.Round(time.Millisecond), r.walkNative.Round(time.Millisecond),
			r.walkNative.Seconds()/r.walk.Seconds(), r.walkNative.Seconds()/r.walkRO.Seconds(),
			us(r.create), us(r.rename), us(r.unlink), us(r.nCreate), us(r.nRename), us(r.nUnlink))
	}
	fmt.Println()
	for _, g := range goals(rows, dr) {
		fmt.Println(g)
	}
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond)) }

// goals are the issue's, one line each; the ones not measured yet fail.
func goals(rows []row, dr dsRow) []string {
	var out []string
	line := func(figure, value, want string, pass bool) {
		v := "fail"
		if pass {
			v = "pass"
		}
		out = append(out, fmt.Sprintf("%s: %s (goal %s) %s", figure, value, want, v))
	}
	first, last := rows[0], rows[len(rows)-1]
	// (Memory per file just read, every node and item in memory, is in
	// the table; the goal is about files no one uses.)
	var per []string
	pass := true
	for _, r := range rows {
		idle := float64(r.rssLimited-r.rssEmpty) / float64(r.files)
		per = append(per, fmt.Sprintf("%d files: %d nodes held under --max-inodes=%d, %d dormant, %.0f B resident and %.0f B of live heap per file",
			r.files, r.limitNodes, r.limit, r.dormant, idle, float64(r.heapLimited)/float64(r.files)))
		pass = pass && r.limitNodes <= r.limit && idle <= 256
	}
	line("daemon memory per idle cached file, nodes bounded by --max-inodes", strings.Join(per, "; "), "nodes within the bound, <= 256 B resident", pass)
	for _, op := range []struct {
		name       string
		at, native func(row) time.Duration
	}{
		{"create and write 4 KiB", func(r row) time.Duration { return r.create }, func(r row) time.Duration { return r.nCreate }},
		{"rename", func(r row) time.Duration { return r.rename }, func(r row) time.Duration { return r.nRename }},
		{"unlink", func(r row) time.Duration { return r.unlink }, func(r row) time.Duration { return r.nUnlink }},
	} {
		growth := float64(op.at(last)) / float64(op.at(first))
		above := op.at(last) - op.native(last)
		line(fmt.Sprintf("%s: cost at %d files over at %d, and above the source's own", op.name, last.files, first.files),
			fmt.Sprintf("%.2fx, %s above", growth, us(above)), "<= 2x, < 1000 µs above", growth <= 2 && above < time.Millisecond)
	}
	line(fmt.Sprintf("warm 4 KiB reads of a read-write dataset, %d files, against native", last.files),
		fmt.Sprintf("%.2f (one LOOKUP per file and nothing else, read-only in no-open mode: %.2f)", last.warmRate/last.native, last.lookupRate/last.native),
		">= 0.5", last.warmRate/last.native >= 0.5)
	per, pass = nil, last.files >= 1_000_000
	for _, r := range rows {
		per = append(per, fmt.Sprintf("%d files: a read waited %s from the SIGTERM (index loaded after %s), %d blocks fetched again",
			r.files, r.restartServe.Round(time.Millisecond), r.restartLoaded.Round(time.Millisecond), r.restartMisses))
		pass = pass && r.restartServe <= 10*time.Second && r.restartMisses == 0
	}
	want := "<= 10 s at 1,000,000 files, 0 fetched again"
	if last.files < 1_000_000 {
		want += "; not run at 1,000,000 (--full)"
	}
	line("daemon restart: serving a cached file again, cache warm", strings.Join(per, "; "), want, pass)
	perDS := float64(dr.rssMounted-dr.rssEmpty) / float64(dr.n)
	line(fmt.Sprintf("%d datasets on one node: memory per mounted dataset, metrics scrape, series per dataset", dr.n),
		fmt.Sprintf("%.0f KiB, %s, %.1f", perDS/1024, dr.scrape.Round(time.Millisecond), float64(dr.series)/float64(dr.n)),
		"<= 1024 KiB, <= 1 s, <= 10", perDS <= 1<<20 && dr.scrape <= time.Second && dr.series <= 10*dr.n)
	walk := last.walkNative.Seconds() / last.walk.Seconds()
	line(fmt.Sprintf("find and stat of %d files, warm, read-write dataset (metacache 1s), against native", last.files), fmt.Sprintf("%.2f", walk), ">= 0.5", walk >= 0.5)
	walk = last.walkNative.Seconds() / last.walkRO.Seconds()
	line(fmt.Sprintf("find and stat of %d files, warm, read-only dataset (metacache 1h), against native", last.files), fmt.Sprintf("%.2f", walk), ">= 0.5", walk >= 0.5)
	return out
}
