package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/stratafs/strata/internal/kmount"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"golang.org/x/sync/errgroup"
)

// restoreParallelism bounds concurrent re-mounts: each may read an index
// from disk or the registry, and a node can hold hundreds of layers.
const restoreParallelism = 4

// remoteSnapshot is a committed remote layer found by Restore.
type remoteSnapshot struct {
	name   string
	id     string
	labels map[string]string
}

// Restore makes every committed remote layer served again, typically after
// the daemon restarted and its FUSE servers went away. For each one it calls
// RemoteLayers.Check and, when that fails, clears whatever is left at the
// mountpoint and calls Mount with the labels stored at commit. It goes on
// past failures and returns them all joined; a layer that cannot be restored
// stays recorded, and reads through it fail until it is restored or removed.
// Without RemoteLayers it does nothing.
func (s *Snapshotter) Restore(ctx context.Context) error {
	if s.remote == nil {
		return nil
	}
	layers, err := s.remoteSnapshots(ctx)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	var (
		mu   sync.Mutex
		errs []error
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(restoreParallelism)
	for _, l := range layers {
		g.Go(func() error {
			if err := s.restoreOne(gctx, l); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("snapshot %s: %w", l.name, err))
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait() // the goroutines report through errs, never through Wait
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restore: %d of %d remote layers failed: %w", len(errs), len(layers), err)
	}
	return nil
}

func (s *Snapshotter) remoteSnapshots(ctx context.Context) ([]remoteSnapshot, error) {
	var layers []remoteSnapshot
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Kind != snapshots.KindCommitted || !isRemote(info) {
				return nil
			}
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err != nil {
				return err
			}
			layers = append(layers, remoteSnapshot{name: info.Name, id: id, labels: info.Labels})
			return nil
		})
	})
	if errdefs.IsNotFound(err) {
		return nil, nil // a fresh metadata store has no buckets yet
	}
	return layers, err
}

// ensureServed makes sure every remote layer of the chain from name down
// is mounted before a snapshot is stacked on it: a layer whose restore
// failed at start is an empty directory, and an overlay over it would show
// the image without that layer's files, silently. Such a layer is mounted
// again now (the registry or the disk may be back); when it still cannot
// be, the error names it and nothing is created.
func (s *Snapshotter) ensureServed(ctx context.Context, name string) error {
	if s.remote == nil || name == "" {
		return nil
	}
	var unserved []remoteSnapshot
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		for p := name; p != ""; {
			id, info, _, err := storage.GetInfo(ctx, p)
			if err != nil {
				return err
			}
			if info.Kind == snapshots.KindCommitted && isRemote(info) && !kmount.IsMountpoint(s.fsPath(id)) {
				unserved = append(unserved, remoteSnapshot{name: info.Name, id: id, labels: info.Labels})
			}
			p = info.Parent
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, l := range unserved {
		s.restoreMu.Lock()
		var err error
		if !kmount.IsMountpoint(s.fsPath(l.id)) { // another caller may have restored it
			err = s.restoreOne(ctx, l)
		}
		s.restoreMu.Unlock()
		if err != nil {
			layer := l.labels[LabelLayerDigest] // or the set BuildKit sends
			if layer == "" {
				layer = l.labels[LabelStargzDigest]
			}
			return fmt.Errorf("remote layer %s (snapshot %s) is not served and cannot be mounted again: %w: %w",
				layer, l.name, err, errdefs.ErrUnavailable)
		}
	}
	return nil
}

func (s *Snapshotter) restoreOne(ctx context.Context, l remoteSnapshot) error {
	dir := s.fsPath(l.id)
	// The directory may be gone if the node's disk was wiped but the
	// metadata kept; a mountpoint is all Mount needs.
	if err := os.MkdirAll(dir, 0o755); err != nil && !kmount.IsMountpoint(dir) {
		return fmt.Errorf("mountpoint: %w", err)
	}
	err := s.remote.Check(ctx, dir, l.labels)
	if err == nil {
		return nil
	}
	log := s.log.With("snapshot", l.name, "dir", dir)
	log.InfoContext(ctx, "remote layer unhealthy, mounting again", "reason", err)
	if err := s.remote.Unmount(ctx, dir); err != nil {
		log.DebugContext(ctx, "unmount before restore", "error", err)
	}
	if kmount.IsMountpoint(dir) {
		// A dead FUSE mount answers ENOTCONN to everything; only the
		// kernel can clear it once its server is gone.
		if err := kmount.Detach(dir); err != nil {
			return fmt.Errorf("clear stale mount: %w", err)
		}
	}
	if err := checkPristine(dir); err != nil {
		return fmt.Errorf("mountpoint not clean: %w", err)
	}
	if err := s.remote.Mount(ctx, dir, l.labels); err != nil {
		return fmt.Errorf("mount again: %w", err)
	}
	log.InfoContext(ctx, "remote layer restored")
	return nil
}
