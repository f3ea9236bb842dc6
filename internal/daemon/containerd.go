package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/stratafs/strata/snapshotter"
)

// snapshotterDir is the snapshotter's root under the daemon's root: its
// metadata DB and one directory per snapshot.
func (c Config) snapshotterDir() string { return filepath.Join(c.Root, "snapshotter") }

// stargzSnapshotterDir is the root of the snapshotter served for the name
// "stargz" (see Config.ContainerdStargzSocket): snapshots of its own.
func (c Config) stargzSnapshotterDir() string { return filepath.Join(c.Root, "snapshotter-stargz") }

// serveSnapshots serves containerd's snapshots API on cfg.ContainerdSocket
// and, for the name "stargz", on cfg.ContainerdStargzSocket: two
// snapshotters, each with its own snapshots and metadata (containerd's
// garbage collector, run per name, removes from a snapshotter whatever
// its name's metadata does not know), over the daemon's one layer pool.
//
// The returned stop ends both; it must run before the pool is closed.
func (d *Daemon) serveSnapshots(ctx context.Context) (stop func(), err error) {
	var stops []func()
	stopAll := func() {
		for _, s := range slices.Backward(stops) {
			s()
		}
	}
	for _, sv := range []struct{ socket, dir string }{
		{d.cfg.containerdSocket(), d.cfg.snapshotterDir()},
		{d.cfg.containerdStargzSocket(), d.cfg.stargzSnapshotterDir()},
	} {
		if sv.socket == "" {
			continue
		}
		s, err := d.serveSnapshotsOn(ctx, sv.socket, sv.dir)
		if err != nil {
			stopAll()
			return nil, err
		}
		stops = append(stops, s)
	}
	return stopAll, nil
}

// serveSnapshotsOn opens the snapshotter whose root is dir, mounts again
// the remote layers it served before a restart, and serves it to
// containerd on socket. Restore runs before the socket exists, so
// containerd never sees a layer whose mount is still dead.
//
// The returned stop ends the service, unmounts the snapshot binds and
// closes the metadata.
func (d *Daemon) serveSnapshotsOn(ctx context.Context, socket, dir string) (stop func(), err error) {
	layers := newSnapshotLayers(d)
	// Configured to: gzip and tar layers without a pushed index are read
	// once and indexed by Strata, zstd ones fetched whole, instead of
	// being left to containerd's unpack.
	layers.whole = d.cfg.IndexContainerdLayers
	sn, err := snapshotter.New(dir,
		snapshotter.WithRemoteLayers(layers),
		snapshotter.WithFixups(d.fixups),
		snapshotter.WithLogger(slog.Default().With("component", "snapshotter", "socket", socket)))
	if err != nil {
		return nil, fmt.Errorf("containerd snapshotter: %w", err)
	}
	d.addSnapshotter(sn)
	start := time.Now()
	if err := sn.Restore(ctx); err != nil {
		// Not fatal: the other layers and every local snapshot still work,
		// and the failed ones are retried at the next start.
		slog.ErrorContext(ctx, "restoring containerd snapshots", "socket", socket, "error", err)
	} else {
		slog.InfoContext(ctx, "containerd snapshots restored", "socket", socket, "duration", time.Since(start).Round(time.Millisecond))
	}
	stopServe, err := snapshotter.Serve(ctx, sn, socket)
	if errors.Is(err, snapshotter.ErrSocketInUse) {
		// Another daemon (another root) serves containerd here; this one
		// still serves mounts, which is all a second daemon is for.
		slog.ErrorContext(ctx, "containerd snapshots API not served", "socket", socket, "error", err)
		stopServe = func() {}
	} else if err != nil {
		d.removeSnapshotter(sn)
		layers.closeAll(ctx)
		sn.Close()
		return nil, fmt.Errorf("containerd snapshotter: %w", err)
	} else {
		slog.InfoContext(ctx, "containerd snapshots API serving", "socket", socket)
	}
	return func() {
		d.removeSnapshotter(sn)
		stopServe()
		if d.handingOver.Load() {
			// The binds stay for the containers on them; the next
			// daemon binds its own.
			sn.Close()
			return
		}
		if err := layers.closeAll(context.WithoutCancel(ctx)); err != nil {
			slog.Error("unmounting snapshot layers", "error", err)
		}
		if err := sn.Close(); err != nil {
			slog.Error("closing snapshotter", "error", err)
		}
	}, nil
}

// addSnapshotter and removeSnapshotter keep the list of the snapshotters
// served to containerd, for containerdSnapshots.
func (d *Daemon) addSnapshotter(sn *snapshotter.Snapshotter) {
	d.csnMu.Lock()
	defer d.csnMu.Unlock()
	d.csn = append(d.csn, sn)
}

func (d *Daemon) removeSnapshotter(sn *snapshotter.Snapshotter) {
	d.csnMu.Lock()
	defer d.csnMu.Unlock()
	d.csn = slices.DeleteFunc(d.csn, func(s *snapshotter.Snapshotter) bool { return s == sn })
}

// containerdSnapshots lists the layers the snapshotter serves lazily to
// containerd clients, with the image and the label set that named them.
func (d *Daemon) containerdSnapshots(ctx context.Context) ([]ContainerdSnapshot, error) {
	d.csnMu.Lock()
	sns := slices.Clone(d.csn)
	d.csnMu.Unlock()
	out := []ContainerdSnapshot{}
	for _, sn := range sns {
		if err := d.appendSnapshots(ctx, sn, &out); err != nil {
			return out, err
		}
	}
	slices.SortFunc(out, func(a, b ContainerdSnapshot) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// appendSnapshots appends sn's remote layer snapshots to out.
func (d *Daemon) appendSnapshots(ctx context.Context, sn *snapshotter.Snapshotter, out *[]ContainerdSnapshot) error {
	err := sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if info.Labels[snapshotter.LabelRemote] != "true" {
			return nil
		}
		cs := ContainerdSnapshot{Name: info.Name, Created: info.Created}
		if t, err := snapshotter.ParseRemoteLabels(info.Labels); err == nil {
			cs.Ref, cs.Client, cs.Layer.Digest = t.Ref, t.Client, t.Layer
		}
		if s, ok := d.pool.Stat(cs.Layer.Digest); ok {
			cs.Layer.Size, cs.Layer.FetchedBytes, cs.Layer.Requests = s.BlobSize, s.FetchedBytes, s.Requests
			cs.Layer.Format, cs.Layer.Local, cs.Layer.Packed = string(s.Format), s.Local, string(s.Packed)
		}
		*out = append(*out, cs)
		return nil
	})
	if errdefs.IsNotFound(err) {
		// No snapshot was ever made: the metastore has no bucket yet.
		err = nil
	}
	return err
}
