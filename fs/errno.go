package fs

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/stratafs/strata/remote"
)

// errno maps an error from the read path to what the kernel is told. Every
// cause that becomes EIO is logged first, because EIO alone tells the
// user nothing.
func errno(ctx context.Context, op string, err error, attrs ...any) syscall.Errno {
	if err == nil {
		return 0
	}
	var en syscall.Errno
	var oe *net.OpError
	var ue *url.Error
	var re *remote.Error
	switch {
	case errors.As(err, &oe), errors.As(err, &ue):
		// A registry out of reach (ECONNREFUSED, a reset): its errno
		// would tell a reader of a file nothing true; EIO, logged, does.
	case errors.As(err, &re):
		// A registry's answer: a blob it no longer has (404) is no
		// file missing from the image, whatever its class says.
	case errors.As(err, &en):
		return en
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errdefs.IsNotFound(err):
		return syscall.ENOENT
	}
	slog.ErrorContext(ctx, "fs: "+op+" failed", append(attrs, "error", err)...)
	return syscall.EIO
}
