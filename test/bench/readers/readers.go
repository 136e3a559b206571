// Package readers holds the benchmarks' readers: plain system calls (open,
// pread, read, close), as a C or Python data loader uses them, timed.
package readers

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The readers use plain system calls (open, pread, close), as a C or
// Python data loader does. Go's os.File would register every FUSE file with
// the runtime's epoll (FUSE files are pollable, ext4 files are not), which
// measures the Go runtime, not the file system.

// OpenRO opens p read-only.
func OpenRO(p string) (int, error) {
	return retry(func() (int, error) { return unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0) })
}

// Pread is pread(2), retried when interrupted.
func Pread(fd int, b []byte, off int64) (int, error) {
	return retry(func() (int, error) { return unix.Pread(fd, b, off) })
}

// Read is read(2), retried when interrupted.
func Read(fd int, b []byte) (int, error) {
	return retry(func() (int, error) { return unix.Read(fd, b) })
}

// retry repeats a system call the Go runtime's signals interrupted.
func retry(call func() (int, error)) (int, error) {
	for {
		n, err := call()
		if err != unix.EINTR {
			return n, err
		}
	}
}

// ReadSeq reads the file with n readers, each a contiguous slice, 1 MiB at
// a time; it returns MiB/s.
func ReadSeq(p string, n int) (float64, error) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	size := st.Size()
	part := (size + int64(n) - 1) / int64(n)
	start := time.Now()
	err = Parallel(n, func(i int) error {
		fd, err := OpenRO(p)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		buf := make([]byte, 1<<20)
		for off, end := int64(i)*part, min(int64(i+1)*part, size); off < end; {
			m, err := Pread(fd, buf[:min(int64(len(buf)), end-off)], off)
			if err != nil {
				return err
			}
			if m == 0 {
				return fmt.Errorf("%s: short file at %d", p, off)
			}
			off += int64(m)
		}
		return nil
	})
	return float64(size) / (1 << 20) / time.Since(start).Seconds(), err
}

// ReadRand does count random 4 KiB preads; it returns IOPS.
func ReadRand(p string, count int) (float64, error) {
	st, err := os.Stat(p)
	if err != nil {
		return 0, err
	}
	fd, err := OpenRO(p)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	pages := st.Size() / 4096
	r := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 4096)
	start := time.Now()
	for range count {
		if _, err := Pread(fd, buf, r.Int64N(pages)*4096); err != nil {
			return 0, err
		}
	}
	return float64(count) / time.Since(start).Seconds(), nil
}

// ReadSmall opens, reads to the end and closes every file with n readers;
// it returns files per second.
func ReadSmall(files []string, n int) (float64, error) {
	start := time.Now()
	err := Parallel(n, func(i int) error {
		buf := make([]byte, 128<<10)
		for j := i; j < len(files); j += n {
			fd, err := OpenRO(files[j])
			if err != nil {
				return err
			}
			for {
				m, err := Read(fd, buf)
				if err != nil {
					unix.Close(fd)
					return err
				}
				if m == 0 {
					break
				}
			}
			unix.Close(fd)
		}
		return nil
	})
	return float64(len(files)) / time.Since(start).Seconds(), err
}

// Parallel runs fn(0..n-1) at once and returns the first error.
func Parallel(n int, fn func(i int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = fn(i) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
