package remote_test

import (
	"errors"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

// TestLayersByManifestDigest: the layer list of a manifest named by digest,
// verified, without the config; an unknown digest is an error.
func TestLayersByManifestDigest(t *testing.T) {
	host := startServer(t, newRegistry())
	img, err := random.Image(1000, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host + "/test/layers:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	want, _ := img.Layers()
	layers, raw, err := remote.Layers(t.Context(), ref.Context(), digest.Digest(d.String()), anonymous)
	if err != nil {
		t.Fatal(err)
	}
	if digest.FromBytes(raw).String() != d.String() {
		t.Fatalf("manifest bytes do not match their digest")
	}
	if len(layers) != len(want) {
		t.Fatalf("%d layers, want %d", len(layers), len(want))
	}
	for i, l := range want {
		ld, _ := l.Digest()
		if layers[i].Digest.String() != ld.String() {
			t.Errorf("layer %d: %s, want %s", i, layers[i].Digest, ld)
		}
	}
	_, _, err = remote.Layers(t.Context(), ref.Context(), digest.FromString("nothing"), anonymous, fastRetry)
	if err == nil {
		t.Fatal("an unknown manifest digest resolved")
	}
	if _, _, err := remote.Layers(t.Context(), ref.Context(), "sha256:bad", anonymous); !errors.Is(err, remote.ErrInvalidReference) {
		t.Fatalf("bad digest: %v", err)
	}
}
