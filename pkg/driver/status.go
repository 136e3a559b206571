package driver

import (
	"errors"
	"io/fs"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cistern-csi/cistern/pkg/cache/api"
	"github.com/cistern-csi/cistern/pkg/cache/s3store"
)

// subPathStatus maps a sub-path operation's error to a gRPC status.
func subPathStatus(err error, dataset, sub string) error {
	if code, ok := storeCode(err); ok {
		return status.Errorf(code, "dataset %s, sub-path %q: %v", dataset, sub, err)
	}
	switch {
	case errors.Is(err, ErrEscapes), errors.Is(err, ErrInvalidSubPath):
		return status.Errorf(codes.InvalidArgument, "dataset %s, sub-path %q: %v", dataset, sub, err)
	case errors.Is(err, fs.ErrNotExist):
		return status.Errorf(codes.NotFound, "dataset %s, sub-path %q: %v", dataset, sub, err)
	}
	return status.Errorf(codes.Internal, "dataset %s, sub-path %q: %v", dataset, sub, err)
}

// storeCode maps an object store's errno to a gRPC code: refused
// credentials are PermissionDenied, an unreachable or failing store is
// Unavailable (the CO retries).
func storeCode(err error) (codes.Code, bool) {
	var se *s3store.Error
	if !errors.As(err, &se) {
		return 0, false
	}
	switch se.Errno {
	case syscall.EACCES:
		return codes.PermissionDenied, true
	case syscall.ENOENT:
		return codes.NotFound, true
	}
	return codes.Unavailable, true
}

// sourceStatus is the error of a dataset root that cannot be reached.
func sourceStatus(err error, dataset string, src api.Source) error {
	code, ok := storeCode(err)
	if !ok || code == codes.NotFound {
		code = codes.FailedPrecondition
	}
	return status.Errorf(code, "dataset %s: source %s cannot be reached: %v", dataset, src.URL(), err)
}

// recordStatus is the error of a volume record operation.
func recordStatus(op string, err error) error {
	code, ok := storeCode(err)
	if !ok || code == codes.NotFound {
		code = codes.Internal
	}
	return status.Errorf(code, "%s volume record: %v", op, err)
}
