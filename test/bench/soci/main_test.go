package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestResolveImagePicksImageManifest: from a converted image's index,
// resolveImage takes this platform's image manifest, never the SOCI index
// beside it, with its layers and diff IDs.
func TestResolveImagePicksImageManifest(t *testing.T) {
	blobs := map[digest.Digest][]byte{}
	put := func(mediaType string, v any) ocispec.Descriptor {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		d := digest.FromBytes(b)
		blobs[d] = b
		return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
	}
	diffID := digest.FromString("tar")
	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("gz"), Size: 2}
	cfg := put(ocispec.MediaTypeImageConfig, ocispec.Image{Platform: platforms.DefaultSpec(),
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}}})
	sociIndex := put(ocispec.MediaTypeImageManifest, ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest, ArtifactType: soci.SociIndexArtifactTypeV2, Config: cfg})
	sociIndex.ArtifactType = soci.SociIndexArtifactTypeV2
	man := put(ocispec.MediaTypeImageManifest, ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer},
		Annotations: map[string]string{soci.ImageAnnotationSociIndexDigest: sociIndex.Digest.String()}})
	p := platforms.DefaultSpec()
	sociIndex.Platform, man.Platform = &p, &p
	// The SOCI index first: the choice must not rest on the order.
	idx := put(ocispec.MediaTypeImageIndex, ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{sociIndex, man}})
	types := map[digest.Digest]string{idx.Digest: idx.MediaType, man.Digest: man.MediaType, sociIndex.Digest: sociIndex.MediaType}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var d digest.Digest
		switch {
		case r.URL.Path == "/v2/":
			return
		case r.URL.Path == "/v2/img/manifests/gzip-soci":
			d = idx.Digest
		case strings.HasPrefix(r.URL.Path, "/v2/img/manifests/"), strings.HasPrefix(r.URL.Path, "/v2/img/blobs/"):
			d = digest.Digest(r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:])
		}
		b, ok := blobs[d]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if mt := types[d]; mt != "" {
			w.Header().Set("Content-Type", mt)
		}
		w.Header().Set("Docker-Content-Digest", d.String())
		if r.Method != http.MethodHead {
			_, _ = w.Write(b)
		}
	}))
	defer srv.Close()

	ref := strings.TrimPrefix(srv.URL, "http://") + "/img:gzip-soci"
	img, err := resolveImage(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if img.manifest.Digest != man.Digest {
		t.Errorf("manifest %s, want the image's %s (SOCI index %s)", img.manifest.Digest, man.Digest, sociIndex.Digest)
	}
	if len(img.layers) != 1 || img.layers[0].Digest != layer.Digest || len(img.diffIDs) != 1 || img.diffIDs[0] != diffID {
		t.Errorf("layers %v, diff IDs %v", img.layers, img.diffIDs)
	}
}
