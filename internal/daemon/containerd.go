package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/stratafs/strata/snapshotter"
)

// snapshotterDir is the snapshotter's root under the daemon's root: its
// metadata DB and one directory per snapshot.
func (c Config) snapshotterDir() string { return filepath.Join(c.Root, "snapshotter") }

// serveSnapshots opens the snapshotter, mounts again the remote layers it
// served before a restart, and serves it to containerd on
// cfg.ContainerdSocket. Restore runs before the socket exists, so
// containerd never sees a layer whose mount is still dead.
//
// The returned stop ends the service, unmounts the snapshot binds and
// closes the metadata; it must run before the pool is closed.
func (d *Daemon) serveSnapshots(ctx context.Context) (stop func(), err error) {
	socket := d.cfg.containerdSocket()
	if socket == "" {
		return func() {}, nil
	}
	layers := newSnapshotLayers(d)
	sn, err := snapshotter.New(d.cfg.snapshotterDir(),
		snapshotter.WithRemoteLayers(layers),
		snapshotter.WithLogger(slog.Default().With("component", "snapshotter")))
	if err != nil {
		return nil, fmt.Errorf("containerd snapshotter: %w", err)
	}
	start := time.Now()
	if err := sn.Restore(ctx); err != nil {
		// Not fatal: the other layers and every local snapshot still work,
		// and the failed ones are retried at the next start.
		slog.ErrorContext(ctx, "restoring containerd snapshots", "error", err)
	} else {
		slog.InfoContext(ctx, "containerd snapshots restored", "duration", time.Since(start).Round(time.Millisecond))
	}
	stopServe, err := snapshotter.Serve(ctx, sn, socket)
	if errors.Is(err, snapshotter.ErrSocketInUse) {
		// Another daemon (another root) serves containerd here; this one
		// still serves mounts, which is all a second daemon is for.
		slog.ErrorContext(ctx, "containerd snapshots API not served", "socket", socket, "error", err)
		stopServe = func() {}
	} else if err != nil {
		layers.closeAll(ctx)
		sn.Close()
		return nil, fmt.Errorf("containerd snapshotter: %w", err)
	} else {
		slog.InfoContext(ctx, "containerd snapshots API serving", "socket", socket)
	}
	return func() {
		stopServe()
		if err := layers.closeAll(context.WithoutCancel(ctx)); err != nil {
			slog.Error("unmounting snapshot layers", "error", err)
		}
		if err := sn.Close(); err != nil {
			slog.Error("closing snapshotter", "error", err)
		}
	}, nil
}
