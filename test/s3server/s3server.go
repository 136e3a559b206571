// Package s3server runs a real S3 server (versitygw with its posix backend)
// on a loopback port for tests, demos and benchmarks, and stops it by PID.
// hack/install-deps.sh installs the binary.
package s3server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Version is the versitygw release the project installs.
const Version = "v1.8.0"

// Binary finds versitygw: $CISTERN_VERSITYGW, then $PATH, then the Go
// install directories.
func Binary() (string, error) {
	if p := os.Getenv("CISTERN_VERSITYGW"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, d := range filepath.SplitList(strings.TrimSpace(string(out))) {
			dirs = append(dirs, filepath.Join(d, "bin"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw not found: run hack/install-deps.sh (go install github.com/versity/versitygw/cmd/versitygw@%s)", Version)
}

// Server is a running versitygw.
type Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	Addr      string // 127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Dir       string // the posix backend's root
	bin       string
	log       string
	cmd       *exec.Cmd
	waited    chan error // the result of cmd.Wait
}

func randomKey(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Start runs versitygw over dir (created if missing) on a free loopback
// port with fresh random credentials. Its output goes to dir/../versitygw.log.
func Start(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	s := &Server{
		Endpoint: "http://" + addr, Addr: addr, Dir: dir, bin: bin,
		AccessKey: "AK" + randomKey(9), SecretKey: "SK" + randomKey(18),
		log: filepath.Join(filepath.Dir(dir), "versitygw-"+filepath.Base(dir)+".log"),
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// start runs the process on s.Addr and waits until it accepts connections.
func (s *Server) start() error {
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, "--port", s.Addr, "--quiet", "posix", s.Dir)
	// The server's own root credentials; this is the test's S3 server, not
	// a Cistern process.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	s.cmd = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			// Keep reaping in the background; Stop waits on waited.
			s.waited = exited
			return nil
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(s.log)
			return fmt.Errorf("versitygw exited (%v): %s", err, tail(string(b), 800))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("versitygw did not listen on %s within 20s", s.Addr)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// PID is the server's process ID (0 when stopped).
func (s *Server) PID() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop kills the server (the process this package started, by PID) and
// waits for it. Stopping a stopped server is a no-op.
func (s *Server) Stop() error {
	if s.cmd == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.waited
	s.cmd = nil
	return nil
}

// Freeze stops the server with SIGSTOP: connections stay open and nothing
// answers, like a stalled store. It returns once every thread is stopped.
// Thaw resumes it.
func (s *Server) Freeze() error {
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	tasks := fmt.Sprintf("/proc/%d/task", s.cmd.Process.Pid)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		ents, err := os.ReadDir(tasks)
		if err != nil {
			return err
		}
		stopped := 0
		for _, e := range ents {
			b, err := os.ReadFile(tasks + "/" + e.Name() + "/stat")
			// The state follows the command name in parentheses.
			if i := strings.LastIndexByte(string(b), ')'); err == nil && i >= 0 && i+2 < len(b) && (b[i+2] == 'T' || b[i+2] == 't') {
				stopped++
			}
		}
		if stopped == len(ents) {
			return nil
		}
	}
	return errors.New("versitygw did not stop within 5s")
}

// Thaw resumes a frozen server.
func (s *Server) Thaw() error { return s.cmd.Process.Signal(syscall.SIGCONT) }

// Restart starts a stopped server again on the same port and directory.
func (s *Server) Restart() error {
	if s.cmd != nil {
		return errors.New("versitygw is running")
	}
	return s.start()
}

// Client returns a minio client with the server's root credentials, for
// tests to create buckets and objects behind Cistern's back.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Addr, &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		BucketLookup: minio.BucketLookupPath,
	})
}

// CreateBucket creates a bucket (through the S3 API: a directory made by
// hand makes versitygw fail).
func (s *Server) CreateBucket(ctx context.Context, name string) error {
	mc, err := s.Client()
	if err != nil {
		return err
	}
	return mc.MakeBucket(ctx, name, minio.MakeBucketOptions{})
}

// Secrets returns the credentials as a CSI secret.
func (s *Server) Secrets() map[string]string {
	return map[string]string{"access-key": s.AccessKey, "secret-key": s.SecretKey}
}

// StartT starts a server in a test's temporary directory and stops it when
// the test ends. A missing binary fails the test: CI installs it.
func StartT(t testing.TB) *Server {
	t.Helper()
	s, err := Start(filepath.Join(t.TempDir(), "s3"))
	if err != nil {
		t.Fatalf("S3 server: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

// Port returns the server's TCP port.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

// UploadTree puts every regular file under root into bucket as
// prefix/<relative path> ("" prefix: the relative path), 16 at a time, and
// returns how many it uploaded.
func (s *Server) UploadTree(ctx context.Context, bucket, prefix, root string) (int, error) {
	mc, err := s.Client()
	if err != nil {
		return 0, err
	}
	var files []string
	if err := filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			files = append(files, p)
		}
		return err
	}); err != nil {
		return 0, err
	}
	work := make(chan string)
	errs := make(chan error, 16)
	for range 16 {
		go func() {
			var first error
			for p := range work {
				rel, _ := filepath.Rel(root, p)
				key := filepath.ToSlash(rel)
				if prefix != "" {
					key = prefix + "/" + key
				}
				if _, err := mc.FPutObject(ctx, bucket, key, p, minio.PutObjectOptions{PartSize: 64 << 20}); err != nil && first == nil {
					first = fmt.Errorf("upload %s: %w", key, err)
				}
			}
			errs <- first
		}()
	}
	for _, p := range files {
		work <- p
	}
	close(work)
	var all []error
	for range 16 {
		all = append(all, <-errs)
	}
	return len(files), errors.Join(all...)
}

// StartBucketT is StartT with one bucket created, and a client with the
// server's root credentials to work behind Cistern's back.
func StartBucketT(t testing.TB, bucket string) (*Server, *minio.Client) {
	t.Helper()
	s := StartT(t)
	if err := s.CreateBucket(context.Background(), bucket); err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
	mc, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	return s, mc
}
