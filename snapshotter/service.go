package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"google.golang.org/grpc"
)

// ErrSocketInUse is returned by Serve when another process already answers
// on the socket path; its socket is left alone.
var ErrSocketInUse = errors.New("socket is in use by another server")

// gracefulStopTimeout bounds how long stop waits for in-flight calls (a
// Prepare may be mounting a layer) before cutting connections.
const gracefulStopTimeout = 10 * time.Second

// Serve exposes sn as containerd's snapshots gRPC service on a unix socket,
// for containerd's `proxy_plugins`. The socket's directory is created 0711
// and the socket is made 0660, so only root and the socket's group may call
// it. A stale socket (nothing listening) is replaced; a live one is an error
// wrapping ErrSocketInUse. The server stops when ctx is done or stop is
// called, whichever is first; stop waits for the server to finish, removes
// the socket, and may be called more than once.
func Serve(ctx context.Context, sn snapshots.Snapshotter, socketPath string) (stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o711); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := removeStaleSocket(ctx, socketPath); err != nil {
		return nil, err
	}
	listener, err := net.Listen("unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socketPath, err)
	}
	if err := os.Chmod(socketPath, 0o660); err != nil {
		listener.Close()
		return nil, fmt.Errorf("socket permissions: %w", err)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(listener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			slog.Default().Error("snapshots service stopped", "socket", socketPath, "error", err)
		}
	}()

	var once sync.Once
	stop = func() {
		once.Do(func() {
			gracefulStop(srv)
			<-served
			if err := os.Remove(socketPath); err != nil && !os.IsNotExist(err) {
				slog.Default().Warn("cannot remove socket", "socket", socketPath, "error", err)
			}
		})
	}
	go func() {
		select {
		case <-ctx.Done():
			stop()
		case <-served:
		}
	}()
	return stop, nil
}

func gracefulStop(srv *grpc.Server) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(gracefulStopTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		srv.Stop()
		<-done
	}
}

// removeStaleSocket deletes a socket left by a server that is gone, so that
// a restarted daemon can listen again; it never deletes a live socket or
// anything that is not a socket.
func removeStaleSocket(ctx context.Context, path string) error {
	st, err := os.Lstat(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if st.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("socket %s: exists and is not a socket", path)
	}
	dialCtx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	if conn, err := d.DialContext(dialCtx, "unix", path); err == nil {
		conn.Close()
		return fmt.Errorf("socket %s: %w", path, ErrSocketInUse)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}
