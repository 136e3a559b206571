// Package posix is Cistern's own POSIX conformance suite for read-write
// POSIX datasets: each case runs on a Cistern volume (the real FUSE file
// system over a file:// source) and on a plain directory of the same file
// system, side by side, as root and as other users; a case that passes on
// the directory must pass on the volume, unless the README documents the
// difference (device nodes are refused by policy).
package posix

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cistern-csi/cistern/pkg/cache"
	"github.com/cistern-csi/cistern/pkg/cache/fusefs"
	"github.com/cistern-csi/cistern/pkg/cache/source/posix"
)

// A case runs in dir and returns nil when the file system behaved as
// POSIX says.
type posixCase struct {
	name string
	run  func(dir string) error
	// policy names a documented difference: the volume refuses what the
	// directory allows, on purpose.
	policy string
}

func want(cond bool, format string, a ...any) error {
	if cond {
		return nil
	}
	return fmt.Errorf(format, a...)
}

func wantErrno(err error, errno syscall.Errno) error {
	if errors.Is(err, errno) {
		return nil
	}
	return fmt.Errorf("got %v, want %v", err, errno)
}

func stat(p string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Lstat(p, &st)
	return st, err
}

// asUser runs a shell script as uid (with gid and groups).
func asUser(uid, gid uint32, groups []uint32, script string) error {
	cmd := exec.Command("/bin/sh", "-c", "umask 022; "+script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

const nobody = 65534

var cases = []posixCase{
	{"create keeps the mode asked for", func(d string) error {
		old := unix.Umask(0)
		defer unix.Umask(old)
		fd, err := unix.Open(filepath.Join(d, "f"), unix.O_CREAT|unix.O_WRONLY|unix.O_EXCL, 0o751)
		if err != nil {
			return err
		}
		unix.Close(fd)
		st, err := stat(filepath.Join(d, "f"))
		return errors.Join(err, want(st.Mode&0o7777 == 0o751, "mode %o, want 751", st.Mode&0o7777))
	}, ""},
	{"a file created with mode 0000 keeps it", func(d string) error {
		old := unix.Umask(0)
		defer unix.Umask(old)
		fd, err := unix.Open(filepath.Join(d, "f"), unix.O_CREAT|unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		unix.Close(fd)
		st, err := stat(filepath.Join(d, "f"))
		return errors.Join(err, want(st.Mode&0o7777 == 0, "mode %o, want 0", st.Mode&0o7777))
	}, ""},
	{"mkdir keeps the mode asked for", func(d string) error {
		old := unix.Umask(0)
		defer unix.Umask(old)
		if err := unix.Mkdir(filepath.Join(d, "d"), 0o710); err != nil {
			return err
		}
		st, err := stat(filepath.Join(d, "d"))
		return errors.Join(err, want(st.Mode&0o7777 == 0o710, "mode %o, want 710", st.Mode&0o7777))
	}, ""},
	{"chmod and chown stick", func(d string) error {
		p := filepath.Join(d, "f")
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			return err
		}
		if err := unix.Chmod(p, 0o4711); err != nil {
			return err
		}
		if err := unix.Chown(p, 1234, 5678); err != nil {
			return err
		}
		st, err := stat(p)
		// chown clears the setuid bit.
		return errors.Join(err, want(st.Uid == 1234 && st.Gid == 5678 && st.Mode&0o7777 == 0o711, "%d:%d %o, want 1234:5678 711", st.Uid, st.Gid, st.Mode&0o7777))
	}, ""},
	{"utimes sticks", func(d string) error {
		p := filepath.Join(d, "f")
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			return err
		}
		mt := time.Unix(1_600_000_000, 123_456_789)
		if err := os.Chtimes(p, mt, mt); err != nil {
			return err
		}
		st, err := stat(p)
		return errors.Join(err, want(st.Mtim.Sec == mt.Unix() && st.Mtim.Nsec == int64(mt.Nanosecond()), "mtime %v", st.Mtim))
	}, ""},
	{"utimes by another user is EPERM", func(d string) error {
		p := filepath.Join(d, "f")
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			return err
		}
		err := asUser(nobody, nobody, nil, "touch -d 2001-01-01 "+p)
		return want(err != nil && strings.Contains(err.Error(), "ermission") || err != nil && strings.Contains(err.Error(), "not permitted"), "touch -d by a non-owner: %v", err)
	}, ""},
	{"symbolic link", func(d string) error {
		if err := os.Symlink("target/elsewhere", filepath.Join(d, "l")); err != nil {
			return err
		}
		got, err := os.Readlink(filepath.Join(d, "l"))
		st, err2 := stat(filepath.Join(d, "l"))
		return errors.Join(err, err2, want(got == "target/elsewhere" && st.Mode&unix.S_IFMT == unix.S_IFLNK, "readlink %q, mode %o", got, st.Mode))
	}, ""},
	{"a symbolic link's own times stick (lookups do not read it)", func(d string) error {
		l := filepath.Join(d, "l")
		if err := os.Symlink("target", l); err != nil {
			return err
		}
		ts := []unix.Timespec{unix.NsecToTimespec(1_900_000_000e9), unix.NsecToTimespec(1_950_000_000e9)}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, l, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		st, err := stat(l)
		if err == nil {
			st, err = stat(l)
		}
		return errors.Join(err, want(st.Atim.Sec == 1_900_000_000 && st.Mtim.Sec == 1_950_000_000, "link atime %d mtime %d", st.Atim.Sec, st.Mtim.Sec))
	}, ""},
	{"hard link: one file, two names", func(d string) error {
		a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
		if err := os.WriteFile(a, []byte("one"), 0o644); err != nil {
			return err
		}
		if err := os.Link(a, b); err != nil {
			return err
		}
		if err := os.WriteFile(b, []byte("two"), 0o644); err != nil {
			return err
		}
		got, err := os.ReadFile(a)
		sa, _ := stat(a)
		sb, _ := stat(b)
		return errors.Join(err, want(string(got) == "two" && sa.Nlink == 2 && sa.Ino == sb.Ino, "through a: %q, nlink %d, inodes %d %d", got, sa.Nlink, sa.Ino, sb.Ino))
	}, ""},
	{"fifo", func(d string) error {
		if err := unix.Mkfifo(filepath.Join(d, "p"), 0o640); err != nil {
			return err
		}
		st, err := stat(filepath.Join(d, "p"))
		return errors.Join(err, want(st.Mode&unix.S_IFMT == unix.S_IFIFO, "mode %o, want a FIFO", st.Mode))
	}, ""},
	{"character device", func(d string) error {
		return unix.Mknod(filepath.Join(d, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	}, "device nodes are refused (EPERM): a tenant's device on a shared dataset"},
	{"O_EXCL on an existing file is EEXIST", func(d string) error {
		p := filepath.Join(d, "f")
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			return err
		}
		_, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		return wantErrno(err, syscall.EEXIST)
	}, ""},
	{"O_APPEND from two descriptors", func(d string) error {
		p := filepath.Join(d, "f")
		f1, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f1.Close()
		f2, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		defer f2.Close()
		for _, s := range []struct {
			f *os.File
			b string
		}{{f1, "a"}, {f2, "b"}, {f1, "c"}} {
			if _, err := s.f.Write([]byte(s.b)); err != nil {
				return err
			}
		}
		got, err := os.ReadFile(p)
		return errors.Join(err, want(string(got) == "abc", "content %q, want abc", got))
	}, ""},
	{"O_TRUNC empties", func(d string) error {
		p := filepath.Join(d, "f")
		if err := os.WriteFile(p, []byte("long content"), 0o644); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return err
		}
		f.Close()
		st, err := stat(p)
		return errors.Join(err, want(st.Size == 0, "size %d after O_TRUNC", st.Size))
	}, ""},
	{"ftruncate through a descriptor", func(d string) error {
		f, err := os.Create(filepath.Join(d, "f"))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Truncate(12345); err != nil {
			return err
		}
		st, err := f.Stat()
		return errors.Join(err, want(st.Size() == 12345, "size %d", st.Size()))
	}, ""},
	{"rename over a file, over an empty directory, not over a full one", func(d string) error {
		a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
		os.WriteFile(a, []byte("A"), 0o644)
		os.WriteFile(b, []byte("B"), 0o644)
		if err := os.Rename(a, b); err != nil {
			return err
		}
		got, _ := os.ReadFile(b)
		if err := want(string(got) == "A", "b holds %q after rename a b", got); err != nil {
			return err
		}
		da, db, full := filepath.Join(d, "da"), filepath.Join(d, "db"), filepath.Join(d, "full")
		os.Mkdir(da, 0o755)
		os.Mkdir(db, 0o755)
		os.MkdirAll(filepath.Join(full, "x"), 0o755)
		if err := unix.Rename(da, db); err != nil {
			return err
		}
		return wantErrno(unix.Rename(db, full), syscall.ENOTEMPTY)
	}, ""},
	{"rename with RENAME_NOREPLACE and RENAME_EXCHANGE", func(d string) error {
		a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
		os.WriteFile(a, []byte("A"), 0o644)
		os.WriteFile(b, []byte("B"), 0o644)
		if err := wantErrno(unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_NOREPLACE), syscall.EEXIST); err != nil {
			return err
		}
		if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
		ga, _ := os.ReadFile(a)
		gb, _ := os.ReadFile(b)
		return want(string(ga) == "B" && string(gb) == "A", "after exchange a=%q b=%q", ga, gb)
	}, ""},
	{"rmdir of a non-empty directory is ENOTEMPTY", func(d string) error {
		os.MkdirAll(filepath.Join(d, "x", "y"), 0o755)
		return wantErrno(unix.Rmdir(filepath.Join(d, "x")), syscall.ENOTEMPTY)
	}, ""},
	{"fsync, fdatasync, fsync of a directory", func(d string) error {
		f, err := os.Create(filepath.Join(d, "f"))
		if err != nil {
			return err
		}
		defer f.Close()
		f.Write([]byte("durable"))
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync: %w", err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return fmt.Errorf("fdatasync: %w", err)
		}
		dir, err := os.Open(d)
		if err != nil {
			return err
		}
		defer dir.Close()
		if err := dir.Sync(); err != nil {
			return fmt.Errorf("fsync of a directory: %w", err)
		}
		return nil
	}, ""},
	{"fallocate", func(d string) error {
		f, err := os.Create(filepath.Join(d, "f"))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := unix.Fallocate(int(f.Fd()), 0, 0, 1<<20); err != nil {
			return err
		}
		st, err := f.Stat()
		return errors.Join(err, want(st.Size() == 1<<20, "size %d after fallocate", st.Size()))
	}, ""},
	{"flock excludes a second descriptor", func(d string) error {
		p := filepath.Join(d, "f")
		os.WriteFile(p, nil, 0o644)
		f1, _ := os.Open(p)
		f2, _ := os.Open(p)
		defer f1.Close()
		defer f2.Close()
		if err := unix.Flock(int(f1.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return err
		}
		return wantErrno(unix.Flock(int(f2.Fd()), unix.LOCK_EX|unix.LOCK_NB), syscall.EWOULDBLOCK)
	}, ""},
	{"POSIX record locks exclude another open file description", func(d string) error {
		p := filepath.Join(d, "f")
		os.WriteFile(p, make([]byte, 100), 0o644)
		f1, _ := os.OpenFile(p, os.O_RDWR, 0)
		f2, _ := os.OpenFile(p, os.O_RDWR, 0)
		defer f1.Close()
		defer f2.Close()
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 10}
		if err := unix.FcntlFlock(f1.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
			return err
		}
		return wantErrno(unix.FcntlFlock(f2.Fd(), unix.F_OFD_SETLK, &lk), syscall.EAGAIN)
	}, ""},
	{"sticky directory: others cannot remove my file", func(d string) error {
		sd := filepath.Join(d, "tmp")
		os.Mkdir(sd, 0o777)
		unix.Chmod(sd, 0o1777)
		p := filepath.Join(sd, "mine")
		os.WriteFile(p, nil, 0o666)
		err := asUser(nobody, nobody, nil, "rm -f "+p)
		_, serr := os.Stat(p)
		return want(err != nil && serr == nil, "uid %d removed root's file in a sticky directory (%v)", nobody, err)
	}, ""},
	{"set-group-ID directory: new files take its group", func(d string) error {
		gd := filepath.Join(d, "team")
		os.Mkdir(gd, 0o775)
		unix.Chown(gd, 0, 4321)
		unix.Chmod(gd, 0o2775)
		if err := asUser(nobody, nobody, []uint32{4321}, "echo x > "+gd+"/f && mkdir "+gd+"/sub"); err != nil {
			return err
		}
		sf, _ := stat(filepath.Join(gd, "f"))
		ss, _ := stat(filepath.Join(gd, "sub"))
		return want(sf.Gid == 4321 && sf.Uid == nobody && ss.Gid == 4321 && ss.Mode&unix.S_ISGID != 0, "f %d:%d, sub gid %d mode %o", sf.Uid, sf.Gid, ss.Gid, ss.Mode)
	}, ""},
	{"permission checks on open, unlink and rename", func(d string) error {
		p := filepath.Join(d, "secret")
		os.WriteFile(p, []byte("x"), 0o600)
		errs := []error{
			want(asUser(nobody, nobody, nil, "cat "+p) != nil, "uid %d read a 0600 root file", nobody),
			want(asUser(nobody, nobody, nil, "rm -f "+p) != nil, "uid %d removed a file of a root directory", nobody),
			want(asUser(nobody, nobody, nil, "mv "+p+" "+p+"2") != nil, "uid %d renamed a file of a root directory", nobody),
		}
		return errors.Join(errs...)
	}, ""},
	{"an unlinked open file stays readable and writable", func(d string) error {
		p := filepath.Join(d, "f")
		os.WriteFile(p, []byte("before"), 0o644)
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := os.Remove(p); err != nil {
			return err
		}
		if _, err := f.WriteAt([]byte("AFTER!"), 0); err != nil {
			return fmt.Errorf("write after unlink: %w", err)
		}
		buf := make([]byte, 6)
		if _, err := f.ReadAt(buf, 0); err != nil {
			return fmt.Errorf("read after unlink: %w", err)
		}
		return want(string(buf) == "AFTER!", "read %q after unlink", buf)
	}, ""},
	{"a write by another user clears setuid and setgid", func(d string) error {
		p := filepath.Join(d, "f")
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			return err
		}
		if err := unix.Chmod(p, 0o6777); err != nil {
			return err
		}
		if err := asUser(nobody, nobody, nil, "printf x >> "+p); err != nil {
			return err
		}
		st, err := stat(p)
		return errors.Join(err, want(st.Mode&0o7777 == 0o777, "mode %o after a write by uid %d, want 777", st.Mode&0o7777, nobody))
	}, ""},
	{"fstat of an unlinked open file", func(d string) error {
		p := filepath.Join(d, "f")
		os.WriteFile(p, []byte("x"), 0o644)
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := os.Remove(p); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return err
		}
		return want(st.Nlink == 0 && st.Size == 1, "nlink %d size %d, want 0 and 1", st.Nlink, st.Size)
	}, ""},
}

// TestPOSIXConformance runs every case on a plain directory and on a
// Cistern volume of a directory beside it, and prints both summaries.
func TestPOSIXConformance(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real FUSE mounts and other users")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse: %v", err)
	}
	top, err := os.MkdirTemp("", "cistern-posix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	native, src, mnt := filepath.Join(top, "native"), filepath.Join(top, "src"), filepath.Join(top, "mnt")
	for _, d := range []string{top, native, src, mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(d, 0o755)
	}
	p, err := posix.New(src)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cache.Options{Tiers: []cache.TierOptions{{Name: "disk", Dir: t.TempDir(), Quota: 1 << 30}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f, err := fusefs.Mount(mnt, c.Dataset("posix", p), fusefs.Options{Name: "posix", MetaCache: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})

	type result struct{ native, volume error }
	results := map[string]result{}
	for i, tc := range cases {
		dirs := [2]string{filepath.Join(native, fmt.Sprint(i)), filepath.Join(mnt, fmt.Sprint(i))}
		var r [2]error
		for j, d := range dirs {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			r[j] = tc.run(d)
		}
		results[tc.name] = result{r[0], r[1]}
	}
	names := make([]string, 0, len(results))
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	var np, vp, nf, vf, vpol int
	policy := map[string]string{}
	for _, tc := range cases {
		policy[tc.name] = tc.policy
	}
	for _, n := range names {
		r := results[n]
		mark := func(err error) string {
			if err == nil {
				return "pass"
			}
			return "FAIL"
		}
		if r.native == nil {
			np++
		} else {
			nf++
		}
		switch {
		case r.volume == nil:
			vp++
		case policy[n] != "":
			vpol++
		default:
			vf++
		}
		t.Logf("%-70s source %s  volume %s", n, mark(r.native), mark(r.volume))
		switch {
		case r.native == nil && r.volume != nil && policy[n] != "":
			t.Logf("    by policy: %s (%v)", policy[n], r.volume)
		case r.native == nil && r.volume != nil:
			t.Errorf("%s: passes on the source directory, fails on the volume: %v", n, r.volume)
		case r.native != nil:
			t.Logf("    the source directory fails it too: %v", r.native)
		}
	}
	// The summaries, side by side (make test prints them).
	fmt.Printf("posix conformance: source directory %d passed, %d failed; cistern volume %d passed, %d failed, %d refused by policy\n", np, nf, vp, vf, vpol)
}
