package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"
)

// sociTagSuffix names the converted image: REF's tag + "-soci".
const sociTagSuffix = "-soci"

// buildIndex pulls ref into a containerd content store under root, builds
// its SOCI index with soci's IndexBuilder.Convert (soci's defaults: 4 MiB
// spans, no zTOC for layers under 10 MiB, index manifest v2) and pushes
// the converted image to ref's repository as tag+"-soci". It returns that
// reference.
func buildIndex(ctx context.Context, root, ref string) (string, error) {
	spec, err := reference.Parse(ref)
	if err != nil {
		return "", err
	}
	if spec.Object == "" || spec.Digest() != "" {
		return "", fmt.Errorf("%s: want REPO:TAG", ref)
	}
	dst := spec.Locator + ":" + spec.Object + sociTagSuffix

	cs, err := local.NewStore(filepath.Join(root, "containerd-content"))
	if err != nil {
		return "", err
	}
	r := newResolver()
	name, desc, err := r.Resolve(ctx, ref)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", ref, err)
	}
	f, err := r.Fetcher(ctx, name)
	if err != nil {
		return "", err
	}
	// What `nerdctl pull` (or `ctr pull`) leaves in containerd's content
	// store before `soci convert`: this platform's manifest, config and layers.
	h := images.Handlers(remotes.FetchHandler(cs, f), images.FilterPlatforms(images.ChildrenHandler(cs), platforms.Default()))
	if err := images.Dispatch(ctx, h, nil, desc); err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}

	blobs, err := store.NewSociStore(filepath.Join(root, "soci-content"))
	if err != nil {
		return "", err
	}
	db, err := soci.NewDB(soci.ArtifactsDbPath(root))
	if err != nil {
		return "", err
	}
	b, err := soci.NewIndexBuilder(cs, blobs, soci.WithArtifactsDb(db))
	if err != nil {
		return "", err
	}
	conv, err := b.Convert(ctx, images.Image{Name: name, Target: desc})
	if err != nil {
		return "", fmt.Errorf("soci convert %s: %w", ref, err)
	}

	repo, err := remote.NewRepository(spec.Locator)
	if err != nil {
		return "", err
	}
	repo.PlainHTTP = true
	// The converted image's new objects are in soci's store, the config
	// and layers in containerd's; the registry already has the layers,
	// which CopyGraph skips.
	if err := oras.CopyGraph(ctx, unionStore{blobs, cs}, repo, *conv, oras.DefaultCopyGraphOptions); err != nil {
		return "", fmt.Errorf("push %s: %w", dst, err)
	}
	if err := repo.Tag(ctx, *conv, spec.Object+sociTagSuffix); err != nil {
		return "", fmt.Errorf("tag %s: %w", dst, err)
	}
	return dst, nil
}

// unionStore reads from soci's store, then from containerd's.
type unionStore struct {
	soci *store.SociStore
	ctd  content.Store
}

func (u unionStore) Exists(ctx context.Context, d ocispec.Descriptor) (bool, error) {
	if ok, err := u.soci.Exists(ctx, d); ok || err != nil {
		return ok, err
	}
	if _, err := u.ctd.Info(ctx, d.Digest); err != nil {
		return false, nil
	}
	return true, nil
}

func (u unionStore) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if ok, _ := u.soci.Exists(ctx, d); ok {
		return u.soci.Fetch(ctx, d)
	}
	ra, err := u.ctd.ReaderAt(ctx, d)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{content.NewReader(ra), ra}, nil
}
