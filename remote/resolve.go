package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// maxIndexDepth bounds indexes nested in indexes; real images use one level.
const maxIndexDepth = 4

// Image is a resolved image: one platform's manifest and config, verified.
type Image struct {
	Ref       name.Reference  // as parsed from the user's string
	Repo      name.Repository // where the blobs live
	Digest    digest.Digest   // of the chosen platform's manifest
	MediaType types.MediaType // of that manifest
	Manifest  []byte          // raw bytes as served (verified against Digest)
	Config    []byte          // raw config bytes (verified against the manifest's config digest)
	Layers    []Layer         // bottom to top
	Platform  v1.Platform
}

// Layer is one layer descriptor of the manifest.
type Layer struct {
	Digest      digest.Digest
	Size        int64
	MediaType   types.MediaType
	Annotations map[string]string // e.g. "containerd.io/snapshot/stargz/toc.digest"
	// URLs are the descriptor's urls: where a foreign or
	// non-distributable layer may be read when the registry lacks it.
	URLs []string `json:",omitempty"`
}

// Resolve fetches the manifest of ref, choosing the WithPlatform manifest
// when ref names an index, and the config. OCI and Docker v2 schema 2
// manifests are accepted; schema 1 and unknown media types fail with
// ErrUnsupportedMediaType. Every byte returned is verified: the manifest
// against the digest of a digest reference or of the index descriptor that
// named it, the config against the manifest's config descriptor.
func Resolve(ctx context.Context, ref string, opts ...Option) (*Image, error) {
	o := makeOptions(opts...)
	r, err := ParseReference(ref, opts...)
	if err != nil {
		return nil, err
	}
	c, err := newClient(ctx, r.Context(), o)
	if err != nil {
		return nil, err
	}
	var want digest.Digest
	if d, ok := r.(name.Digest); ok {
		if want, err = digest.Parse(d.DigestStr()); err != nil {
			return nil, fmt.Errorf("%w: %q: %w", ErrInvalidReference, ref, err)
		}
	}
	m, err := c.fetchManifest(ctx, o, r.Identifier(), want)
	if err != nil {
		return nil, err
	}
	m, platform, err := c.choosePlatform(ctx, o, m, nil, 0)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", r, err)
	}
	img, err := c.image(ctx, o, m)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", r, err)
	}
	img.Ref = r
	if platform != nil {
		img.Platform = *platform
	}
	return img, nil
}

// choosePlatform walks from m (an image manifest or an index) to the image
// manifest for o.platform. platform is the descriptor's platform when the
// manifest was chosen from an index, nil otherwise.
func (c *client) choosePlatform(ctx context.Context, o *options, m *rawManifest, platform *v1.Platform, depth int) (*rawManifest, *v1.Platform, error) {
	switch m.mediaType {
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
		return m, platform, nil
	case types.OCIImageIndex, types.DockerManifestList:
	case types.DockerManifestSchema1, types.DockerManifestSchema1Signed:
		return nil, nil, fmt.Errorf("%w: %s is a Docker schema 1 manifest, deprecated since 2017; re-push the image with a current client",
			ErrUnsupportedMediaType, m.digest)
	default:
		return nil, nil, fmt.Errorf("%w: manifest %s has media type %q", ErrUnsupportedMediaType, m.digest, m.mediaType)
	}
	if depth >= maxIndexDepth {
		return nil, nil, fmt.Errorf("%w: indexes nested more than %d deep", ErrUnsupportedMediaType, maxIndexDepth)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(m.bytes))
	if err != nil {
		return nil, nil, fmt.Errorf("parsing index %s: %w", m.digest, err)
	}
	// Every entry is looked at and the best taken, as containerd takes it:
	// an index may list an older variant before the wanted one.
	type candidate struct {
		desc  v1.Descriptor
		child *rawManifest // fetched already, or nil
		p     v1.Platform
	}
	var offered []string
	var best *candidate
	bestRank := 0
	consider := func(c candidate) {
		if rank, ok := platformRank(c.p, o.platform); ok && (best == nil || rank < bestRank) {
			best, bestRank = &c, rank
		}
	}
	for _, desc := range idx.Manifests {
		switch {
		case desc.Platform != nil:
			offered = append(offered, desc.Platform.String())
			consider(candidate{desc: desc, p: *desc.Platform})
		case desc.MediaType.IsIndex():
			// A nested index without a platform: its own best, if any.
			child, err := c.fetchDescribed(ctx, o, desc)
			if err != nil {
				return nil, nil, err
			}
			chosen, p, err := c.choosePlatform(ctx, o, child, nil, depth+1)
			if err != nil || p == nil {
				continue // a nested index without our platform is not an error yet
			}
			offered = append(offered, p.String())
			consider(candidate{desc: desc, child: chosen, p: *p})
		default:
			// The platform is optional in an index: an image entry
			// without one is for what its config says, as containerd
			// reads it.
			child, err := c.fetchDescribed(ctx, o, desc)
			if err != nil {
				return nil, nil, err
			}
			p, ok := c.configPlatformOf(ctx, o, child)
			if !ok {
				continue
			}
			offered = append(offered, p.String())
			consider(candidate{desc: desc, child: child, p: p})
		}
	}
	if best == nil {
		return nil, nil, fmt.Errorf("%w %s: index %s offers [%s]",
			ErrNoMatchingPlatform, o.platform.String(), m.digest, strings.Join(offered, ", "))
	}
	if best.child != nil {
		return best.child, &best.p, nil
	}
	child, err := c.fetchDescribed(ctx, o, best.desc)
	if err != nil {
		return nil, nil, err
	}
	return c.choosePlatform(ctx, o, child, best.desc.Platform, depth+1)
}

// configPlatformOf is the platform the config of image manifest m
// declares; false when m is no image manifest or its config says none.
func (c *client) configPlatformOf(ctx context.Context, o *options, m *rawManifest) (v1.Platform, bool) {
	if m.mediaType != types.OCIManifestSchema1 && m.mediaType != types.DockerManifestSchema2 {
		return v1.Platform{}, false
	}
	cfgDesc, _, err := parseImageManifest(m.digest, m.bytes)
	if err != nil {
		return v1.Platform{}, false
	}
	cfg, ok := localConfig(o, cfgDesc)
	if !ok {
		if cfg, err = c.fetchBlob(ctx, o, cfgDesc.Digest, cfgDesc.Size); err != nil {
			return v1.Platform{}, false
		}
	}
	p := configPlatform(cfg)
	return p, p.OS != "" && p.Architecture != ""
}

// fetchDescribed fetches the manifest an index descriptor names, verified
// against the descriptor's digest and size.
func (c *client) fetchDescribed(ctx context.Context, o *options, desc v1.Descriptor) (*rawManifest, error) {
	want, err := digest.Parse(desc.Digest.String())
	if err != nil {
		return nil, fmt.Errorf("%w: index entry digest %q: %w", ErrInvalidReference, desc.Digest, err)
	}
	m, err := c.fetchManifest(ctx, o, want.String(), want)
	if err != nil {
		return nil, err
	}
	if int64(len(m.bytes)) != desc.Size {
		return nil, fmt.Errorf("%w: manifest %s is %d bytes, index says %d", ErrDigestMismatch, want, len(m.bytes), desc.Size)
	}
	return m, nil
}

// image parses an image manifest, fetches its config and describes layers.
func (c *client) image(ctx context.Context, o *options, m *rawManifest) (*Image, error) {
	cfgDesc, layers, err := parseImageManifest(m.digest, m.bytes)
	if err != nil {
		return nil, err
	}
	if o.onManifest != nil {
		o.onManifest(c.repo, m.digest, slices.Clone(layers))
	}
	cfg, ok := localConfig(o, cfgDesc)
	if !ok {
		if cfg, err = c.fetchBlob(ctx, o, cfgDesc.Digest, cfgDesc.Size); err != nil {
			return nil, err
		}
	}
	return &Image{
		Repo:      c.repo,
		Digest:    m.digest,
		MediaType: m.mediaType,
		Manifest:  m.bytes,
		Config:    cfg,
		Layers:    layers,
		Platform:  configPlatform(cfg),
	}, nil
}

// localConfig is the config from WithLocalBlobs' store, if it holds bytes
// of the descriptor's digest and size.
func localConfig(o *options, d configDescriptor) ([]byte, bool) {
	if o.localBlob == nil {
		return nil, false
	}
	b, ok := o.localBlob(d.Digest)
	if !ok || int64(len(b)) != d.Size || digest.FromBytes(b) != d.Digest {
		return nil, false
	}
	return b, true
}

// configDescriptor is what an image manifest says of its config.
type configDescriptor struct {
	Digest digest.Digest
	Size   int64
}

// parseImageManifest checks an (untrusted) image manifest and returns its
// config descriptor and layers, bottom first.
func parseImageManifest(d digest.Digest, body []byte) (configDescriptor, []Layer, error) {
	mf, err := v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		return configDescriptor{}, nil, fmt.Errorf("parsing manifest %s: %w", d, err)
	}
	cfgDigest, err := digest.Parse(mf.Config.Digest.String())
	if err != nil {
		return configDescriptor{}, nil, fmt.Errorf("%w: manifest %s: config digest %q: %w", ErrInvalidReference, d, mf.Config.Digest, err)
	}
	if mf.Config.Size < 0 {
		return configDescriptor{}, nil, fmt.Errorf("%w: manifest %s: config has negative size %d", ErrInvalidRange, d, mf.Config.Size)
	}
	if len(mf.Layers) > maxLayers {
		return configDescriptor{}, nil, fmt.Errorf("%w: manifest %s has %d layers, more than %d", ErrTooLarge, d, len(mf.Layers), maxLayers)
	}
	layers := make([]Layer, 0, len(mf.Layers))
	for i, l := range mf.Layers {
		ld, err := digest.Parse(l.Digest.String())
		if err != nil {
			return configDescriptor{}, nil, fmt.Errorf("%w: manifest %s: layer %d digest %q: %w", ErrInvalidReference, d, i, l.Digest, err)
		}
		if l.Size < 0 {
			return configDescriptor{}, nil, fmt.Errorf("%w: manifest %s: layer %d has negative size %d", ErrInvalidRange, d, i, l.Size)
		}
		layers = append(layers, Layer{Digest: ld, Size: l.Size, MediaType: l.MediaType, Annotations: maps.Clone(l.Annotations), URLs: slices.Clone(l.URLs)})
	}
	return configDescriptor{Digest: cfgDigest, Size: mf.Config.Size}, layers, nil
}

// maxLayers bounds the layers of one image: overlayfs stacks at most 500.
const maxLayers = 500

// configPlatform reads the platform an image config declares; it is what a
// single-platform image (no index) is for.
func configPlatform(cfg []byte) v1.Platform {
	var c struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
		OSVersion    string `json:"os.version"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		return v1.Platform{}
	}
	return v1.Platform{OS: c.OS, Architecture: c.Architecture, Variant: c.Variant, OSVersion: c.OSVersion}
}

// Layers fetches the image manifest dgst of repo and returns its layers,
// without the config: for callers that already know which manifest they
// want (containerd's snapshot labels name it) and need only the layer
// descriptors. The manifest is verified against dgst and returned too.
// Indexes, schema 1 and unknown media types fail with
// ErrUnsupportedMediaType.
func Layers(ctx context.Context, repo name.Repository, dgst digest.Digest, opts ...Option) ([]Layer, []byte, error) {
	o := makeOptions(opts...)
	if err := dgst.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%w: manifest digest %q: %w", ErrInvalidReference, dgst, err)
	}
	c, err := newClient(ctx, repo, o)
	if err != nil {
		return nil, nil, err
	}
	m, err := c.fetchManifest(ctx, o, dgst.String(), dgst)
	if err != nil {
		return nil, nil, err
	}
	switch m.mediaType {
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
	default:
		return nil, nil, fmt.Errorf("%w: manifest %s has media type %q, not an image manifest", ErrUnsupportedMediaType, dgst, m.mediaType)
	}
	_, layers, err := parseImageManifest(m.digest, m.bytes)
	if err != nil {
		return nil, nil, err
	}
	return layers, m.bytes, nil
}

// ImageFromBytes describes the image whose manifest and config are already
// local (kept from an earlier resolve or a commit), for ref, which must be
// a digest reference to that manifest: nothing is fetched. Both are
// verified (the manifest against the reference's digest, the config
// against the manifest's config descriptor), so local bytes are trusted no
// more than a registry's.
func ImageFromBytes(ref name.Digest, manifest, config []byte) (*Image, error) {
	d, err := digest.Parse(ref.DigestStr())
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrInvalidReference, ref, err)
	}
	if got := digest.FromBytes(manifest); got != d {
		return nil, fmt.Errorf("manifest %s: %w (content is %s)", d, ErrDigestMismatch, got)
	}
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	if err := json.Unmarshal(manifest, &probe); err != nil {
		return nil, fmt.Errorf("parsing manifest %s: %w", d, err)
	}
	mt := probe.MediaType
	if mt == "" {
		mt = types.OCIManifestSchema1 // an OCI manifest need not say its type
	}
	if mt != types.OCIManifestSchema1 && mt != types.DockerManifestSchema2 {
		return nil, fmt.Errorf("manifest %s of media type %q: %w", d, mt, ErrUnsupportedMediaType)
	}
	cfgDesc, layers, err := parseImageManifest(d, manifest)
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(config); got != cfgDesc.Digest || int64(len(config)) != cfgDesc.Size {
		return nil, fmt.Errorf("config %s: %w", cfgDesc.Digest, ErrDigestMismatch)
	}
	return &Image{
		Ref: ref, Repo: ref.Context(), Digest: d, MediaType: mt, Manifest: manifest,
		Config: config, Layers: layers, Platform: configPlatform(config),
	}, nil
}
