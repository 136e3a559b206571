package s3

import (
	"context"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/cistern-csi/cistern/pkg/cache/source"
)

// Upload implements source.Objects.
func (s *Source) Upload(ctx context.Context, name string, f *os.File, size int64) (source.Attr, error) {
	if name == "" {
		return source.Attr{}, syscall.EISDIR
	}
	defer s.forget(name)
	// A section reader reads from offset 0 whatever the file's offset
	// (an upload retried after a failed one reads it all again).
	if _, err := s.c.Put(ctx, name, io.NewSectionReader(f, 0, size), size); err != nil {
		return source.Attr{}, err
	}
	// The store's own view (multipart ETags, its clock).
	o, err := s.c.Stat(ctx, name)
	if err != nil {
		return source.Attr{}, err
	}
	return s.fileAttr(o), nil
}

// MkdirMarker implements source.Objects.
func (s *Source) MkdirMarker(ctx context.Context, name string) error {
	defer s.forget(name)
	return s.c.PutMarker(ctx, name)
}

// RemoveFile implements source.Objects.
func (s *Source) RemoveFile(ctx context.Context, name string) error {
	defer s.forget(name)
	return s.c.Remove(ctx, name)
}

// RemoveDir implements source.Objects: only an empty directory (its marker,
// if any, is all there is under it).
func (s *Source) RemoveDir(ctx context.Context, name string) error {
	defer s.forget(name)
	objs, err := s.c.List(ctx, name)
	if err != nil {
		return err
	}
	if len(objs) > 0 {
		return &fs.PathError{Op: "rmdir", Path: name, Err: syscall.ENOTEMPTY}
	}
	return s.c.RemoveMarker(ctx, name)
}

// RenameFile implements source.Objects: copy on the server, then delete. A
// crash between the two leaves both names, never neither.
func (s *Source) RenameFile(ctx context.Context, from, to string, a source.Attr) error {
	defer s.forget(from)
	defer s.forget(to)
	if err := s.c.Copy(ctx, from, to, a.Size); err != nil {
		return err
	}
	return s.c.Remove(ctx, from)
}

// NewFile implements source.Objects.
func (s *Source) NewFile() source.Attr {
	return source.Attr{Mode: s.perm.FileMode, UID: s.perm.UID, GID: s.perm.GID, Mtime: time.Now()}
}
