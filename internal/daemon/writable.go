package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/snapshotter"
)

// labelLayer, on a layer snapshot of the writable mounts' snapshotter,
// describes the layer it serves (layerLabel as JSON), so the layer can be
// mounted again after a restart without the image's manifest.
const labelLayer = "containerd.io/snapshot/strata.layer"

type layerLabel struct {
	Repo        string            `json:"repo"`
	Insecure    bool              `json:"insecure,omitempty"`
	Digest      digest.Digest     `json:"digest"`
	Size        int64             `json:"size"`
	MediaType   string            `json:"mediaType"`
	Annotations map[string]string `json:"annotations,omitempty"`
	URLs        []string          `json:"urls,omitempty"`
}

// writableDir holds the writable mounts' snapshotter: its own metastore and
// snapshot directories. containerd never sees it, so containerd's garbage
// collector, which removes the backend snapshots it does not know, can
// never take a writable mount's changes.
func (c Config) writableDir() string { return filepath.Join(c.Root, "rw") }

// writable serves writable mounts. Each is an active snapshot, handled by
// the same snapshotter code as containerd's: the image's layers are
// committed remote snapshots (named by chain ID, shared by every writable
// mount of the same layers), and the mount's upper and work directories
// belong to its active snapshot.
type writable struct {
	d      *Daemon
	sn     *snapshotter.Snapshotter
	layers *snapshotLayers
}

// openWritable opens the writable mounts' snapshotter and mounts again the
// layers its snapshots use.
func openWritable(ctx context.Context, d *Daemon) (*writable, error) {
	w := &writable{d: d, layers: &snapshotLayers{d: d, binds: map[string]digest.Digest{}, whole: true}}
	w.layers.describe = w.describe
	sn, err := snapshotter.New(d.cfg.writableDir(),
		snapshotter.WithRemoteLayers(w.layers),
		snapshotter.WithWholeUpper(),
		snapshotter.WithFixups(d.fixups),
		snapshotter.WithRootFromStack(),
		snapshotter.WithLogger(slog.Default().With("component", "writable")))
	if err != nil {
		return nil, fmt.Errorf("writable mounts: %w", err)
	}
	w.sn = sn
	w.dropLeftovers(ctx)
	if err := sn.Restore(ctx); err != nil {
		// The mounts whose layers did restore still work; the others
		// are retried at the next start.
		slog.ErrorContext(ctx, "restoring writable mounts' layers", "error", err)
	}
	return w, nil
}

// dropLeftovers removes what a daemon that died in the middle of an
// operation left: views of lower layers and layer snapshots never
// committed. Active snapshots of mounts are never touched here.
func (w *writable) dropLeftovers(ctx context.Context) {
	var keys []string
	w.sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindView || (info.Kind == snapshots.KindActive && strings.HasPrefix(info.Name, "extract-")) {
			keys = append(keys, info.Name)
		}
		return nil
	})
	for _, key := range keys {
		if err := w.sn.Remove(ctx, key); err != nil {
			slog.WarnContext(ctx, "removing a leftover snapshot", "key", key, "error", err)
		}
	}
	if err := w.sn.Cleanup(ctx); err != nil {
		slog.WarnContext(ctx, "cleaning up snapshot directories", "error", err)
	}
}

// close unmounts the layer binds and closes the metastore. Snapshots and
// their upper directories stay for the next start.
func (w *writable) close(ctx context.Context) error {
	return errors.Join(w.layers.closeAll(ctx), w.sn.Close())
}

// describe reads the layer from its labelLayer label.
func (w *writable) describe(ctx context.Context, labels map[string]string) (name.Repository, remote.Layer, []remote.Option, error) {
	var l layerLabel
	if err := json.Unmarshal([]byte(labels[labelLayer]), &l); err != nil {
		return name.Repository{}, remote.Layer{}, nil, fmt.Errorf("label %s: %w: %v", labelLayer, errdefs.ErrInvalidArgument, err)
	}
	var nameOpts []name.Option
	if l.Insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	repo, err := name.NewRepository(l.Repo, nameOpts...)
	if err != nil {
		return name.Repository{}, remote.Layer{}, nil, fmt.Errorf("label %s: %w: %v", labelLayer, errdefs.ErrInvalidArgument, err)
	}
	layer := Layer{Digest: l.Digest, Size: l.Size, MediaType: l.MediaType, Annotations: l.Annotations, URLs: l.URLs}.remote()
	return repo, layer, w.d.images.remoteOptions(l.Insecure, repo.RegistryStr()), nil
}

// newSnapshotKey names a new writable mount's active snapshot.
func newSnapshotKey() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "rw-" + hex.EncodeToString(b)
}

// attach mounts m's writable overlay at m.Dir: the layer snapshots first
// (existing ones are reused), then the active snapshot m.Snapshot, which is
// created when create is set and must exist otherwise (a restored mount
// whose changes are gone is an error, never an empty new layer). The
// caller holds the layers in the pool, so preparing them only binds.
// With adopt, the overlay already at m.Dir (taken over from the previous
// daemon, on the same upper directory) is kept: mounting a second one on
// that upper directory is what overlayfs warns loses data.
func (w *writable) attach(ctx context.Context, m *Mount, create, adopt bool) error {
	parent, err := w.prepareLayers(ctx, m)
	if err != nil {
		return err
	}
	mounts, err := w.sn.Mounts(ctx, m.Snapshot)
	if errdefs.IsNotFound(err) && create {
		labels := map[string]string{"containerd.io/snapshot/strata.dir": m.Dir}
		mounts, err = w.sn.Prepare(ctx, m.Snapshot, parent, snapshots.WithLabels(labels))
	}
	if err != nil {
		return fmt.Errorf("writable layer of %s: %w", m.Dir, err)
	}
	if adopt {
		return nil
	}
	if err := mount.All(mounts, m.Dir); err != nil {
		return fmt.Errorf("mounting the writable overlay at %s: %w", m.Dir, err)
	}
	return nil
}

// prepareLayers makes sure every layer of m is a committed remote snapshot
// in the writable snapshotter, and returns the top one's name.
func (w *writable) prepareLayers(ctx context.Context, m *Mount) (string, error) {
	chain, err := chainIDs(m)
	if err != nil {
		return "", err
	}
	names, err := layerNames(m)
	if err != nil {
		return "", err
	}
	parent := ""
	for i, l := range m.Layers {
		label, err := json.Marshal(layerLabel{Repo: m.Repo, Insecure: m.Insecure, Digest: l.Digest, Size: l.Size, MediaType: l.MediaType, Annotations: l.Annotations, URLs: l.URLs})
		if err != nil {
			return "", err
		}
		target := chain[i].String()
		key := fmt.Sprintf("extract-%s %s", newSnapshotKey(), target)
		labels := map[string]string{snapshots.LabelSnapshotRef: target, labelLayer: string(label)}
		_, err = w.sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
		switch {
		case errdefs.IsAlreadyExists(err):
		case err == nil:
			// The layer could not be mounted lazily: the snapshotter
			// left an empty local snapshot for an unpack Strata does
			// not do here.
			rerr := w.sn.Remove(ctx, key)
			return "", errors.Join(fmt.Errorf("layer %d of %d (%s) could not be mounted lazily; see the daemon log", i+1, len(m.Layers), l.Digest), rerr)
		default:
			return "", fmt.Errorf("layer %d of %d: %w", i+1, len(m.Layers), err)
		}
		parent = names[i]
	}
	return parent, nil
}

// layerNames returns the names of m's layer snapshots, bottom to top, as
// prepareLayers makes them.
func layerNames(m *Mount) ([]string, error) {
	chain, err := chainIDs(m)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(chain))
	parent := ""
	for i, c := range chain {
		names[i] = snapshotter.RemoteName(c.String(), parent)
		parent = names[i]
	}
	return names, nil
}

// chainIDs returns the chain IDs of m's layers, bottom to top.
func chainIDs(m *Mount) ([]digest.Digest, error) {
	diffIDs := make([]digest.Digest, len(m.Layers))
	for i, l := range m.Layers {
		if l.DiffID == "" {
			return nil, fmt.Errorf("layer %d of %s has no diff ID in the mount record", i+1, m.Dir)
		}
		diffIDs[i] = l.DiffID
	}
	return identity.ChainIDs(diffIDs), nil
}

// remove deletes m's active snapshot, upper directory included, and then
// the layer snapshots no other writable mount uses. m must be unmounted.
func (w *writable) remove(ctx context.Context, m *Mount) error {
	// The top layer snapshot below it: the snapshot's own parent, or, when
	// the writable layer was never made, the name prepareLayers gives it.
	parent := ""
	if info, err := w.sn.Stat(ctx, m.Snapshot); err == nil {
		parent = info.Parent
	} else if names, err := layerNames(m); err == nil && len(names) > 0 {
		parent = names[len(names)-1]
	}
	if err := w.sn.Remove(ctx, m.Snapshot); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("removing the writable layer of %s: %w", m.Dir, err)
	}
	// The layer snapshots below it, top first, as the snapshotter keeps
	// them.
	for p := parent; p != ""; {
		info, err := w.sn.Stat(ctx, p)
		if err == nil {
			err = w.sn.Remove(ctx, p)
		}
		if errdefs.IsFailedPrecondition(err) {
			break // another mount builds on it, and on what is below it
		}
		if err != nil {
			if !errdefs.IsNotFound(err) {
				slog.WarnContext(ctx, "removing an unused layer snapshot", "snapshot", p, "error", err)
			}
			break
		}
		p = info.Parent
	}
	return nil
}

// lowerOf calls fn with a read-only view of m's layers, mounted for the
// length of the call, and m's upper directory.
func (w *writable) lowerOf(ctx context.Context, m *Mount, fn func(lower, upper string) error) error {
	upper, err := w.sn.UpperDir(ctx, m.Snapshot)
	if err != nil {
		return err
	}
	info, err := w.sn.Stat(ctx, m.Snapshot)
	if err != nil {
		return err
	}
	if info.Parent == "" {
		// An image without layers (a build FROM scratch): nothing below.
		return fn(w.d.emptyDir, upper)
	}
	return w.withLowerView(ctx, info.Parent, func(lower string) error {
		return fn(lower, upper)
	})
}

// changes lists what m's writable layer changed, from its upper directory,
// against a read-only view of its layers mounted for the purpose.
func (w *writable) changes(ctx context.Context, m *Mount, fn func(snapshotter.Change) error) error {
	return w.lowerOf(ctx, m, func(lower, upper string) error {
		return snapshotter.UpperChanges(ctx, lower, upper, fn)
	})
}

// withLowerView mounts the layers up to parent read-only in a temporary
// directory of the state root for the length of fn.
func (w *writable) withLowerView(ctx context.Context, parent string, fn func(dir string) error) error {
	key := "view-" + newSnapshotKey()
	mounts, err := w.sn.View(ctx, key, parent)
	if err != nil {
		return fmt.Errorf("view of the lower layers: %w", err)
	}
	defer func() {
		if err := w.sn.Remove(context.WithoutCancel(ctx), key); err != nil {
			slog.WarnContext(ctx, "removing a view of the lower layers", "key", key, "error", err)
		}
	}()
	viewsDir := filepath.Join(w.d.cfg.writableDir(), "views")
	if err := os.MkdirAll(viewsDir, 0o700); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(viewsDir, "")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := mount.All(mounts, dir); err != nil {
		return fmt.Errorf("mounting a view of the lower layers: %w", err)
	}
	defer func() {
		if err := kmount.Unmount(dir); err != nil {
			slog.WarnContext(ctx, "unmounting a view of the lower layers", "dir", dir, "error", err)
		}
	}()
	return fn(dir)
}
