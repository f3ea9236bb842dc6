package remote

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

// FuzzParseImageManifest: whatever a registry serves as a manifest never
// panics the parser, and what parses is well formed.
func FuzzParseImageManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + sha256Hex + `","size":10},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` + sha256Hex + `","size":5,` +
		`"annotations":{"containerd.io/snapshot/stargz/toc.digest":"sha256:` + sha256Hex + `"}}]}`))
	f.Add([]byte(`{"schemaVersion":2,"config":{"digest":"sha256:zz","size":-1},"layers":[{"size":-5}]}`))
	f.Add([]byte(`{"layers":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		cfg, layers, err := parseImageManifest(digest.FromBytes(body), body)
		if err != nil {
			return
		}
		if cfg.Digest.Validate() != nil || cfg.Size < 0 {
			t.Fatalf("bad config descriptor accepted: %+v", cfg)
		}
		if len(layers) > maxLayers {
			t.Fatalf("%d layers accepted", len(layers))
		}
		for _, l := range layers {
			if l.Digest.Validate() != nil || l.Size < 0 {
				t.Fatalf("bad layer accepted: %+v", l)
			}
		}
	})
}

// FuzzConfigPlatform: an image config of any shape yields a platform or
// nothing, never a panic.
func FuzzConfigPlatform(f *testing.F) {
	f.Add([]byte(`{"os":"linux","architecture":"arm64","variant":"v8"}`))
	f.Add([]byte(`{"os":1}`))
	f.Fuzz(func(t *testing.T, cfg []byte) { _ = configPlatform(cfg) })
}

const sha256Hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
