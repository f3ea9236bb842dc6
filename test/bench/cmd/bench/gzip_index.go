package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// gzipIndexing is issue 14's local measurement of one image's gzip
// layers: how fast their indexes are built from blobs in memory, against
// Go's compress/gzip decompressing the same blobs, and how big the
// indexes are in their portable (pushed) form.
type gzipIndexing struct {
	LayerBytes   int64   // compressed, all gzip layers
	TarBytes     int64   // decompressed
	IndexSecs    float64 // index.ReadGzip, every layer, one after the other
	GunzipSecs   float64 // compress/gzip to io.Discard, the same
	PortableSize int64   // the indexes as `strata index` pushes them
}

// measureGzipIndexing times compress/gzip over img's gzip layers, read
// from the registry into memory first, then `strata index` on the image
// straight from the registry (lo: local blobs, as far as the daemon can
// have them; this also makes the index the strata-gzip rows mount from),
// and reads the size of the pushed indexes back from the registry. The
// bench imports no Strata package: Strata is timed as a user runs it.
func (r *runner) measureGzipIndexing(ctx context.Context, img imageSpec) (gzipIndexing, error) {
	var g gzipIndexing
	ref, err := name.ParseReference(r.regHost+"/"+img.Name+":gzip", name.Insecure)
	if err != nil {
		return g, err
	}
	desc, err := remote.Get(ref, remote.WithContext(ctx))
	if err != nil {
		return g, err
	}
	im, err := desc.Image()
	if err != nil {
		return g, err
	}
	layers, err := im.Layers()
	if err != nil {
		return g, err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return g, err
		}
		blob, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return g, err
		}
		start := time.Now()
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			return g, err
		}
		n, err := io.Copy(io.Discard, zr)
		if err != nil {
			return g, err
		}
		g.GunzipSecs += time.Since(start).Seconds()
		g.LayerBytes += int64(len(blob))
		g.TarBytes += n
	}
	start := time.Now()
	if err := r.indexGzip(ctx, img); err != nil {
		return g, err
	}
	g.IndexSecs = time.Since(start).Seconds()
	idx, err := remote.Referrers(ref.Context().Digest(desc.Digest.String()), remote.WithContext(ctx))
	if err != nil {
		return g, err
	}
	list, err := idx.IndexManifest()
	if err != nil {
		return g, err
	}
	var newest string
	for _, m := range list.Manifests {
		if m.ArtifactType != layerIndexArtifact {
			continue
		}
		if created := m.Annotations["org.opencontainers.image.created"]; newest == "" || created > newest {
			newest = created
			art, err := remote.Image(ref.Context().Digest(m.Digest.String()), remote.WithContext(ctx))
			if err != nil {
				return g, err
			}
			man, err := art.Manifest()
			if err != nil {
				return g, err
			}
			g.PortableSize = 0
			for _, l := range man.Layers {
				g.PortableSize += l.Size
			}
		}
	}
	if g.PortableSize == 0 {
		return g, fmt.Errorf("no layer index artifact found for %s after strata index", ref)
	}
	return g, nil
}

// layerIndexArtifact is the artifact type `strata index` pushes, spelled
// out: the bench imports no Strata package.
const layerIndexArtifact = "application/vnd.stratafs.layer-index.v1"

// sociTag is the tag of the gzip image as soci's `convert` leaves it:
// test/bench/soci's index pushes IMAGE:gzip + "-soci".
const sociTag = "gzip-soci"

// indexSoci builds SOCI's index of the plain gzip image once per bench
// run with `soci-bench index` (soci's own IndexBuilder.Convert at its
// default span size), straight to the registry and untimed, as
// indexGzip does for Strata: the soci rows then mount IMAGE:gzip-soci,
// the same layers bound to the SOCI index.
func (r *runner) indexSoci(ctx context.Context, img imageSpec) error {
	if r.trained[img.Name+":soci-index"] {
		return nil
	}
	dir := filepath.Join(r.o.work, "run", "soci-indexing")
	if err := resetDir(dir); err != nil {
		return err
	}
	defer func() { _ = resetDir(dir) }()
	want := r.regHost + "/" + img.Name + ":" + sociTag
	cmd := exec.CommandContext(ctx, r.o.soci, "--root", dir, "index", r.regHost+"/"+img.Name+":gzip")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("soci-bench index: %w\n%s", err, tail(stderr.Bytes()))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if got := lines[len(lines)-1]; got != want {
		return fmt.Errorf("soci-bench index pushed %q, want %q", got, want)
	}
	if r.trained == nil {
		r.trained = map[string]bool{}
	}
	r.trained[img.Name+":soci-index"] = true
	return nil
}

// tail is the last 4000 bytes of b.
func tail(b []byte) []byte {
	if len(b) > 4000 {
		return b[len(b)-4000:]
	}
	return b
}
