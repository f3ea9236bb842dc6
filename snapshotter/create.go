package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Prepare creates an active snapshot of parent under key and returns the
// mounts that give its writable view. When RemoteLayers is configured and
// the labels carry containerd.io/snapshot.ref, the layer is first offered to
// RemoteLayers (see the package documentation for the protocol); success is
// reported as an error wrapping errdefs.ErrAlreadyExists, as containerd
// expects.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var labels map[string]string
	if s.remote != nil {
		base, err := applyOpts(opts)
		if err != nil {
			return nil, err
		}
		if target := base.Labels[snapshots.LabelSnapshotRef]; target != "" {
			return s.prepareRemote(ctx, key, parent, target, base.Labels, opts)
		}
		labels = base.Labels
	}
	if err := s.ensureServed(ctx, parent); err != nil {
		return nil, fmt.Errorf("prepare %s: %w", key, err)
	}
	sn, err := s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
	if err != nil {
		return nil, err
	}
	s.startRecording(ctx, key, parent, labels)
	return s.mounts(sn)
}

// View creates a read-only snapshot of parent under key.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	if err := s.ensureServed(ctx, parent); err != nil {
		return nil, fmt.Errorf("view %s: %w", key, err)
	}
	sn, err := s.createSnapshot(ctx, snapshots.KindView, key, parent, opts)
	if err != nil {
		return nil, err
	}
	return s.mounts(sn)
}

// Mounts returns the mounts of an active or view snapshot again, for callers
// that lost them (after a restart, say).
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	sn, err := s.getSnapshot(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("mounts of snapshot %s: %w", key, err)
	}
	if err := s.ensureServed(ctx, key); err != nil {
		return nil, fmt.Errorf("mounts of snapshot %s: %w", key, err)
	}
	return s.mounts(sn)
}

// getSnapshot reads the record of an active or view snapshot.
func (s *Snapshotter) getSnapshot(ctx context.Context, key string) (storage.Snapshot, error) {
	var sn storage.Snapshot
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		sn, err = storage.GetSnapshot(ctx, key)
		return err
	})
	return sn, err
}

func applyOpts(opts []snapshots.Opt) (snapshots.Info, error) {
	var info snapshots.Info
	for _, opt := range opts {
		if err := opt(&info); err != nil {
			return snapshots.Info{}, err
		}
	}
	return info, nil
}

// createSnapshot records a new active or view snapshot and creates its
// directory. The directory is built under a temporary name and renamed to
// its ID inside the transaction, so that a crash leaves either nothing or a
// "new-" directory that Cleanup removes as an orphan.
func (s *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ storage.Snapshot, retErr error) {
	var (
		sn        storage.Snapshot
		tmp, path string
	)
	defer func() {
		if retErr == nil {
			return
		}
		// Nothing is mounted in these yet, so plain removal is safe.
		for _, dir := range []string{tmp, path} {
			if dir == "" {
				continue
			}
			if err := os.RemoveAll(dir); err != nil {
				s.log.WarnContext(ctx, "cannot remove directory of failed snapshot", "path", dir, "error", err)
			}
		}
	}()
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		var err error
		if tmp, err = s.newSnapshotDir(kind); err != nil {
			return err
		}
		if sn, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		if err := s.inheritRootOwner(sn, filepath.Join(tmp, "fs")); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		path = filepath.Join(s.snapshotsDir(), sn.ID)
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("create snapshot %s: %w", key, err)
		}
		tmp = ""
		return nil
	})
	if err != nil {
		return storage.Snapshot{}, err
	}
	return sn, nil
}

// newSnapshotDir makes a temporary snapshot directory with fs (and work for
// active snapshots) inside.
func (s *Snapshotter) newSnapshotDir(kind snapshots.Kind) (string, error) {
	tmp, err := os.MkdirTemp(s.snapshotsDir(), "new-")
	if err != nil {
		return "", fmt.Errorf("snapshot directory: %w", err)
	}
	fsDir := filepath.Join(tmp, "fs")
	if err := os.Mkdir(fsDir, 0o755); err != nil {
		return tmp, fmt.Errorf("snapshot directory: %w", err)
	}
	// The root of a container's filesystem must be 0755 whatever the
	// daemon's umask is.
	if err := os.Chmod(fsDir, 0o755); err != nil {
		return tmp, fmt.Errorf("snapshot directory: %w", err)
	}
	if kind == snapshots.KindActive {
		if err := os.Mkdir(filepath.Join(tmp, "work"), 0o711); err != nil {
			return tmp, fmt.Errorf("snapshot directory: %w", err)
		}
	}
	return tmp, nil
}

// inheritRootOwner gives a new upperdir the owner of its parent's root, as
// containerd's overlay snapshotter does: overlayfs shows the upperdir's owner
// for the merged root once anything is written, and it must not turn into
// root:root under a layer that chose otherwise. The root is the one the
// stack shows: its fixup's when it has one (a top layer without a "./"
// entry shows a lower one's). WithRootFromStack takes its mode, time and
// xattrs too.
func (s *Snapshotter) inheritRootOwner(sn storage.Snapshot, fsDir string) error {
	if len(sn.ParentIDs) == 0 {
		return nil
	}
	src := s.fsPath(sn.ParentIDs[0])
	if s.fixups != nil {
		parents := s.distinctLayers(sn.ParentIDs)
		if len(parents) > 0 {
			lowers := make([]string, len(parents))
			for i, id := range parents {
				lowers[i] = s.fsPath(id)
			}
			fixup, err := s.fixups(lowers)
			if err != nil {
				return err
			}
			if fixup != "" {
				src = fixup
			}
		}
	}
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("stat parent: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("stat parent: no owner information")
	}
	if err := os.Lchown(fsDir, int(sys.Uid), int(sys.Gid)); err != nil {
		return fmt.Errorf("chown upperdir: %w", err)
	}
	if !s.rootFromStack {
		return nil
	}
	if err := copyXattrs(src, fsDir); err != nil {
		return fmt.Errorf("upperdir xattrs: %w", err)
	}
	if err := syscall.Chmod(fsDir, sys.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod upperdir: %w", err)
	}
	if err := os.Chtimes(fsDir, st.ModTime(), st.ModTime()); err != nil {
		return fmt.Errorf("upperdir time: %w", err)
	}
	return nil
}

// copyXattrs gives dst the xattrs of src, overlayfs's own aside.
func copyXattrs(src, dst string) error {
	x, err := Xattrs(src)
	if err != nil {
		return err
	}
	for k, v := range x {
		if err := unix.Lsetxattr(dst, k, v, 0); err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	return nil
}

// ErrTooManyLayers is wrapped by Mounts when the overlay options for a
// snapshot cannot fit in the one page the kernel accepts, even in the
// relative form containerd's mount.Mount falls back to.
var ErrTooManyLayers = errors.New("too many layers for one overlay mount")

// mounts builds the mounts of an active or view snapshot the way containerd's
// overlay snapshotter does, so that every containerd client mounts them
// without knowing about Strata. Parent directories of remote layers are
// their mountpoints, so they need no special case here.
func (s *Snapshotter) mounts(sn storage.Snapshot) ([]mount.Mount, error) {
	if sn.Kind != snapshots.KindActive && sn.Kind != snapshots.KindView {
		return nil, fmt.Errorf("snapshot %s of kind %v has no mounts: %w", sn.ID, sn.Kind, errdefs.ErrFailedPrecondition)
	}
	if len(sn.ParentIDs) == 0 {
		// overlayfs needs at least one lowerdir; a lone layer is a bind.
		mode := "rw"
		if sn.Kind == snapshots.KindView {
			mode = "ro"
		}
		return []mount.Mount{bindMount(s.fsPath(sn.ID), mode)}, nil
	}
	var options []string
	parents := s.distinctLayers(sn.ParentIDs)
	if sn.Kind == snapshots.KindActive {
		options = append(options,
			"workdir="+s.workPath(sn.ID),
			"upperdir="+s.fsPath(sn.ID),
		)
	}
	lowers := make([]string, len(parents))
	for i, id := range parents {
		lowers[i] = s.fsPath(id)
	}
	if s.fixups != nil && len(lowers) > 0 {
		fixup, err := s.fixups(lowers)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", sn.ID, err)
		}
		if fixup != "" {
			lowers = append([]string{fixup}, lowers...)
		}
	}
	if sn.Kind != snapshots.KindActive && len(lowers) == 1 {
		// A view of one layer (that needs no fixup) is that layer,
		// read-only.
		return []mount.Mount{bindMount(lowers[0], "ro")}, nil
	}
	// A view of several layers has no upperdir, which makes overlayfs
	// read-only by itself.
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	options = append(options, s.options...)
	if err := s.checkOptionsFit(options, lowers); err != nil {
		return nil, err
	}
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}, nil
}

// distinctLayers drops, from parent IDs listed top first, every layer
// directory that is also a higher one: an image may hold one layer blob
// twice, and remote layers of one blob are binds of one FUSE mount, which
// overlayfs refuses to stack twice (ELOOP). Dropping the lower copy keeps
// the merged tree: the higher copy puts the same entries and whiteouts
// back over everything between them.
func (s *Snapshotter) distinctLayers(ids []string) []string {
	type key struct{ dev, ino uint64 }
	seen := make(map[key]bool, len(ids))
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		var st syscall.Stat_t
		if err := syscall.Stat(s.fsPath(id), &st); err == nil {
			k := key{uint64(st.Dev), st.Ino}
			if seen[k] {
				continue
			}
			seen[k] = true
		}
		out = append(out, id)
	}
	return out
}

func bindMount(source, mode string) mount.Mount {
	return mount.Mount{Type: "bind", Source: source, Options: []string{mode, "rbind"}}
}

// checkOptionsFit fails early, with a clear error, when the overlay options
// would be refused at mount time. containerd's mount.Mount rewrites lowerdir
// to paths relative to the lower directories' common parent (the snapshots
// directory, or the root when a fixup is among them) and mounts from there
// once the options near a page, so the relative form is what must fit.
func (s *Snapshotter) checkOptionsFit(options []string, lowers []string) error {
	limit := os.Getpagesize()
	if len(strings.Join(options, ",")) <= limit-512 {
		return nil
	}
	common := lowers[0]
	for _, l := range lowers[1:] {
		for !strings.HasPrefix(l, common) {
			common = common[:len(common)-1]
		}
	}
	common = filepath.Dir(common) // as containerd compacts it
	size := len("lowerdir=") + len(lowers) - 1
	for _, l := range lowers {
		size += len(strings.TrimPrefix(strings.TrimPrefix(l, common), "/"))
	}
	for _, o := range options {
		if !strings.HasPrefix(o, "lowerdir=") {
			size += len(o) + 1
		}
	}
	if size > limit {
		return fmt.Errorf("%d layers need %d bytes of overlay options, the limit is %d: %w",
			len(lowers), size, limit, ErrTooManyLayers)
	}
	return nil
}

// UpperDir returns the directory that holds the changes of the active
// snapshot key: its overlayfs upperdir (or, without parents, the directory
// bound as its root).
func (s *Snapshotter) UpperDir(ctx context.Context, key string) (string, error) {
	sn, err := s.getSnapshot(ctx, key)
	if err != nil {
		return "", fmt.Errorf("snapshot %s: %w", key, err)
	}
	if sn.Kind != snapshots.KindActive {
		return "", fmt.Errorf("snapshot %s is not active: %w", key, errdefs.ErrFailedPrecondition)
	}
	return s.fsPath(sn.ID), nil
}
