package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"golang.org/x/sync/singleflight"

	"github.com/stratafs/strata/fs"
	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/snapshotter"
)

// snapshotLayers serves snapshotter.RemoteLayers from the daemon's layer
// pool: each remote snapshot directory is a read-only bind mount of the
// pool's FUSE mount of that layer, so a layer used by several images (with
// different chain IDs) is still mounted, fetched and cached once.
type snapshotLayers struct {
	d *Daemon
	// describe says which layer a snapshot's labels name, where it lives
	// and how to reach it.
	describe func(ctx context.Context, labels map[string]string) (name.Repository, remote.Layer, []remote.Option, error)
	// manifests dedups concurrent manifest lookups: containerd's unpacker
	// prepares all layers of an image at once, and they share one manifest.
	// imports does the same for lookups of an image's layer indexes.
	manifests, imports singleflight.Group
	// whole fetches a layer that cannot be read lazily whole and serves it
	// from the store (writable mounts), instead of leaving it to
	// containerd's unpack (containerd's snapshots). Those layers are
	// Strata's own, not a containerd client's: metricContainerdLayers
	// does not count them.
	whole bool

	mu    sync.Mutex
	binds map[string]digest.Digest // snapshot dir → layer held in the pool
	// recordings are the containers recording what they open, by their
	// active snapshot's key (snapshotter.LabelRecord).
	recordings map[string]snapshotRecording
}

var _ snapshotter.RemoteLayers = (*snapshotLayers)(nil)

// metricContainerdLayers counts the layers containerd's clients asked to
// mount lazily, by the label set that named them and what came of it.
// The image references are in `strata ls` (GET /v1/snapshots), not in a
// label: one series per image would grow without bound.
var metricContainerdLayers = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "strata_containerd_layers_total",
	Help: "Layers containerd clients asked for, by label set (client: cri, stargz, or none when no image labels came) " +
		"and result (lazy: mounted, never downloaded; unpacked: not lazily readable, left to the client; failed: an error, left to the client).",
}, []string{"client", "result"})

// newSnapshotLayers serves containerd's snapshots: layers are named by the
// CRI or stargz labels and described by their image's manifest.
func newSnapshotLayers(d *Daemon) *snapshotLayers {
	s := &snapshotLayers{d: d, binds: map[string]digest.Digest{}}
	s.describe = s.describeFromManifest
	return s
}

// Mount implements snapshotter.RemoteLayers. Layers that cannot be mounted
// lazily (fs.ErrNotLazy: plain zstd, and plain gzip unless its index was
// pushed next to the image, see 'strata index') are reported as
// snapshotter.ErrNotRemote so containerd unpacks them.
func (s *snapshotLayers) Mount(ctx context.Context, dir string, labels map[string]string) (err error) {
	client := "none"
	if t, perr := snapshotter.ParseRemoteLabels(labels); perr == nil {
		client = t.Client
	}
	defer func() {
		if s.whole {
			return // a writable mount's or build step's layer
		}
		result := "lazy"
		switch {
		case errors.Is(err, snapshotter.ErrNotRemote):
			result = "unpacked"
		case err != nil:
			result = "failed"
		}
		metricContainerdLayers.WithLabelValues(client, result).Inc()
	}()
	repo, layer, opts, err := s.describe(ctx, labels)
	if err != nil {
		return err
	}
	acquire := s.d.pool.Acquire
	if s.whole {
		acquire = s.d.pool.AcquireWhole
	}
	src, err := acquire(ctx, repo, layer, opts...)
	if errors.Is(err, fs.ErrNotLazy) {
		return fmt.Errorf("layer %s: %w: %w", layer.Digest, snapshotter.ErrNotRemote, err)
	}
	if err != nil {
		return fmt.Errorf("layer %s: %w", layer.Digest, err)
	}
	if err := kmount.BindReadOnly(src, dir); err != nil {
		s.d.pool.Release(layer.Digest)
		return fmt.Errorf("layer %s: %w", layer.Digest, err)
	}
	s.mu.Lock()
	s.binds[filepath.Clean(dir)] = layer.Digest
	s.mu.Unlock()
	slog.InfoContext(ctx, "snapshot layer mounted", "layer", layer.Digest, "dir", dir)
	return nil
}

// Unmount implements snapshotter.RemoteLayers. The bind goes first: the
// pool waits for the FUSE server to end, which it cannot while a bind still
// holds the connection.
func (s *snapshotLayers) Unmount(ctx context.Context, dir string) error {
	dir = filepath.Clean(dir)
	s.mu.Lock()
	d, ok := s.binds[dir]
	delete(s.binds, dir)
	s.mu.Unlock()
	if err := kmount.Unmount(dir); err != nil {
		if ok {
			s.mu.Lock()
			s.binds[dir] = d
			s.mu.Unlock()
		}
		return err
	}
	if !ok {
		// Mounted by an earlier daemon: nothing is held in this pool.
		return nil
	}
	return s.d.pool.Release(d)
}

// Check implements snapshotter.RemoteLayers: dir must be a mount this
// daemon made and must answer. A bind left by a daemon that died answers
// ENOTCONN and is not in binds.
func (s *snapshotLayers) Check(ctx context.Context, dir string, labels map[string]string) error {
	dir = filepath.Clean(dir)
	s.mu.Lock()
	_, ok := s.binds[dir]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s: not mounted by this daemon: %w", dir, errdefs.ErrNotFound)
	}
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if !kmount.IsMountpoint(dir) {
		return fmt.Errorf("%s: not a mountpoint: %w", dir, errdefs.ErrNotFound)
	}
	return nil
}

// closeAll unmounts every bind, before the pool unmounts the layers.
func (s *snapshotLayers) closeAll(ctx context.Context) error {
	s.mu.Lock()
	dirs := make([]string, 0, len(s.binds))
	for dir := range s.binds {
		dirs = append(dirs, dir)
	}
	s.mu.Unlock()
	return inParallel(len(dirs), func(i int) error { return s.Unmount(ctx, dirs[i]) })
}

// describeFromManifest turns containerd's Prepare labels into the layer's
// repository and descriptor, taken from the (verified) image manifest:
// labels say which layer, only the manifest says its size and TOC digest.
func (s *snapshotLayers) describeFromManifest(ctx context.Context, labels map[string]string) (name.Repository, remote.Layer, []remote.Option, error) {
	t, err := snapshotter.ParseRemoteLabels(labels)
	if err != nil {
		return name.Repository{}, remote.Layer{}, nil, fmt.Errorf("%w: %w", snapshotter.ErrNotRemote, err)
	}
	ref, layerDigest := t.Ref, t.Layer
	r, err := remote.ParseReference(ref, s.d.remoteOpts...)
	if err != nil {
		return name.Repository{}, remote.Layer{}, nil, fmt.Errorf("%s label %q: %w: %w", t.Client, ref, snapshotter.ErrNotRemote, err)
	}
	m, image, err := s.manifest(ctx, r, t.Manifest)
	if err != nil {
		return name.Repository{}, remote.Layer{}, nil, err
	}
	all := make([]remote.Layer, 0, len(m.Layers))
	for _, l := range m.Layers {
		all = append(all, remote.Layer{Digest: l.Digest, Size: l.Size, MediaType: types.MediaType(l.MediaType), Annotations: l.Annotations, URLs: l.URLs})
	}
	for _, l := range all {
		if l.Digest == layerDigest {
			// containerd prepares an image's layers one after another:
			// start indexing the others now, so their turns find it done.
			s.d.pool.Prefetch(r.Context(), all)
			s.importIndexes(ctx, r.Context(), image, all, l)
			return r.Context(), l, nil, nil
		}
	}
	if t.Manifest == "" {
		// Named by tag only (BuildKit, nerdctl): the tag may have moved
		// since the client resolved it; the client still has the layer.
		return name.Repository{}, remote.Layer{}, nil, fmt.Errorf("layer %s is not in the manifest %s names now: %w",
			layerDigest, ref, snapshotter.ErrNotRemote)
	}
	return name.Repository{}, remote.Layer{}, nil, fmt.Errorf("layer %s is not in the manifest of %s: %w",
		layerDigest, ref, errdefs.ErrNotFound)
}

// importIndexes imports, once per image at a time, the pushed indexes of
// the image's plain gzip and tar layers (see images.importLayerIndexes),
// when layer is one: containerd's layers then mount lazily instead of
// being unpacked by containerd.
func (s *snapshotLayers) importIndexes(ctx context.Context, repo name.Repository, image digest.Digest, all []remote.Layer, layer remote.Layer) {
	ls := make([]Layer, len(all))
	for i, l := range all {
		ls[i] = layerOf(l)
	}
	if !s.d.images.needsIndex(repo, Layer{Digest: layer.Digest, MediaType: string(layer.MediaType), Annotations: layer.Annotations}) {
		return
	}
	_, _, _ = s.imports.Do(image.String(), func() (any, error) {
		s.d.images.importLayerIndexes(context.WithoutCancel(ctx), repo, false, image, ls)
		return nil, nil
	})
}

// manifest returns the image manifest and its digest: from the store when
// it holds the digest (no network after a restart), else from the
// registry, then kept. Without a manifest digest label, a reference by
// digest is looked for in the store too, and a tag is resolved.
func (s *snapshotLayers) manifest(ctx context.Context, ref name.Reference, want digest.Digest) (*ocispec.Manifest, digest.Digest, error) {
	if want != "" {
		if raw, err := s.d.store.Blobs.Get(want); err == nil {
			m, err := parseManifest(raw)
			return m, want, err
		}
	}
	// A reference by digest (BuildKit's and nerdctl's labels pin one)
	// names the manifest the store may hold already: a restart with the
	// registry away needs no lookup. (An index's digest is resolved.)
	if d, ok := ref.(name.Digest); ok && want == "" {
		if dg, err := digest.Parse(d.DigestStr()); err == nil {
			if raw, err := s.d.store.Blobs.Get(dg); err == nil {
				if m, err := parseManifest(raw); err == nil {
					return m, dg, nil
				}
			}
		}
	}
	key := ref.String() + "@" + want.String()
	v, err, _ := s.manifests.Do(key, func() (any, error) {
		// The lookup serves every waiter, so it must not die with the
		// first caller's context.
		ctx := context.WithoutCancel(ctx)
		if want != "" {
			// Only the layer list is needed: skip the config's round trip.
			_, raw, err := remote.Layers(ctx, ref.Context(), want, s.d.remoteOpts...)
			if err != nil {
				return nil, err
			}
			if err := s.d.store.Blobs.Put(want, raw); err != nil {
				return nil, fmt.Errorf("storing manifest: %w", err)
			}
			return raw, nil
		}
		img, err := remote.Resolve(ctx, ref.String(), s.d.remoteOpts...)
		if err != nil {
			return nil, err
		}
		if err := s.d.store.Blobs.Put(img.Digest, img.Manifest); err != nil {
			return nil, fmt.Errorf("storing manifest: %w", err)
		}
		return img.Manifest, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("manifest of %s: %w", ref, err)
	}
	raw := v.([]byte)
	m, err := parseManifest(raw)
	return m, digest.FromBytes(raw), err
}

// parseManifest reads the layer list of an OCI or Docker schema 2 image
// manifest (the two share their JSON shape); remote.Resolve has already
// rejected other media types.
func parseManifest(raw []byte) (*ocispec.Manifest, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if len(m.Layers) == 0 {
		return nil, fmt.Errorf("manifest has no layers: %w", errdefs.ErrInvalidArgument)
	}
	return &m, nil
}

var _ snapshotter.RemoteRecorder = (*snapshotLayers)(nil)

// snapshotRecording is a containerd container's recording (see
// snapshotter.LabelRecord): the image it runs, as a mount would describe
// it, and the recording.
type snapshotRecording struct {
	m   *Mount
	rec *recording
}

// Record implements snapshotter.RemoteRecorder: the container of the
// active snapshot key records what it opens in its image's layers, which
// its nearest remote parent's labels name, as `strata mount --record`
// would. That parent's image is the container's only when the layers above
// the parent in the container's stack are that image's last ones: a layer
// shared by several images names the image whose pull committed it first,
// and a list recorded for another image would be kept, and pushed, for it.
func (s *snapshotLayers) Record(ctx context.Context, key string, parent snapshotter.RecordedParent, labels map[string]string) error {
	t, err := snapshotter.ParseRemoteLabels(parent.Labels)
	if err != nil {
		return err
	}
	var d time.Duration
	if v := strings.TrimSpace(labels[snapshotter.LabelRecord]); v != "" && v != "true" {
		if d, err = time.ParseDuration(v); err != nil || d <= 0 {
			return fmt.Errorf("label %s=%q: not a positive duration", snapshotter.LabelRecord, v)
		}
	}
	r, err := remote.ParseReference(t.Ref, s.d.remoteOpts...)
	if err != nil {
		return err
	}
	man, image, err := s.manifest(ctx, r, t.Manifest)
	if err != nil {
		return err
	}
	if i := len(man.Layers) - 1 - parent.Above; i < 0 || man.Layers[i].Digest != t.Layer {
		return fmt.Errorf("cannot tell the container's image: its layer %s is shared with %s, whose layers above it are not the container's", t.Layer, t.Ref)
	}
	m := &Mount{Dir: "containerd snapshot " + key, Ref: t.Ref, Repo: r.Context().String(), Digest: image}
	for _, l := range man.Layers {
		m.Layers = append(m.Layers, Layer{Digest: l.Digest, Size: l.Size, MediaType: l.MediaType, Annotations: l.Annotations, URLs: l.URLs})
	}
	rec := s.d.images.startRecording(m, MountRequest{RecordFor: d, RecordPush: labels[snapshotter.LabelRecordPush] == "true"})
	s.mu.Lock()
	if s.recordings == nil {
		s.recordings = map[string]snapshotRecording{}
	}
	old, had := s.recordings[key]
	s.recordings[key] = snapshotRecording{m: m, rec: rec}
	s.mu.Unlock()
	if had {
		_ = s.d.images.finishRecording(ctx, old.m, old.rec)
	}
	return nil
}

// StopRecording implements snapshotter.RemoteRecorder: the recording of
// key, if any, ends and its list is kept (and pushed when asked).
func (s *snapshotLayers) StopRecording(ctx context.Context, key string) {
	s.mu.Lock()
	r, ok := s.recordings[key]
	delete(s.recordings, key)
	s.mu.Unlock()
	if ok {
		_ = s.d.images.finishRecording(context.WithoutCancel(ctx), r.m, r.rec)
	}
}
