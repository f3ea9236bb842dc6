package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/awslabs/soci-snapshotter/config"
	socifs "github.com/awslabs/soci-snapshotter/fs"
	"github.com/awslabs/soci-snapshotter/fs/source"
	"github.com/awslabs/soci-snapshotter/metadata"
	"github.com/awslabs/soci-snapshotter/service"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	ctdsnapshotters "github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Labels containerd and soci's label handler set on a remote snapshot;
// soci's package keeps these two unexported.
const (
	labelSnapshotRef     = "containerd.io/snapshot.ref"
	labelImageLayersSize = "containerd.io/snapshot/remote/image.layers.size"
	namespace            = "default"
	viewKey              = "soci-bench-view"
)

// run mounts ref at target through soci's snapshotter and serves until ctx
// ends, then unmounts target and closes the snapshotter (which unmounts
// the layers).
func run(ctx context.Context, root, ref, target string) error {
	img, err := resolveImage(ctx, ref)
	if err != nil {
		return err
	}
	sn, closeSn, err := newSnapshotter(root)
	if err != nil {
		return err
	}
	defer func() {
		if err := closeSn(); err != nil {
			fmt.Fprintln(os.Stderr, "soci-bench: close snapshotter:", err)
		}
	}()
	nctx := namespaces.WithNamespace(ctx, namespace)
	chain := identity.ChainIDs(img.diffIDs)
	parent := ""
	for i := range img.layers {
		if err := prepareLayer(nctx, sn, img, ref, i, chain[i].String(), parent); err != nil {
			return err
		}
		parent = chain[i].String()
	}
	mounts, err := sn.View(nctx, viewKey, parent)
	if err != nil {
		return fmt.Errorf("view: %w", err)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if err := mount.All(mounts, target); err != nil {
		return fmt.Errorf("mount %v: %w", mounts, err)
	}
	defer func() {
		if err := mount.UnmountAll(target, unix.MNT_DETACH); err != nil {
			fmt.Fprintln(os.Stderr, "soci-bench: unmount:", err)
		}
	}()
	fmt.Println("ready")
	<-ctx.Done()
	return nil
}

// newSnapshotter is soci-snapshotter-grpc's snapshotter with its default
// configuration (content store "soci" under root, background fetch on),
// less prometheus. Its lifetime is the process's, not one call's. Its
// close func closes it (unmounting every layer), then its metadata store.
func newSnapshotter(root string) (snapshots.Snapshotter, func() error, error) {
	cfg := config.NewConfig()
	if cfg == nil {
		return nil, nil, errors.New("soci's default config does not parse")
	}
	cfg.NoPrometheus = true
	cfg.ServiceConfig.FSConfig.NoPrometheus = true
	if err := os.MkdirAll(filepath.Join(root, "snapshotter"), 0o700); err != nil {
		return nil, nil, err
	}
	if cfg.MetadataStore != "db" {
		return nil, nil, fmt.Errorf("metadata store %q: only soci's default, db, is set up here", cfg.MetadataStore)
	}
	// soci-snapshotter-grpc's main opens the metadata store, not the
	// service: its default is one bbolt database under the root.
	db, err := bolt.Open(filepath.Join(root, "metadata.db"), 0o600, &bolt.Options{
		NoFreelistSync: true, InitialMmapSize: 64 << 20, FreelistType: bolt.FreelistMapType, NoSync: cfg.MetadataDBNoSync})
	if err != nil {
		return nil, nil, err
	}
	var mdOpts []metadata.Option
	if cfg.MetadataInsertionChunkSize > 0 {
		mdOpts = append(mdOpts, metadata.WithInsertionChunkSize(cfg.MetadataInsertionChunkSize))
	}
	store := func(sr *io.SectionReader, toc ztoc.TOC, opts ...metadata.Option) (metadata.Reader, error) {
		return metadata.NewReader(db, sr, toc, slices.Concat(mdOpts, opts)...)
	}
	sn, err := service.NewSociSnapshotterService(namespaces.WithNamespace(context.Background(), namespace), root, &cfg.ServiceConfig,
		service.WithFilesystemOptions(socifs.WithMetadataStore(store)))
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("soci snapshotter: %w", err), db.Close())
	}
	return sn, func() error { return errors.Join(sn.Close(), db.Close()) }, nil
}

// prepareLayer does what containerd's unpacker does for layer i of img on
// a remote snapshotter: Prepare with the layer's labels as CRI and soci's
// label handler set them. ErrAlreadyExists means the snapshotter made the
// snapshot itself (a FUSE mount of a layer with a zTOC, or a layer without
// one that it fetched and unpacked); mounts mean it left the layer to the
// runtime, which then applies the layer into them and commits.
func prepareLayer(ctx context.Context, sn snapshots.Snapshotter, img *image, ref string, i int, chainID, parent string) error {
	l := img.layers[i]
	var digests, sizes []string
	for _, d := range img.layers[i:] {
		digests = append(digests, d.Digest.String())
		sizes = append(sizes, strconv.FormatInt(d.Size, 10))
	}
	labels := map[string]string{
		labelSnapshotRef:                          chainID,
		ctdsnapshotters.TargetRefLabel:            ref,
		ctdsnapshotters.TargetManifestDigestLabel: img.manifest.Digest.String(),
		ctdsnapshotters.TargetLayerDigestLabel:    l.Digest.String(),
		ctdsnapshotters.TargetImageLayersLabel:    strings.Join(digests, ","),
		source.TargetSizeLabel:                    strconv.FormatInt(l.Size, 10),
		labelImageLayersSize:                      strings.Join(sizes, ","),
	}
	key := fmt.Sprintf("extract-%d-%s", i, chainID)
	mounts, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("prepare layer %s: %w", l.Digest, err)
	}
	err = mount.WithTempMount(ctx, mounts, func(dir string) error {
		rc, err := img.fetcher.Fetch(ctx, l)
		if err != nil {
			return err
		}
		defer rc.Close()
		ds, err := compression.DecompressStream(rc)
		if err != nil {
			return err
		}
		defer ds.Close()
		_, err = archive.Apply(ctx, dir, ds)
		return err
	})
	if err != nil {
		_ = sn.Remove(ctx, key)
		return fmt.Errorf("apply layer %s: %w", l.Digest, err)
	}
	if err := sn.Commit(ctx, chainID, key, snapshots.WithLabels(map[string]string{labelSnapshotRef: chainID})); err != nil {
		return fmt.Errorf("commit layer %s: %w", l.Digest, err)
	}
	return nil
}
