package commit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/internal/kmount"
)

// NewLayer is a layer made by a commit, kept as a file (in the store).
type NewLayer struct {
	Path        string
	Digest      v1.Hash
	Size        int64
	DiffID      v1.Hash
	MediaType   types.MediaType
	Annotations map[string]string
}

// Spec says what a commit adds to its base image.
type Spec struct {
	// Layer is the new layer; nil for a commit without changes, which
	// adds an empty_layer history entry and no layer.
	Layer *NewLayer
	// Edits change the config (Dockerfile-style --change lines, parsed).
	Edits []func(*v1.Config) error
	// CreatedBy is the new history entry's created_by: the commands run,
	// or the user's message.
	CreatedBy string
	Comment   string
	Author    string
	// Created is the config's and the new history entry's time
	// (SOURCE_DATE_EPOCH for reproducible images). The base's history
	// never changes.
	Created time.Time
	// Docker makes a Docker v2 schema 2 manifest and config instead of OCI.
	Docker bool
	// History are entries added before the commit's own, all empty_layer
	// (a Dockerfile's metadata instructions since the last layer).
	History []v1.History
	// HealthStartInterval is the health check's start interval a
	// HEALTHCHECK of this commit set (0: none); nil when none did: the
	// base's is kept while the health check is the base's.
	HealthStartInterval *time.Duration
	// Platform, when set, is the image's platform: the config's os and
	// architecture, and its variant and os.version when given or when os
	// or architecture change (BuildKit's rule for a target platform given
	// explicitly); nil keeps the base's.
	Platform *v1.Platform
}

// ErrDockerCannotCarry is wrapped when --docker is asked for an image whose
// layers need what Docker schema 2 manifests cannot say.
var ErrDockerCannotCarry = errors.New("a Docker v2 schema 2 manifest cannot carry this image")

// ErrTooManyLayers is wrapped when a new layer would take an image past
// the layers overlayfs stacks.
var ErrTooManyLayers = errors.New("too many layers")

// Build returns the new image: base plus spec's layer, config and history.
// Base layer descriptors are kept as the base manifest has them (digest,
// size, media type, annotations, urls), unless the manifest changes schema
// (Docker to OCI or back), when their media types are translated to the
// target schema's equivalents and nothing else changes.
func Build(base *Base, spec Spec) (v1.Image, error) {
	target := types.OCIManifestSchema1
	if spec.Docker {
		target = types.DockerManifestSchema2
		if err := checkDockerCarries(base, spec.Layer); err != nil {
			return nil, err
		}
	}
	img, err := base.as(target)
	if err != nil {
		return nil, err
	}
	baseRaw, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	baseHealth := cf.Config.Healthcheck.DeepCopy()
	cf = cf.DeepCopy()
	for _, edit := range spec.Edits {
		if err := edit(&cf.Config); err != nil {
			return nil, err
		}
	}
	if spec.Author != "" {
		cf.Author = spec.Author
	}
	if p := spec.Platform; p != nil {
		same := cf.OS == p.OS && cf.Architecture == p.Architecture
		cf.OS, cf.Architecture = p.OS, p.Architecture
		if p.Variant != "" || !same {
			cf.Variant = p.Variant
		}
		if p.OSVersion != "" || !same {
			cf.OSVersion = p.OSVersion
		}
	}
	cf.Created = v1.Time{Time: spec.Created.UTC()}
	// The metadata steps' entries go into the config at once: one image
	// a step (mutate.Append) kept a copy of the config each, memory
	// growing with the square of a Dockerfile's metadata instructions.
	for _, h := range spec.History {
		if !h.EmptyLayer {
			return nil, fmt.Errorf("history entry %q: entries before the commit's own must be empty_layer ones", h.CreatedBy)
		}
	}
	cf.History = append(cf.History, spec.History...)
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	add := mutate.Addendum{History: v1.History{
		Created:    v1.Time{Time: spec.Created.UTC()},
		CreatedBy:  spec.CreatedBy,
		Author:     spec.Author,
		Comment:    spec.Comment,
		EmptyLayer: spec.Layer == nil,
	}}
	if spec.Layer != nil {
		if n := len(base.Descriptors()) + 1; n > kmount.MaxOverlayLayers {
			return nil, fmt.Errorf("%w: the new image would have %d layers, and overlayfs stacks %d: no runtime could mount it (fewer RUN and COPY steps, or a base with fewer layers)",
				ErrTooManyLayers, n, kmount.MaxOverlayLayers)
		}
		l, err := partial.CompressedToLayer(&fileLayer{spec.Layer})
		if err != nil {
			return nil, err
		}
		add.Layer, add.Annotations, add.MediaType = l, spec.Layer.Annotations, spec.Layer.MediaType
		if spec.Docker {
			add.MediaType = dockerLayerType(spec.Layer.MediaType)
		}
	}
	if img, err = mutate.Append(img, add); err != nil {
		return nil, err
	}
	return withStartInterval(img, startInterval(spec.HealthStartInterval, baseRaw, baseHealth, cf.Config.Healthcheck))
}

// checkDockerCarries refuses what a Docker schema 2 manifest cannot name:
// zstd layers, and a new layer whose annotations (its TOC digest, which
// lazy mounting needs) Docker's descriptor has no field for. The base's
// descriptors are kept as they are, annotations included: an eStargz image
// in Docker form carries them already (stargz-snapshotter's converter
// writes them so), and registries and runtimes accept it.
func checkDockerCarries(base *Base, l *NewLayer) error {
	for _, d := range base.Descriptors() {
		if d.MediaType == types.OCILayerZStd {
			return fmt.Errorf("%w: base layer %s is zstd-compressed, which Docker manifests cannot name; commit in OCI form", ErrDockerCannotCarry, d.Digest)
		}
	}
	if l == nil {
		return nil
	}
	if l.MediaType == types.OCILayerZStd {
		return fmt.Errorf("%w: zstd layers have no Docker media type; use --format gzip, or OCI form", ErrDockerCannotCarry)
	}
	if len(l.Annotations) > 0 {
		return fmt.Errorf("%w: the new layer's annotations (its TOC digest, for lazy mounting) have no place in a Docker descriptor; use --format gzip or uncompressed, or OCI form", ErrDockerCannotCarry)
	}
	return nil
}

// dockerOfOCI pairs the layer media types of the two schemas.
var dockerOfOCI = map[types.MediaType]types.MediaType{
	types.OCILayer:             types.DockerLayer,
	types.OCIUncompressedLayer: types.DockerUncompressedLayer,
	types.OCIRestrictedLayer:   types.DockerForeignLayer,
}

// dockerLayerType and ociLayerType translate layer media types between the
// two schemas; types without an equivalent are kept.
func dockerLayerType(mt types.MediaType) types.MediaType {
	if d, ok := dockerOfOCI[mt]; ok {
		return d
	}
	return mt
}

func ociLayerType(mt types.MediaType) types.MediaType {
	for oci, docker := range dockerOfOCI {
		if docker == mt {
			return oci
		}
	}
	return mt
}

// fileLayer is a NewLayer read from its file.
type fileLayer struct{ l *NewLayer }

func (f *fileLayer) Digest() (v1.Hash, error)            { return f.l.Digest, nil }
func (f *fileLayer) DiffID() (v1.Hash, error)            { return f.l.DiffID, nil }
func (f *fileLayer) Size() (int64, error)                { return f.l.Size, nil }
func (f *fileLayer) MediaType() (types.MediaType, error) { return f.l.MediaType, nil }
func (f *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(f.l.Path) }
