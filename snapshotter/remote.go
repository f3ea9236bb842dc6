package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/stratafs/strata/internal/kmount"
)

// Labels of the remote-snapshot protocol. containerd sets the ref label on
// the unpacker's Prepare; CRI adds the others when it pulls an image.
const (
	LabelImageRef       = "containerd.io/snapshot/cri.image-ref"
	LabelLayerDigest    = "containerd.io/snapshot/cri.layer-digest"
	LabelImageLayers    = "containerd.io/snapshot/cri.image-layers"
	LabelManifestDigest = "containerd.io/snapshot/cri.manifest-digest"

	// LabelRemote marks a committed snapshot whose fs directory is a layer
	// mounted by RemoteLayers. It lives under containerd.io/snapshot/ so
	// that containerd's metadata layer passes it back on Update instead of
	// dropping it when it replaces a snapshot's labels.
	LabelRemote = "containerd.io/snapshot/strata.remote"
)

// ErrNotRemote is wrapped by RemoteLayers.Mount when a layer cannot be served
// lazily (unknown format, no registry access, ...). It is not a failure: the
// snapshotter falls back to the local path and containerd unpacks the layer.
var ErrNotRemote = errors.New("layer cannot be mounted remotely")

// RemoteLayers mounts layers lazily. The snapshotter calls it during Prepare
// when labels say the layer is remote. Implementations must be safe for
// concurrent use; calls for different dirs may overlap.
type RemoteLayers interface {
	// Mount makes the layer read-only at dir (an existing empty directory the
	// snapshotter owns). labels are the Prepare labels
	// (containerd.io/snapshot.ref = chain ID target, LabelImageRef,
	// LabelLayerDigest, LabelImageLayers, LabelManifestDigest). It returns an
	// error wrapping ErrNotRemote when this layer cannot be served lazily;
	// the snapshotter then falls back to the ordinary local path. On any
	// error nothing must be left mounted or written at dir.
	Mount(ctx context.Context, dir string, labels map[string]string) error
	// Unmount releases what Mount did at dir. It may be called for a dir
	// whose mount has already gone (after a daemon restart).
	Unmount(ctx context.Context, dir string) error
	// Check reports whether the layer mounted at dir is still healthy (used on
	// restore); an error means it must be mounted again.
	Check(ctx context.Context, dir string, labels map[string]string) error
}

// RemoteRecorder is a RemoteLayers that can record which files a container
// opens in its image's remote layers (LabelRecord). Prepare calls Record
// for an active snapshot whose labels ask for it, with its nearest remote
// parent (RecordedParent);
// Remove calls StopRecording for every snapshot it removes. Errors of
// Record are logged: the container runs unrecorded.
type RemoteRecorder interface {
	Record(ctx context.Context, key string, remote RecordedParent, labels map[string]string) error
	StopRecording(ctx context.Context, key string)
}

// RecordedParent is the nearest remote parent of a recorded container's
// snapshot: its labels (which name the image whose pull committed it: a
// layer shared by several images names the first) and how many layers lie
// above it in the container's stack, which tells whether that image is the
// container's.
type RecordedParent struct {
	Labels map[string]string
	Above  int
}

// startRecording offers the new active snapshot key to the recorder when
// its labels ask for it.
func (s *Snapshotter) startRecording(ctx context.Context, key, parent string, labels map[string]string) {
	rr, ok := s.remote.(RemoteRecorder)
	if _, asked := labels[LabelRecord]; !ok || !asked {
		return
	}
	var rp RecordedParent
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		for p := parent; p != "" && rp.Labels == nil; {
			_, info, _, err := storage.GetInfo(ctx, p)
			if err != nil {
				return err
			}
			if isRemote(info) {
				rp.Labels = info.Labels
			} else {
				rp.Above++
			}
			p = info.Parent
		}
		return nil
	})
	if err == nil && rp.Labels == nil {
		err = errors.New("none of its parents is a lazily mounted layer")
	}
	if err == nil {
		err = rr.Record(ctx, key, rp, labels)
	}
	if err != nil {
		s.log.WarnContext(ctx, "not recording what the container opens", "key", key, "error", err)
	}
}

// prepareRemote runs the remote-snapshot protocol for one Prepare: see the
// package documentation.
func (s *Snapshotter) prepareRemote(ctx context.Context, key, parent, target string, labels map[string]string, opts []snapshots.Opt) ([]mount.Mount, error) {
	name := RemoteName(target, parent)
	if _, err := s.Stat(ctx, name); err == nil {
		return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	} else if !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("prepare %s: target %s: %w", key, target, err)
	}
	sn, err := s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
	if err != nil {
		return nil, err
	}
	dir := s.fsPath(sn.ID)
	log := s.log.With("key", key, "target", target, "dir", dir)
	if err := s.remote.Mount(ctx, dir, labels); err != nil {
		if errors.Is(err, ErrNotRemote) {
			log.InfoContext(ctx, "layer is not remote, unpacking locally", "reason", err)
		} else {
			log.WarnContext(ctx, "remote layer mount failed, unpacking locally", "error", err)
		}
		// containerd will write the layer into dir, so it must be exactly
		// what a fresh snapshot has: empty and not a mountpoint.
		if err := checkPristine(dir); err != nil {
			return nil, errors.Join(fmt.Errorf("prepare %s: remote mount left %w", key, err), s.Remove(ctx, key))
		}
		return s.mounts(sn)
	}
	err = s.commitRemote(ctx, key, name, labels)
	if err == nil {
		log.InfoContext(ctx, "remote layer mounted")
		return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	}
	// Nothing may keep key half-remote: release the mount and the key.
	// AlreadyExists means a concurrent Prepare committed the same layer
	// first, which is success for the caller too.
	if rerr := s.Remove(ctx, key); rerr != nil {
		log.WarnContext(ctx, "cannot remove uncommitted remote snapshot", "error", rerr)
	}
	if errdefs.IsAlreadyExists(err) {
		return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	}
	return nil, fmt.Errorf("prepare %s: commit remote layer: %w", key, err)
}

// commitRemote commits a remotely mounted snapshot under name. Usage is
// left at zero: walking the mount would fetch every layer file, which is
// what lazy mounting avoids.
func (s *Snapshotter) commitRemote(ctx context.Context, key, name string, labels map[string]string) error {
	committed := maps.Clone(labels)
	committed[LabelRemote] = "true"
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, err := storage.CommitActive(ctx, key, name, snapshots.Usage{}, snapshots.WithLabels(committed))
		return err
	})
}

// RemoteName is the name a remote layer of chain ID target is committed
// under above parent: target itself for a bottom layer, else target and
// its parent's name. containerd finds the snapshot by its target label
// and its parent, not by its name, and the same chain ID above different
// parents is a snapshot for each: above the locally unpacked layers of the
// same image pulled into two namespaces (each namespace's own), a layer
// named after its target alone was the first namespace's, which the
// second could never use ("target snapshot in backend: not found"). Above
// remote parents, whose names this makes the same in every namespace, the
// snapshot is shared, as before.
func RemoteName(target, parent string) string {
	if parent == "" {
		return target
	}
	return target + "@" + digest.FromString(parent).Encoded()[:16]
}

// checkPristine reports an error unless dir is an empty directory that is
// not a mountpoint.
func checkPristine(dir string) error {
	if kmount.IsMountpoint(dir) {
		return fmt.Errorf("%s: %w", dir, ErrStillMounted)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) != 0 {
		return fmt.Errorf("%d entries in %s", len(entries), dir)
	}
	return nil
}
