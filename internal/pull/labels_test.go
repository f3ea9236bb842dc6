package pull

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stratafs/strata/snapshotter"
)

const tocAnnotation = "containerd.io/snapshot/stargz/toc.digest"

func TestAppendLayerLabels(t *testing.T) {
	manifest := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("manifest")}
	config := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("config")}
	l0 := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("l0"),
		Annotations: map[string]string{tocAnnotation: digest.FromString("toc").String()}}
	l1 := ocispec.Descriptor{MediaType: images.MediaTypeDockerSchema2LayerGzip, Digest: digest.FromString("l1")}
	original := l0.Annotations
	children := []ocispec.Descriptor{config, l0, l1}
	next := images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if desc.Digest == manifest.Digest {
			return append([]ocispec.Descriptor(nil), children...), nil
		}
		return nil, nil
	})
	const ref = "127.0.0.1:5000/app:v1"
	got, err := AppendLayerLabels(ref)(next).Handle(context.Background(), manifest)
	if err != nil {
		t.Fatal(err)
	}
	if len(got[0].Annotations) != 0 {
		t.Errorf("config got annotations %v", got[0].Annotations)
	}
	for i, want := range []struct {
		desc   ocispec.Descriptor
		layers string
	}{{l0, l0.Digest.String() + "," + l1.Digest.String()}, {l1, l1.Digest.String()}} {
		a := got[i+1].Annotations
		if a[snapshotter.LabelImageRef] != ref || a[snapshotter.LabelLayerDigest] != want.desc.Digest.String() ||
			a[snapshotter.LabelManifestDigest] != manifest.Digest.String() || a[snapshotter.LabelImageLayers] != want.layers {
			t.Errorf("layer %d annotations %v", i, a)
		}
	}
	if got[1].Annotations[tocAnnotation] != l0.Annotations[tocAnnotation] {
		t.Errorf("TOC digest annotation lost: %v", got[1].Annotations)
	}
	if len(original) != 1 {
		t.Errorf("the handler wrote into the caller's annotation map: %v", original)
	}

	// Below the manifest (an index, a config) nothing is touched.
	index := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: manifest.Digest}
	got, err = AppendLayerLabels(ref)(next).Handle(context.Background(), index)
	if err != nil {
		t.Fatal(err)
	}
	if len(got[1].Annotations) != 1 {
		t.Errorf("layers under an index got annotations %v", got[1].Annotations)
	}
}

func TestLayerListFitsLabelLimit(t *testing.T) {
	var descs []ocispec.Descriptor
	for i := range 200 {
		descs = append(descs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString(strings.Repeat("x", i))})
	}
	list := layerList(descs)
	if n := strings.Count(list, ",") + 1; n >= 200 || n < 10 {
		t.Errorf("layer list holds %d of 200 digests; want it cut at the label limit", n)
	}
	if len(snapshotter.LabelImageLayers)+len(list) > 4096 {
		t.Errorf("label of %d bytes exceeds containerd's 4096", len(list))
	}
	if !strings.HasPrefix(list, descs[0].Digest.String()+",") {
		t.Errorf("list does not start with the first layer: %.80s", list)
	}
}
