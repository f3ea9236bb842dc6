package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
)

// TestDescriptorAgainstIndexedLayer: an image whose layer descriptor
// names another TOC digest (or size) than its blob's is refused whether
// the layer is new, mounted by another image, or only indexed before: a
// stored index is not a licence to skip the descriptor's checks.
func TestDescriptorAgainstIndexedLayer(t *testing.T) {
	good := push(t, shared.reg, uniqueRepo("descriptor"), "good", fixture.Standard(), fixture.FormEStargz)
	r, err := name.ParseReference(good, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := ggcrremote.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	variant := func(tag string, edit func(l *ocispec.Descriptor)) string {
		t.Helper()
		var m ocispec.Manifest
		if err := json.Unmarshal(desc.Manifest, &m); err != nil {
			t.Fatal(err)
		}
		if m.Layers[0].Annotations[estargz.TOCJSONDigestAnnotation] == "" {
			t.Fatal("the fixture's first layer names no TOC digest")
		}
		edit(&m.Layers[0])
		raw, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := ggcrremote.Put(r.Context().Tag(tag), rawManifest(raw)); err != nil {
			t.Fatal(err)
		}
		return r.Context().Tag(tag).String()
	}
	wrongTOC := variant("wrong-toc", func(l *ocispec.Descriptor) {
		l.Annotations[estargz.TOCJSONDigestAnnotation] = digest.FromString("another TOC").String()
	})
	wrongSize := variant("wrong-size", func(l *ocispec.Descriptor) { l.Size += 1 << 40 })

	d := startDaemon(t, nil)
	refused := func(what, ref, want string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: mount of %s: %v, want a refusal naming %q", what, ref, err, want)
		}
	}
	refused("a new layer", wrongTOC, "digest mismatch")
	dir, _ := d.mount(t, good)
	refused("a layer mounted by another image", wrongTOC, "digest mismatch")
	refused("a layer mounted by another image", wrongSize, "bytes")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.client.Unmount(ctx, dir, false); err != nil {
		t.Fatal(err)
	}
	refused("a layer indexed before", wrongTOC, "digest mismatch")
	refused("a layer indexed before", wrongSize, "bytes")
	// The image that agrees with its blobs still mounts.
	d.mount(t, good)
}
