package source

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"
)

// Limits of a path inside a dataset: those of Linux file names and paths.
const (
	MaxSegment = 255
	MaxPath    = 4095
)

// ErrBadPath is wrapped by every error of CheckPath.
var ErrBadPath = errors.New("invalid path")

// CheckPath is the one rule for a path inside a dataset, used by the
// sources (every name they are given), the S3 store client (a dataset's key
// prefix) and the driver (sub-paths and warm-up paths, which add rules of
// their own): a non-empty, relative, '/'-separated path with no empty, "."
// or ".." segment, no NUL, no segment over MaxSegment bytes and at most
// MaxPath bytes in all. The error names the path and wraps ErrBadPath and
// fs.ErrInvalid.
func CheckPath(p string) error {
	bad := func(format string, a ...any) error { return pathError{msg: fmt.Sprintf(format, a...)} }
	tooLong := func(format string, a ...any) error {
		return pathError{msg: fmt.Sprintf(format, a...), errno: syscall.ENAMETOOLONG}
	}
	switch {
	case p == "":
		return bad("the path is empty")
	case len(p) > MaxPath:
		return tooLong("path is %d bytes long, more than %d", len(p), MaxPath)
	case strings.IndexByte(p, 0) >= 0:
		return bad("path %q contains a NUL byte", p)
	case strings.HasPrefix(p, "/"):
		return bad("path %q is absolute; it must be relative to the dataset root", p)
	}
	for seg := range strings.SplitSeq(p, "/") {
		switch {
		case seg == "":
			return bad("path %q has an empty segment", p)
		case seg == "." || seg == "..":
			return bad("path %q has a %q segment", p, seg)
		case len(seg) > MaxSegment:
			return tooLong("path segment %.20q... is %d bytes long, more than %d", seg, len(seg), MaxSegment)
		}
	}
	return nil
}

// pathError is a CheckPath error: its text says what is wrong, it matches
// ErrBadPath and fs.ErrInvalid, and ENAMETOOLONG for a name or path too
// long (the errno a file-system caller expects).
type pathError struct {
	msg   string
	errno syscall.Errno
}

func (e pathError) Error() string { return e.msg }
func (e pathError) Unwrap() []error {
	if e.errno != 0 {
		return []error{ErrBadPath, fs.ErrInvalid, e.errno}
	}
	return []error{ErrBadPath, fs.ErrInvalid}
}

// CheckName is CheckPath that also accepts "", the dataset's root: the
// names a Source is given.
func CheckName(name string) error {
	if name == "" {
		return nil
	}
	return CheckPath(name)
}
