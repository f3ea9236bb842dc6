package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/stratafs/strata/internal/kmount"
)

// ErrStillMounted is returned when a snapshot directory cannot be deleted
// because something is still mounted on it; the directory is kept and a
// later Cleanup tries again.
var ErrStillMounted = errors.New("snapshot directory is still mounted")

// Commit turns the active snapshot key into the committed snapshot name,
// recording the disk usage of its upperdir.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		du, err := fs.DiskUsage(ctx, s.fsPath(id))
		if err != nil {
			return fmt.Errorf("commit %s: usage: %w", key, err)
		}
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage(du), opts...); err != nil {
			return fmt.Errorf("commit %s as %s: %w", key, name, err)
		}
		return nil
	})
}

// removal is a snapshot directory to delete once the metadata no longer
// refers to it.
type removal struct {
	dir string
	// remote is set when the directory held a remote layer, so that
	// RemoteLayers is told even if its mount has already gone.
	remote bool
}

// Remove deletes the snapshot key (which must have no children) and its
// directory. The record goes first, in a transaction; the directory after,
// and a failure there is only logged because the key is already free for
// reuse — Cleanup retries.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	if rr, ok := s.remote.(RemoteRecorder); ok {
		// Before the removal: the recording's list is kept while the
		// layers are still there.
		rr.StopRecording(ctx, key)
	}
	var removals []removal
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return fmt.Errorf("remove %s: %w", key, err)
		}
		if _, _, err := storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("remove %s: %w", key, err)
		}
		orphans, err := s.orphanDirs(ctx)
		if err != nil {
			return fmt.Errorf("remove %s: %w", key, err)
		}
		removed := filepath.Join(s.snapshotsDir(), id)
		for _, dir := range orphans {
			removals = append(removals, removal{dir: dir, remote: dir == removed && isRemote(info)})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range removals {
		if err := s.removeDir(ctx, r); err != nil {
			s.log.WarnContext(ctx, "cannot remove snapshot directory", "path", r.dir, "error", err)
		}
	}
	return nil
}

// Cleanup deletes snapshot directories the metadata does not know: left by
// a crash, by a failed removal, or by a Prepare interrupted half-way.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var orphans []string
	// A write transaction keeps snapshots from being created while the
	// directory listing and the ID map are compared.
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		var err error
		orphans, err = s.orphanDirs(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	var errs []error
	for _, dir := range orphans {
		if err := s.removeDir(ctx, removal{dir: dir}); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	return nil
}

// orphanDirs lists directories under snapshots/ whose name is not the ID of
// a snapshot. The context must hold a metastore transaction.
func (s *Snapshotter) orphanDirs(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if errdefs.IsNotFound(err) {
		// No snapshot was ever created: every directory is an orphan.
		ids, err = map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(s.snapshotsDir())
	if err != nil {
		return nil, err
	}
	var orphans []string
	for _, e := range entries {
		if _, ok := ids[e.Name()]; ok {
			continue
		}
		orphans = append(orphans, filepath.Join(s.snapshotsDir(), e.Name()))
	}
	return orphans, nil
}

// removeDir deletes a snapshot directory, first making sure nothing is
// mounted on its fs directory: os.RemoveAll would otherwise descend into a
// mounted layer and delete whatever it can reach there.
func (s *Snapshotter) removeDir(ctx context.Context, r removal) error {
	fsDir := filepath.Join(r.dir, "fs")
	mounted := kmount.IsMountpoint(fsDir)
	if s.remote != nil && (r.remote || mounted) {
		if err := s.remote.Unmount(ctx, fsDir); err != nil {
			s.log.WarnContext(ctx, "remote layer unmount failed", "path", fsDir, "error", err)
		}
		mounted = kmount.IsMountpoint(fsDir)
	}
	if mounted {
		// Detaching is safe even while a container still reads the layer:
		// the kernel keeps it alive for existing users.
		if err := kmount.Detach(fsDir); err != nil {
			s.log.WarnContext(ctx, "detach failed", "path", fsDir, "error", err)
		}
		if kmount.IsMountpoint(fsDir) {
			return fmt.Errorf("%s: %w", fsDir, ErrStillMounted)
		}
	}
	if err := os.RemoveAll(r.dir); err != nil {
		return fmt.Errorf("remove %s: %w", r.dir, err)
	}
	return nil
}
