package remote

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
)

// WithRawConfig returns img with its config replaced by raw, kept as
// written, and its manifest naming it. go-containerregistry's config model
// drops the fields it has not (a health check's StartInterval, keys of
// other tools): an image made through it and given its source's raw config
// back, changed only where it must, keeps them.
func WithRawConfig(img v1.Image, raw []byte) (v1.Image, error) {
	if _, err := v1.ParseConfigFile(bytes.NewReader(raw)); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	m = m.DeepCopy()
	sum := sha256.Sum256(raw)
	m.Config.Digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	m.Config.Size = int64(len(raw))
	rawManifest, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &rawConfigImage{Image: img, config: raw, manifest: m, rawManifest: rawManifest}, nil
}

// rawConfigImage is an image with its config replaced by config (which
// says all its model config says, and more), and its manifest naming it.
type rawConfigImage struct {
	v1.Image
	config      []byte
	manifest    *v1.Manifest
	rawManifest []byte
}

func (i *rawConfigImage) RawConfigFile() ([]byte, error) { return i.config, nil }

func (i *rawConfigImage) ConfigName() (v1.Hash, error) { return i.manifest.Config.Digest, nil }

func (i *rawConfigImage) ConfigFile() (*v1.ConfigFile, error) {
	cf, err := v1.ParseConfigFile(bytes.NewReader(i.config))
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	return cf, nil
}

func (i *rawConfigImage) Manifest() (*v1.Manifest, error) { return i.manifest.DeepCopy(), nil }

func (i *rawConfigImage) RawManifest() ([]byte, error) { return i.rawManifest, nil }

func (i *rawConfigImage) Digest() (v1.Hash, error) {
	sum := sha256.Sum256(i.rawManifest)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, nil
}

func (i *rawConfigImage) Size() (int64, error) { return int64(len(i.rawManifest)), nil }

// LayerByDigest serves the config by its new digest; the layers as img
// does.
func (i *rawConfigImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	if h == i.manifest.Config.Digest {
		return partial.ConfigLayer(i)
	}
	return i.Image.LayerByDigest(h)
}
