package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/internal/daemon"
)

// TestMountSparseTarSaysWhy: an uncompressed layer holding a GNU sparse
// file cannot be served (its data is not one range of the layer); the
// mount's error names the entry and the reason, not only that the layer
// is "neither gzip nor zstd".
func TestMountSparseTarSaysWhy(t *testing.T) {
	requireRoot(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "holes", Mode: 0o644, Format: tar.FormatGNU}); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	blob := buf.Bytes()
	// archive/tar writes no sparse entries: patch the type and the checksum.
	blob[156] = tar.TypeGNUSparse
	sum := 0
	for i, c := range blob[:512] {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int(c)
	}
	copy(blob[148:156], fmt.Sprintf("%06o\x00 ", sum))

	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(blob, types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	ref := shared.reg.Ref(uniqueRepo("sparse"), "tar")
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), `entry "holes" is a sparse file`) {
		t.Fatalf("mount of a layer with a sparse file: %v, want the entry and the reason", err)
	}
}
