// Package host reads what the benchmarks measure of processes and the
// kernel on the machine they run on: resident memory and CPU time from
// /proc, and the kernel's caches, dropped before a cold run.
package host

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RSSKiB is a process's resident memory in KiB (0 if it cannot be read).
func RSSKiB(pid int) int64 { return status(pid, "VmRSS:") }

// Threads is how many threads a process has (0 if it cannot be read).
func Threads(pid int) int64 { return status(pid, "Threads:") }

// status is a number from /proc/<pid>/status (its unit, if any, dropped).
func status(pid int, field string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// clockTicks is the unit of /proc/<pid>/stat's times (USER_HZ, 100 on
// every Linux this runs on).
const clockTicks = 100

// CPUSeconds is the user plus system CPU time process pid has used, all
// its threads included; -1 when it cannot be read (no such process).
func CPUSeconds(pid int) float64 {
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

// DropCaches empties the kernel's page, dentry and inode caches, so a cold
// run reads nothing the previous run left in memory (root only).
func DropCaches() error {
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		return fmt.Errorf("drop the page cache: %w", err)
	}
	return nil
}

// Stop ends a process the benchmark started: SIGTERM, then SIGKILL if it
// has not exited within grace. A process never started or already waited
// for is left alone.
func Stop(cmd *exec.Cmd, grace time.Duration) {
	if cmd == nil || cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// UnmountUnder detaches every mount at or under dir (what a failed run
// left: a daemon stopped with a keeper hands its mounts over rather than
// unmounting them) and returns how many.
func UnmountUnder(dir string) int {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			if syscall.Unmount(f[1], syscall.MNT_DETACH) == nil {
				n++
			}
		}
	}
	return n
}
