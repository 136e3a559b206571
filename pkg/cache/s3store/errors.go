package s3store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
)

// ErrChanged is wrapped when a conditional read finds a newer version of
// the object (HTTP 412): the reader must look the file up again.
var ErrChanged = errors.New("object changed while it was read")

// Error is a failed store operation. It unwraps to the errno a file system
// caller should see.
type Error struct {
	Op    string
	Key   string
	Code  string // the S3 error code, or ""
	Errno syscall.Errno
	msg   string // redacted
}

func (e *Error) Error() string {
	return fmt.Sprintf("s3 %s %s: %s", e.Op, e.Key, e.msg)
}

// Unwrap returns the errno, and ErrChanged for a changed object.
func (e *Error) Unwrap() []error {
	if e.Errno == syscall.ESTALE {
		return []error{e.Errno, ErrChanged}
	}
	return []error{e.Errno}
}

// classify maps a store error to an errno and a code.
func classify(ctx context.Context, err error) (syscall.Errno, string) {
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.Code != "" {
		switch er.Code {
		case "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload":
			return syscall.ENOENT, er.Code
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken", "ExpiredToken", "AccountProblem":
			return syscall.EACCES, er.Code
		case "PreconditionFailed":
			return syscall.ESTALE, er.Code
		case "InvalidRange":
			return syscall.EINVAL, er.Code
		case "EntityTooLarge":
			return syscall.EFBIG, er.Code
		}
		return syscall.EIO, er.Code
	}
	if errors.As(err, &er) {
		switch er.StatusCode {
		case http.StatusNotFound:
			return syscall.ENOENT, "NotFound"
		case http.StatusForbidden:
			return syscall.EACCES, "Forbidden"
		case http.StatusPreconditionFailed:
			return syscall.ESTALE, "PreconditionFailed"
		}
	}
	var ue *url.Error
	var ne net.Error
	if errors.As(err, &ue) || errors.As(err, &ne) {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return syscall.EINTR, ""
		}
		return syscall.EIO, "" // refused, reset, timed out: the store is unreachable
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno, ""
	}
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return syscall.EINTR, "" // the caller gave up
	}
	return syscall.EIO, "" // our deadline, a network error, exhausted retries
}

// fail turns err into an *Error, logging it once (per key and minute)
// unless it is a plain "not found" or the caller's own cancellation.
func (c *Client) fail(ctx context.Context, op, key string, err error) error {
	errno, code := classify(ctx, err)
	msg := c.redact(err.Error())
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		msg = fmt.Sprintf("no answer within the %s request timeout (%s)", c.cfg.Timeout, msg)
	}
	e := &Error{Op: op, Key: path.Join(c.loc.Bucket, key), Code: code, Errno: errno, msg: msg}
	switch errno {
	case syscall.ENOENT, syscall.EINTR, syscall.ESTALE:
		c.log.V(4).Info("S3 request did not succeed", "op", op, "bucket", c.loc.Bucket, "key", key, "reason", e.msg)
	default:
		if c.logOnce(op + " " + key) {
			c.log.Error(e, "S3 request failed", "op", op, "bucket", c.loc.Bucket, "key", key, "code", code, "errno", errno.Error())
		}
	}
	return e
}

// notExist is a local "not found".
func notExist(msg string) error { return fmt.Errorf("%s: %w", msg, syscall.ENOENT) }

// redact removes credential values from s.
func (c *Client) redact(s string) string {
	for _, v := range c.secrets {
		s = strings.ReplaceAll(s, v, "[redacted]")
	}
	return s
}

// logOnce reports whether a problem of key should be logged now: at most
// once a minute per key.
func (c *Client) logOnce(key string) bool {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	last, seen := c.logged[key]
	now := time.Now()
	if seen && now.Sub(last) < time.Minute {
		return false
	}
	if len(c.logged) > 4096 {
		clear(c.logged)
	}
	c.logged[key] = now
	return true
}
