package pull

import (
	"context"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/labels"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stratafs/strata/snapshotter"
)

// AppendLayerLabels returns an images.HandlerWrapper that annotates each
// layer descriptor under an image manifest with the remote-snapshot labels
// Strata's snapshotter reads: the image reference, the layer's digest, the
// manifest's digest, and the digests of this and the layers above it (as
// many as fit in one label; the list is only a hint). Annotations the
// descriptor already has, such as the eStargz TOC digest, are kept.
func AppendLayerLabels(ref string) func(images.Handler) images.Handler {
	return func(next images.Handler) images.Handler {
		return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			children, err := next.Handle(ctx, desc)
			if err != nil || !images.IsManifestType(desc.MediaType) {
				return children, err
			}
			for i := range children {
				child := &children[i]
				if !images.IsLayerType(child.MediaType) {
					continue
				}
				// Never write into the caller's map: descriptors are
				// shared with other handlers.
				annotations := make(map[string]string, len(child.Annotations)+4)
				for k, v := range child.Annotations {
					annotations[k] = v
				}
				annotations[snapshotter.LabelImageRef] = ref
				annotations[snapshotter.LabelLayerDigest] = child.Digest.String()
				annotations[snapshotter.LabelManifestDigest] = desc.Digest.String()
				annotations[snapshotter.LabelImageLayers] = layerList(children[i:])
				child.Annotations = annotations
			}
			return children, nil
		})
	}
}

// layerList joins the digests of the layers in descs, stopping before the
// label would exceed containerd's label size limit.
func layerList(descs []ocispec.Descriptor) string {
	var b strings.Builder
	for _, d := range descs {
		if !images.IsLayerType(d.MediaType) {
			continue
		}
		next := d.Digest.String()
		if b.Len() > 0 {
			next = "," + next
		}
		if labels.Validate(snapshotter.LabelImageLayers, b.String()+next) != nil {
			break
		}
		b.WriteString(next)
	}
	return b.String()
}
