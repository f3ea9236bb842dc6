package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"slices"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stratafs/strata/internal/commit"
	"github.com/stratafs/strata/internal/run"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/store"
)

// What a build needs from the daemon besides mounts, runs and commits:
// images resolved without mounting them, the empty image FROM scratch
// starts with, and pushes of images kept in the store.

// scratchRepo is the repository the empty image is filed under. The
// .invalid domain never resolves: nothing is ever fetched from it, since
// the image has no layers and what is built on it is kept in the store.
const scratchRepo = "strata.invalid/scratch"

// isScratchRepo reports whether repo is scratchRepo's: images built FROM
// scratch are only in the store, and their registry is never asked.
func isScratchRepo(repo name.Repository) bool {
	return repo.RegistryStr() == name.MustParseReference(scratchRepo).Context().RegistryStr()
}

// scratchPath is the PATH the empty image's config sets, as BuildKit's and
// buildah's do for FROM scratch.
const scratchPath = "PATH=" + run.DefaultPath

// resolveImage describes req.Ref and keeps its manifest and config in the
// store, so that REPO@DIGEST mounts without a registry round trip.
func (im *images) resolveImage(ctx context.Context, req ResolveRequest) (*Resolved, error) {
	var img *remote.Image
	var err error
	if req.Ref == "scratch" {
		img, err = im.scratch(req.Platform)
	} else {
		img, _, err = im.resolve(ctx, req.Ref, req.Platform, req.Insecure)
	}
	if err != nil {
		return nil, err
	}
	if err := im.d.store.Blobs.Put(img.Digest, img.Manifest); err != nil {
		return nil, fmt.Errorf("storing the manifest: %w", err)
	}
	if err := im.d.store.Blobs.Put(digest.FromBytes(img.Config), img.Config); err != nil {
		return nil, fmt.Errorf("storing the image config: %w", err)
	}
	return &Resolved{
		Ref: img.Repo.String() + "@" + img.Digest.String(), Repo: img.Repo.String(), Digest: img.Digest,
		Platform: img.Platform.String(), Config: json.RawMessage(img.Config),
	}, nil
}

// scratch makes the empty image: no layers, a config naming the platform
// and setting the default PATH.
func (im *images) scratch(platform string) (*remote.Image, error) {
	p := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if platform != "" {
		pp, err := ParsePlatform(platform)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errdefs.ErrInvalidArgument, err)
		}
		p = pp
	}
	config, err := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant},
		Config:   ocispec.ImageConfig{Env: []string{scratchPath}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{}},
	})
	if err != nil {
		return nil, err
	}
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers:    []ocispec.Descriptor{},
	})
	if err != nil {
		return nil, err
	}
	ref, err := name.NewDigest(scratchRepo + "@" + digest.FromBytes(manifest).String())
	if err != nil {
		return nil, err
	}
	return remote.ImageFromBytes(ref, manifest, config)
}

// push publishes an image kept in the store.
func (im *images) push(ctx context.Context, req PushRequest, progress func(format string, args ...any)) (*CommitResult, error) {
	if req.Ref == "" && req.OCILayout == "" {
		return nil, fmt.Errorf("nowhere to push to: give a reference or an OCI layout: %w", errdefs.ErrInvalidArgument)
	}
	src, img, err := im.storedImage(req.Image, req.SourceInsecure)
	if err != nil {
		return nil, err
	}
	c := &commitStep{im: im, req: CommitRequest{Ref: req.Ref, OCILayout: req.OCILayout, Insecure: req.Insecure}, progress: progress}
	target, err := c.target()
	if err != nil {
		return nil, err
	}
	base, err := im.storedBase(ctx, c, src.Context(), req.SourceInsecure, img.Manifest, img.Config)
	if err != nil {
		return nil, err
	}
	res := &CommitResult{}
	return res, c.publish(ctx, base.Image, base, target, res)
}

func (im *images) nameOptionsFor(insecure bool) []name.Option {
	if insecure {
		return []name.Option{name.Insecure}
	}
	return nil
}

// storedBase is the image whose manifest and config are given, kept in
// repo: its layers are read from the store when it holds them, else from
// repo's registry, and only when something needs their bytes.
func (im *images) storedBase(ctx context.Context, c *commitStep, repo name.Repository, insecure bool, manifest, config []byte) (*commit.Base, error) {
	ropts := c.registryOptions(ctx, repo.RegistryStr(), insecure)
	open := func(ctx context.Context, desc v1.Descriptor) (io.ReadCloser, error) {
		d := digest.Digest(desc.Digest.String())
		if f, _, err := im.d.store.Blobs.Open(d); err == nil {
			return &commit.LocalBlob{ReadCloser: store.VerifiedReader(f, d)}, nil
		}
		if len(desc.URLs) > 0 {
			// A foreign layer (only an OCI layout needs its bytes: a
			// push leaves it out): the registry, else its urls.
			br, err := remote.NewLayerReader(ctx, repo, remote.Layer{Digest: d, Size: desc.Size, MediaType: desc.MediaType, URLs: desc.URLs},
				append(slices.Clone(im.d.remoteOpts), im.remoteOptions(insecure, repo.RegistryStr())...)...)
			if err != nil {
				return nil, err
			}
			sr := io.NewSectionReader(br.ReaderAt(ctx), 0, desc.Size)
			return store.VerifiedReader(struct {
				io.Reader
				io.Closer
			}{sr, br}, d), nil
		}
		l, err := ggcrremote.Layer(repo.Digest(desc.Digest.String()), ropts...)
		if err != nil {
			return nil, err
		}
		return l.Compressed() // verified against the digest at EOF
	}
	return commit.NewBase(ctx, repo, manifest, config, open)
}

// amend makes a new image of the stored image req.Image with req's config
// and history entries and no new layer, keeps it and publishes it where
// req says.
func (im *images) amend(ctx context.Context, req CommitRequest, progress func(format string, args ...any)) (*CommitResult, error) {
	if req.Ref == "" && req.OCILayout == "" && !req.Keep {
		return nil, fmt.Errorf("nowhere to commit to: give a reference or an OCI layout: %w", errdefs.ErrInvalidArgument)
	}
	src, stored, err := im.storedImage(req.Image, false)
	if err != nil {
		return nil, err
	}
	c := &commitStep{im: im, req: req, progress: progress}
	spec, err := c.spec()
	if err != nil {
		return nil, err
	}
	target, err := c.target()
	if err != nil {
		return nil, err
	}
	base, err := im.storedBase(ctx, c, src.Context(), false, stored.Manifest, stored.Config)
	if err != nil {
		return nil, err
	}
	img, err := commit.Build(base, spec)
	if err != nil {
		return nil, err
	}
	res := &CommitResult{}
	return res, c.publish(ctx, img, base, target, res)
}

// storedImage is the image ref (REPO@DIGEST) names, from the store.
func (im *images) storedImage(ref string, insecure bool) (name.Digest, *remote.Image, error) {
	src, err := name.NewDigest(ref, im.nameOptionsFor(insecure)...)
	if err != nil {
		return name.Digest{}, nil, fmt.Errorf("image %q: want REPO@DIGEST of an image in the store: %w: %v", ref, errdefs.ErrInvalidArgument, err)
	}
	img, err := im.localImage(src)
	if err != nil {
		return name.Digest{}, nil, fmt.Errorf("image %s is not in the store: %w", ref, errdefs.ErrNotFound)
	}
	return src, img, nil
}
