package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/service"
	"google.golang.org/grpc"
)

// serveSnapshotter runs stargz-snapshotter's own snapshotter (the one
// containerd-stargz-grpc serves) on a unix socket through containerd's
// contrib/snapshotservice, so containerd can load it as a proxy plugin.
// It prints "ready" once the socket accepts connections and serves until
// ctx ends; then it closes the snapshotter, which unmounts every layer.
func serveSnapshotter(ctx context.Context, root, socket string, noBackground bool) error {
	cfg := &service.Config{Config: config.Config{NoPrometheus: true, NoBackgroundFetch: noBackground}}
	// The registry is reached through the bench proxy on 127.0.0.1, which
	// stargz's resolver already talks to over plain HTTP (MatchLocalhost).
	sn, err := service.NewStargzSnapshotterService(ctx, root, cfg)
	if err != nil {
		return fmt.Errorf("stargz snapshotter: %w", err)
	}
	defer func() {
		if err := sn.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "stargz-bench: close snapshotter:", err)
		}
	}()
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return err
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listen %s: %w", socket, err)
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- rpc.Serve(l) }()
	fmt.Println("ready")
	select {
	case <-ctx.Done():
		rpc.Stop()
		<-served
		return nil
	case err := <-served:
		return fmt.Errorf("serve %s: %w", socket, err)
	}
}
