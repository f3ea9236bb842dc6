package snapshotter

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/continuity/fs"
)

// Snapshotter is a containerd snapshotter on overlayfs whose committed layers
// may be remote (mounted lazily by a RemoteLayers implementation). It is safe
// for concurrent use: every metadata change is a metastore transaction.
type Snapshotter struct {
	root    string
	ms      *storage.MetaStore
	remote  RemoteLayers
	options []string
	fixups  func(lowers []string) (string, error)
	// rootFromStack: a new upper directory's root takes the mode and
	// owner of the stack's root (WithRootFromStack).
	rootFromStack bool
	log           *slog.Logger
	// restoreMu serializes the restores of layers found unserved when a
	// snapshot is stacked on them (ensureServed).
	restoreMu sync.Mutex
}

var _ snapshots.Snapshotter = (*Snapshotter)(nil)

// Option configures a Snapshotter.
type Option func(*config)

type config struct {
	remote          RemoteLayers
	mountOptions    []string
	hasMountOptions bool
	wholeUpper      bool
	fixups          func(lowers []string) (string, error)
	rootFromStack   bool
	log             *slog.Logger
}

// WithRemoteLayers enables the remote-snapshot protocol: Prepare calls with
// the containerd.io/snapshot.ref label are first offered to r.Mount. Default:
// nil, every layer is local (containerd unpacks it).
func WithRemoteLayers(r RemoteLayers) Option {
	return func(c *config) { c.remote = r }
}

// WithMountOptions replaces the extra options appended to every overlay
// mount. Default: "index=off" when the kernel knows the option, because the
// overlay index ties a lower layer to the first upper it was used with and
// layers here are shared by many snapshots (containerd's overlay snapshotter
// does the same). Options do not apply to bind mounts.
func WithMountOptions(options ...string) Option {
	return func(c *config) {
		c.mountOptions = append([]string(nil), options...)
		c.hasMountOptions = true
	}
}

// WithWholeUpper keeps overlayfs' redirect_dir and metacopy features off
// (where the kernel knows them) in addition to the other mount options, so
// that the upper directory of an active snapshot holds the whole of its
// changes: a renamed lower directory is copied up instead of recorded as a
// redirect, and a metadata change copies the file's data too. A diff made
// from the upper directory alone then needs no look at the lower layers'
// content. Default: off, as containerd's overlay snapshotter, which diffs by
// walking both trees.
func WithWholeUpper() Option {
	return func(c *config) { c.wholeUpper = true }
}

// WithFixups has the overlay of every snapshot of several layers ask f
// for one more lower directory to put on top of its layers (given as
// directories, top first), or "" for none: what fs.Pool.FixupDir makes
// for directories a layer holds without an entry. The directory must
// live as long as the snapshots that name it. Default: none.
func WithFixups(f func(lowers []string) (string, error)) Option {
	return func(c *config) { c.fixups = f }
}

// WithRootFromStack gives the root of a new active snapshot's upper
// directory (which overlayfs shows as the root) the mode and owner of its
// parents' root as the image's layers make it (its fixup's, when it has
// one), as a full unpack of the image has them. Default: mode 0755 and
// the topmost parent's owner, as containerd's overlay snapshotter does.
func WithRootFromStack() Option {
	return func(c *config) { c.rootFromStack = true }
}

// WithLogger sets where the snapshotter logs events such as a remote layer
// falling back to the local path. Default: slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.log = l }
}

// New opens (creating if needed) a snapshotter rooted at root, with its
// metadata in root/metadata.db and snapshot directories under
// root/snapshots. It does not contact RemoteLayers; call Restore for that.
func New(root string, opts ...Option) (*Snapshotter, error) {
	var c config
	for _, opt := range opts {
		opt(&c)
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if !c.hasMountOptions && kernelHasOverlayOption("index") {
		c.mountOptions = []string{"index=off"}
	}
	if c.wholeUpper {
		for _, o := range []string{"redirect_dir", "metacopy"} {
			if kernelHasOverlayOption(o) {
				c.mountOptions = append(c.mountOptions, o+"=off")
			}
		}
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter root: %w", err)
	}
	// overlayfs silently misbehaves (whiteouts are lost) on filesystems
	// without d_type, so refuse them here rather than at the first mount.
	dtype, err := fs.SupportsDType(root)
	if err != nil {
		return nil, fmt.Errorf("snapshotter root %s: %w", root, err)
	}
	if !dtype {
		return nil, fmt.Errorf("snapshotter root %s: filesystem does not support d_type, which overlayfs needs", root)
	}
	if err := os.Mkdir(filepath.Join(root, "snapshots"), 0o700); err != nil && !os.IsExist(err) {
		return nil, fmt.Errorf("snapshotter root: %w", err)
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("snapshot metastore: %w", err)
	}
	return &Snapshotter{
		root:    root,
		ms:      ms,
		remote:  c.remote,
		options: c.mountOptions,
		fixups:  c.fixups,
		log:     c.log,

		rootFromStack: c.rootFromStack,
	}, nil
}

// kernelHasOverlayOption reports whether the loaded overlay module knows
// the option; passing an unknown option makes every mount fail.
func kernelHasOverlayOption(name string) bool {
	_, err := os.Stat("/sys/module/overlay/parameters/" + name)
	return err == nil
}

// Stat returns the info of an active or committed snapshot by key or name.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	var info snapshots.Info
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes the labels of a snapshot (the only mutable fields).
// LabelRemote belongs to the snapshotter: an update that would drop it from
// a remote layer keeps it, or Restore would forget the layer.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	var updated snapshots.Info
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, before, _, err := storage.GetInfo(ctx, info.Name)
		if err != nil {
			return err
		}
		if updated, err = storage.UpdateInfo(ctx, info, fieldpaths...); err != nil {
			return err
		}
		if !isRemote(before) || isRemote(updated) {
			return nil
		}
		keep := snapshots.Info{Name: info.Name, Labels: map[string]string{LabelRemote: before.Labels[LabelRemote]}}
		updated, err = storage.UpdateInfo(ctx, keep, "labels."+LabelRemote)
		return err
	})
	return updated, err
}

// Walk calls fn for every snapshot matching all the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Usage reports the disk used by a snapshot. For an active snapshot it walks
// the upperdir, which may take a while; for a committed one it returns what
// was recorded at commit (zero for remote layers, whose bytes live in the
// daemon's cache and are accounted for there).
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return snapshots.Usage{}, err
	}
	if info.Kind != snapshots.KindActive {
		return usage, nil
	}
	du, err := fs.DiskUsage(ctx, s.fsPath(id))
	if err != nil {
		return snapshots.Usage{}, fmt.Errorf("usage of snapshot %s: %w", key, err)
	}
	return snapshots.Usage(du), nil
}

// Close releases the metastore. It does not unmount remote layers: running
// containers may still read them, and the daemon that owns the FUSE servers
// decides their fate (Restore picks them up again after a restart). Closing
// twice is not an error.
func (s *Snapshotter) Close() error {
	return s.ms.Close()
}

func (s *Snapshotter) snapshotsDir() string { return filepath.Join(s.root, "snapshots") }

func (s *Snapshotter) fsPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}

func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "work")
}

// isRemote reports whether a snapshot was committed as a remote layer.
func isRemote(info snapshots.Info) bool {
	return strings.TrimSpace(info.Labels[LabelRemote]) != ""
}
