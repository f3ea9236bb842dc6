package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/stratafs/strata/internal/daemon"
)

// TestMountSparseTarSaysWhy: a layer holding a GNU sparse file cannot be
// served (its data is not one range of the layer), uncompressed, gzip or
// zstd; the mount's error names the entry and the reason, not only that
// the layer is "neither gzip nor zstd" or "a zstd layer".
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

	// The same tar compressed: a gzip layer without an index is read
	// lazily, a zstd one fetched whole; both refuse the same entry.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(blob) //nolint:errcheck // a bytes.Buffer
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	zs, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	zst := zs.EncodeAll(blob, nil)
	d := startDaemon(t, nil)
	for _, l := range []struct {
		tag       string
		blob      []byte
		mediaType types.MediaType
	}{
		{"tar", blob, types.OCIUncompressedLayer},
		{"gzip", gz.Bytes(), types.OCILayer},
		{"zstd", zst, types.OCILayerZStd},
	} {
		t.Run(l.tag, func(t *testing.T) {
			img, err := mutate.AppendLayers(empty.Image, static.NewLayer(l.blob, l.mediaType))
			if err != nil {
				t.Fatal(err)
			}
			img = mutate.MediaType(img, types.OCIManifestSchema1)
			ref := shared.reg.Ref(uniqueRepo("sparse"), l.tag)
			r, err := name.ParseReference(ref, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.Write(r, img); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err = d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), `entry "holes" is a sparse file`) {
				t.Fatalf("mount of a layer with a sparse file: %v, want the entry and the reason", err)
			}
			// A conversion takes no sparse file either: not advised.
			if strings.Contains(err.Error(), "strata convert") {
				t.Errorf("the refusal advises a conversion that refuses the layer too: %v", err)
			}
			t.Logf("%s: %v", l.tag, err)
		})
	}
}

// TestMountEmptyBlobLayer: a layer whose blob is empty is an empty layer,
// whatever compression its media type names, as umoci and buildah take it,
// on a daemon that has never seen that blob as an uncompressed tar.
func TestMountEmptyBlobLayer(t *testing.T) {
	requireRoot(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, Size: 2}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte("f\n")) //nolint:errcheck // a bytes.Buffer
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	for _, mt := range []types.MediaType{types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer} {
		t.Run(string(mt), func(t *testing.T) {
			img, err := mutate.AppendLayers(empty.Image, static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer), static.NewLayer(nil, mt))
			if err != nil {
				t.Fatal(err)
			}
			ref := shared.reg.Ref(uniqueRepo("emptyblob"), "v1")
			r, err := name.ParseReference(ref, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.Write(r, img); err != nil {
				t.Fatal(err)
			}
			d := startDaemon(t, nil) // fresh: the empty blob seen under this media type first
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dir := t.TempDir()
			if _, err := d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: dir}); err != nil {
				t.Fatalf("mount of an image with an empty blob as a %s layer: %v", mt, err)
			}
			t.Cleanup(func() { d.client.Unmount(context.Background(), dir, false) }) //nolint:errcheck // cleanup
			if b, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || string(b) != "f\n" {
				t.Errorf("f: %q, %v", b, err)
			}
		})
	}
}
