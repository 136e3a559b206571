package source

import (
	"io/fs"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// UnixMode converts m to the mode bits of stat(2), type included.
func UnixMode(m fs.FileMode) uint32 {
	mode := uint32(m.Perm())
	switch {
	case m.IsDir():
		mode |= syscall.S_IFDIR
	case m&fs.ModeSymlink != 0:
		mode |= syscall.S_IFLNK
	case m&fs.ModeNamedPipe != 0:
		mode |= syscall.S_IFIFO
	case m&fs.ModeSocket != 0:
		mode |= syscall.S_IFSOCK
	case m&fs.ModeCharDevice != 0:
		mode |= syscall.S_IFCHR
	case m&fs.ModeDevice != 0:
		mode |= syscall.S_IFBLK
	default:
		mode |= syscall.S_IFREG
	}
	if m&fs.ModeSetuid != 0 {
		mode |= syscall.S_ISUID
	}
	if m&fs.ModeSetgid != 0 {
		mode |= syscall.S_ISGID
	}
	if m&fs.ModeSticky != 0 {
		mode |= syscall.S_ISVTX
	}
	return mode
}

// FileMode converts the permission and special bits of a stat(2) mode
// (setuid, setgid, sticky) to an fs.FileMode; the type bits are the
// caller's.
func FileMode(mode uint32) fs.FileMode {
	m := fs.FileMode(mode & 0o777)
	if mode&syscall.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if mode&syscall.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if mode&syscall.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// StatAttr converts what stat(2) says of a file to its Attr.
func StatAttr(st *unix.Stat_t) Attr {
	a := Attr{
		Mode:  FileMode(st.Mode),
		UID:   st.Uid,
		GID:   st.Gid,
		Size:  st.Size,
		Mtime: time.Unix(st.Mtim.Unix()),
		Atime: time.Unix(st.Atim.Unix()),
		Ctime: time.Unix(st.Ctim.Unix()),
		Dev:   st.Dev,
		Ino:   st.Ino,
		Nlink: uint32(st.Nlink),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		a.Mode |= fs.ModeDir
	case unix.S_IFLNK:
		a.Mode |= fs.ModeSymlink
	case unix.S_IFREG:
	case unix.S_IFIFO:
		a.Mode |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		a.Mode |= fs.ModeSocket
	case unix.S_IFCHR:
		a.Mode |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		a.Mode |= fs.ModeDevice
	default:
		a.Mode |= fs.ModeIrregular
	}
	return a
}
