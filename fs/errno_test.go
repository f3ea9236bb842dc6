package fs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/remote"
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
		// A blob the registry no longer has is no missing file.
		{fmt.Errorf("layer x: fetching: %w", &remote.Error{Method: "GET", URL: "http://r/v2/a/blobs/sha256:00", StatusCode: 404}), syscall.EIO},
		{fmt.Errorf("something else"), syscall.EIO},
	} {
		if got := errno(context.Background(), "read", c.err); got != c.want {
			t.Errorf("errno(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestPendingTableOnAFullDisk: the table of unanswered requests is a
// shared mapping; on a filesystem with no room left its creation fails,
// rather than a later write to it killing the daemon with SIGBUS.
func TestPendingTableOnAFullDisk(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	// Fill it.
	f, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(make([]byte, 4096)); err != nil {
			break
		}
	}
	f.Close()
	tab, err := openPendingTable(filepath.Join(dir, "pending"))
	if err == nil {
		tab.add(1) // the SIGBUS this test guards against
		t.Fatal("a pending table made on a full filesystem")
	}
	if !errors.Is(err, unix.ENOSPC) {
		t.Errorf("err = %v, want ENOSPC", err)
	}
}
