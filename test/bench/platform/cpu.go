package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is the unit of /proc/<pid>/stat's times (USER_HZ, 100 on
// every Linux this runs on).
const clockTicks = 100

// cpuSeconds is the user plus system CPU time process pid has used, all
// its threads included; -1 when it cannot be read (no such process).
func cpuSeconds(pid int) float64 {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return -1
	}
	return float64(utime+stime) / clockTicks
}

// cpuPerGiB is the CPU seconds the system's serving process spent per GiB
// its readers read, over the sweep steps of one phase; ok is false when
// the process's time was not measured.
func (r *report) cpuPerGiB(system, phase string) (v float64, ok bool) {
	var cpu float64
	var bytes int64
	for _, x := range r.results {
		if x.system == system && x.phase == phase {
			if x.cpu < 0 {
				return 0, false
			}
			cpu += x.cpu
			bytes += x.bytes
		}
	}
	if bytes == 0 {
		return 0, false
	}
	return cpu / (float64(bytes) / (1 << 30)), true
}
