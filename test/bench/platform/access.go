package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"time"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/test/bench/readers"
)

// access is how a system's reader reaches the dataset: through a file
// system (plain system calls, like a C or Python loader) or, for the
// "direct" baseline, with GETs to the store. Names are relative to the
// dataset root.
type access interface {
	// readFile reads a whole (small) file.
	readFile(name string, buf []byte) (int64, error)
	// readRange reads n bytes at off in chunk-sized reads, reporting the
	// latency of each.
	readRange(name string, off, n int64, buf []byte, lat func(time.Duration)) error
	// rand4k does up to count random 4 KiB reads of a file of size bytes
	// within max time; it returns reads per second.
	rand4k(name string, size int64, count int, max time.Duration) (float64, error)
}

// fileAccess reads a directory tree with system calls.
type fileAccess struct{ root string }

func (f fileAccess) path(name string) string { return filepath.Join(f.root, name) }

func (f fileAccess) readFile(name string, buf []byte) (int64, error) {
	fd, err := readers.OpenRO(f.path(name))
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var total int64
	for {
		m, err := readers.Read(fd, buf)
		if err != nil {
			return total, fmt.Errorf("read %s: %w", name, err)
		}
		if m == 0 {
			return total, nil
		}
		total += int64(m)
	}
}

func (f fileAccess) readRange(name string, off, n int64, buf []byte, lat func(time.Duration)) error {
	// The first read's wait counts from before the open, as the GET of
	// direct does: a system whose open blocks (rclone's, while another
	// reader fills its cache) makes its reader wait as long.
	start := time.Now()
	fd, err := readers.OpenRO(f.path(name))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for end := off + n; off < end; {
		m, err := readers.Pread(fd, buf[:min(int64(len(buf)), end-off)], off)
		if err != nil {
			return fmt.Errorf("pread %s at %d: %w", name, off, err)
		}
		if m == 0 {
			return fmt.Errorf("%s: short file at %d", name, off)
		}
		lat(time.Since(start))
		start = time.Now()
		off += int64(m)
	}
	return nil
}

func (f fileAccess) rand4k(name string, size int64, count int, max time.Duration) (float64, error) {
	fd, err := readers.OpenRO(f.path(name))
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	r := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 4096)
	start := time.Now()
	done := 0
	for ; done < count && (done%256 != 0 || time.Since(start) < max); done++ {
		if _, err := readers.Pread(fd, buf, r.Int64N(size/4096)*4096); err != nil {
			return 0, err
		}
	}
	return float64(done) / time.Since(start).Seconds(), nil
}

// directTransport is the direct readers' HTTP transport: a connection per
// concurrent reader, like one client per pod.
func directTransport() *http.Transport {
	return &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute, DisableCompression: true}
}

// s3Access reads the store directly, as a pod without a shared cache does:
// one GET per file, streamed.
type s3Access struct {
	mc             *minio.Client
	bucket, prefix string
}

func (s s3Access) key(name string) string { return s.prefix + "/" + name }

func (s s3Access) get(name string, opts minio.GetObjectOptions) (io.ReadCloser, error) {
	body, _, _, err := minio.Core{Client: s.mc}.GetObject(context.Background(), s.bucket, s.key(name), opts)
	return body, err
}

func (s s3Access) readFile(name string, buf []byte) (int64, error) {
	body, err := s.get(name, minio.GetObjectOptions{})
	if err != nil {
		return 0, err
	}
	defer body.Close()
	var total int64
	for {
		m, err := body.Read(buf)
		total += int64(m)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (s s3Access) readRange(name string, off, n int64, buf []byte, lat func(time.Duration)) error {
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(off, off+n-1); err != nil {
		return err
	}
	start := time.Now()
	body, err := s.get(name, opts)
	if err != nil {
		return err
	}
	defer body.Close()
	for got := int64(0); got < n; {
		m, err := io.ReadFull(body, buf[:min(int64(len(buf)), n-got)])
		if err != nil {
			return fmt.Errorf("GET %s: %w", name, err)
		}
		lat(time.Since(start))
		start = time.Now()
		got += int64(m)
	}
	return nil
}

func (s s3Access) rand4k(name string, size int64, count int, max time.Duration) (float64, error) {
	r := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 4096)
	start := time.Now()
	done := 0
	for ; done < count && time.Since(start) < max; done++ {
		off := r.Int64N(size/4096) * 4096
		if err := s.readRange(name, off, 4096, buf, func(time.Duration) {}); err != nil {
			return 0, err
		}
	}
	return float64(done) / time.Since(start).Seconds(), nil
}
