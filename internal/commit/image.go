package commit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BlobOpener opens the compressed bytes of a blob of the base image, read
// whole and in order. What it returns must fail at EOF when the bytes do
// not match desc.Digest (go-containerregistry's remote layers and
// store-backed readers both verify so).
type BlobOpener func(ctx context.Context, desc v1.Descriptor) (io.ReadCloser, error)

// Base is the image a writable mount was made from, as a
// go-containerregistry v1.Image: its manifest and config are the bytes
// kept in the store at mount time, and its layers are descriptors that read
// no byte until something asks for their content (an OCI layout, or a push
// to another registry than the base's). Pushing to the base's registry
// mounts or finds them there instead, so the base is never downloaded.
type Base struct {
	v1.Image
	// Repo is where the base's blobs live.
	Repo name.Repository

	manifest *v1.Manifest
	core     *baseCore
	streamed atomic.Int64 // layer bytes read through Open from elsewhere
	local    atomic.Int64 // layer bytes read through Open as LocalBlob
}

// LocalBlob is what a BlobOpener returns for a blob this machine holds (a
// layer an earlier commit or build step made): its bytes count as local,
// not as streamed from the base's registry.
type LocalBlob struct{ io.ReadCloser }

// NewBase describes the image whose raw manifest and config are given,
// kept in repo; open reads a layer's bytes when they are needed (ctx is
// the context of those reads). Only OCI and Docker schema 2 image
// manifests are accepted.
func NewBase(ctx context.Context, repo name.Repository, manifest, config []byte, open BlobOpener) (*Base, error) {
	m, err := v1.ParseManifest(bytes.NewReader(manifest))
	if err != nil {
		return nil, fmt.Errorf("base manifest: %w", err)
	}
	mt := m.MediaType
	if mt == "" {
		// An OCI manifest need not say its own type.
		mt = types.OCIManifestSchema1
	}
	if mt != types.OCIManifestSchema1 && mt != types.DockerManifestSchema2 {
		return nil, fmt.Errorf("base manifest: media type %q is not an image manifest", mt)
	}
	if h, _, err := v1.SHA256(bytes.NewReader(config)); err != nil || h != m.Config.Digest {
		return nil, fmt.Errorf("base config does not match the manifest's config digest %s", m.Config.Digest)
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(config, &cfg); err != nil {
		return nil, fmt.Errorf("base config: %w", err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("base config lists %d diff IDs for %d layers", len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	b := &Base{Repo: repo, manifest: m}
	b.core = &baseCore{base: b, ctx: ctx, manifest: manifest, config: config, mediaType: mt, open: open}
	img, err := partial.CompressedToImage(b.core)
	if err != nil {
		return nil, err
	}
	b.Image = img
	return b, nil
}

// Descriptors returns the base's layer descriptors as its manifest has
// them.
func (b *Base) Descriptors() []v1.Descriptor { return b.manifest.Layers }

// StreamedBytes is how many bytes of base layers were read so far from
// elsewhere than this machine.
func (b *Base) StreamedBytes() int64 { return b.streamed.Load() }

// LocalBytes is how many bytes of base layers were read so far from
// LocalBlobs.
func (b *Base) LocalBytes() int64 { return b.local.Load() }

// baseCore is the minimal image go-containerregistry's partial package
// extends into a v1.Image.
type baseCore struct {
	base      *Base
	ctx       context.Context // of the reads open makes, which v1.Layer cannot pass
	manifest  []byte
	config    []byte
	mediaType types.MediaType
	open      BlobOpener
}

func (c *baseCore) RawConfigFile() ([]byte, error)      { return c.config, nil }
func (c *baseCore) RawManifest() ([]byte, error)        { return c.manifest, nil }
func (c *baseCore) MediaType() (types.MediaType, error) { return c.mediaType, nil }
func (c *baseCore) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, d := range c.base.manifest.Layers {
		if d.Digest == h {
			return &baseLayer{core: c, desc: d}, nil
		}
	}
	return nil, fmt.Errorf("blob %s is not in the base image", h)
}

// baseLayer is a layer of the base, described by its manifest descriptor.
type baseLayer struct {
	core *baseCore
	desc v1.Descriptor
}

func (l *baseLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *baseLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *baseLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *baseLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.core.open(l.core.ctx, l.desc)
	if err != nil {
		return nil, fmt.Errorf("base layer %s: %w", l.desc.Digest, err)
	}
	if _, ok := rc.(*LocalBlob); ok {
		return &countingReader{ReadCloser: rc, n: &l.core.base.local}, nil
	}
	return &countingReader{ReadCloser: rc, n: &l.core.base.streamed}, nil
}

type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.n.Add(int64(n))
	return n, err
}

// as returns the base as the start of a new image with a manifest of
// media type target: itself when it already is one and has no manifest
// annotations, else the same layers and config under a manifest of
// target's schema, layer media types translated, and no annotations. The
// base manifest's annotations describe the base (its
// org.opencontainers.image.base.name and .digest name the base's own
// base, .created its date): a new image inherits none of them, as a
// docker build's and BuildKit's get none. Layer descriptors keep theirs.
func (b *Base) as(target types.MediaType) (v1.Image, error) {
	mt, err := b.Image.MediaType()
	if err != nil {
		return nil, err
	}
	if mt == target && len(b.manifest.Annotations) == 0 && b.manifest.MediaType == target {
		return b.Image, nil
	}
	m := b.manifest.DeepCopy()
	m.Annotations = nil
	m.MediaType = target // a base manifest may leave it out (the registry's Content-Type said it)
	if mt != target {
		m.MediaType = target
		translate := ociLayerType
		m.Config.MediaType = types.OCIConfigJSON
		if target == types.DockerManifestSchema2 {
			translate = dockerLayerType
			m.Config.MediaType = types.DockerConfigJSON
		}
		for i := range m.Layers {
			m.Layers[i].MediaType = translate(m.Layers[i].MediaType)
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	translated := *b.core
	translated.manifest, translated.mediaType = raw, target
	return partial.CompressedToImage(&translated)
}
