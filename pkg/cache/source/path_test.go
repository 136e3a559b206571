package source

import (
	"errors"
	"io/fs"
	"strings"
	"syscall"
	"testing"
)

func TestCheckPath(t *testing.T) {
	long := strings.Repeat("a", MaxSegment+1)
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"a", true},
		{"a/b/c", true},
		{".cistern/x", true}, // reserved only for sub-paths: the driver's rule
		{strings.Repeat("a", MaxSegment), true},
		{"", false},
		{"/a", false},
		{"a/", false},
		{"a//b", false},
		{"./a", false},
		{"a/..", false},
		{"..", false},
		{"a\x00b", false},
		{long, false},
		{strings.Repeat("ab/", MaxPath/3+1) + "c", false},
	} {
		err := CheckPath(tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("CheckPath(%.40q) = %v, want ok=%t", tc.path, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrBadPath) || !errors.Is(err, fs.ErrInvalid)) {
			t.Errorf("CheckPath(%.40q) = %v: does not wrap ErrBadPath and fs.ErrInvalid", tc.path, err)
		}
	}
	if err := CheckPath(long); Errno(err) != syscall.ENAMETOOLONG {
		t.Errorf("a name of %d bytes maps to %v, want ENAMETOOLONG", len(long), Errno(err))
	}
	if err := CheckName(""); err != nil {
		t.Errorf("CheckName(\"\") = %v, want the root accepted", err)
	}
	if err := CheckName("a/../b"); err == nil {
		t.Error("CheckName(a/../b) accepted")
	}
}
