package session

import (
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Mount mounts a FUSE file system at dir with mount(2) and returns the new
// connection's descriptor (the kernel's INIT waits in it): fsname names the
// mount in /proc/mounts, mo gives its type ("fuse."+Name), flags and
// options.
func Mount(dir, fsname string, mo *fuse.MountOptions) (*os.File, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/dev/fuse", Err: err}
	}
	dev := os.NewFile(uintptr(fd), "/dev/fuse")
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		dev.Close()
		return nil, &os.PathError{Op: "mount", Path: dir, Err: err}
	}
	data := []string{
		fmt.Sprintf("fd=%d", fd),
		fmt.Sprintf("rootmode=%o", st.Mode&syscall.S_IFMT),
		fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()),
	}
	if mo.AllowOther {
		data = append(data, "allow_other")
	}
	flags := uintptr(mo.DirectMountFlags)
	for _, o := range mo.Options {
		if o == "ro" {
			flags |= syscall.MS_RDONLY
			continue
		}
		data = append(data, o)
	}
	if err := unix.Mount(fsname, dir, "fuse."+mo.Name, flags, strings.Join(data, ",")); err != nil {
		dev.Close()
		return nil, &os.PathError{Op: "mount", Path: dir, Err: err}
	}
	return dev, nil
}

// PollHack polls go-fuse's hidden file at the root of the mount at dir
// once, from a plain system call, so the kernel hears ENOSYS and never asks
// again. Go's runtime adds files it opens to its epoll set, and a POLL
// request for a file of this mount from the runtime's own thread, which
// holds a P while in the kernel, would wait for a server that may need
// that P (go-fuse's server does the same after INIT).
func PollHack(dir string) error {
	fd, err := syscall.Open(dir+"/.go-fuse-epoll-hack", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	_, err = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	return err
}
