package fs

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
)

// TestErrno: a registry out of reach is EIO (its network errno would tell
// a reader nothing true), the read path's own errnos pass, a cancelled
// read is EINTR, a missing entry ENOENT, anything else EIO.
func TestErrno(t *testing.T) {
	refused := &url.Error{Op: "Get", URL: "http://127.0.0.1:1/v2/", Err: &net.OpError{Op: "dial", Net: "tcp",
		Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}}
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{refused, syscall.EIO},
		{fmt.Errorf("layer x: %w", refused), syscall.EIO},
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, syscall.EIO},
		{fmt.Errorf("open: %w", syscall.EROFS), syscall.EROFS},
		{context.Canceled, syscall.EINTR},
		{fmt.Errorf("entry: %w", errdefs.ErrNotFound), syscall.ENOENT},
		{fmt.Errorf("something else"), syscall.EIO},
	} {
		if got := errno(context.Background(), "read", c.err); got != c.want {
			t.Errorf("errno(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
