package e2e

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/proxy"
	"github.com/stratafs/strata/test/treecmp"
)

// The layer index artifact, spelled out: the acceptance side of the
// format, not the package's constants.
const (
	layerIndexArtifact = "application/vnd.stratafs.layer-index.v1"
	layerIndexBlob     = "application/vnd.stratafs.layer-index.v1+zstd"
	indexedLayerKey    = "dev.stratafs.layer.digest"
	imageLayersKey     = "dev.stratafs.image.layers"
)

var bigGzip bigOnce

// indexImage runs `strata index` on ref in a daemon of its own (another
// machine) and returns its result.
func indexImage(t *testing.T, ref string) *daemon.IndexResult {
	t.Helper()
	d := startDaemon(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := d.client.Index(ctx, daemon.IndexRequest{Ref: ref}, nil)
	if err != nil {
		t.Fatalf("index %s: %v", ref, err)
	}
	// Only the indexes are kept: the content read to make them is not
	// cached (the pushed portable indexes are blobs of the store, not
	// chunks).
	st, err := d.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.CacheBytes > 1<<20 {
		t.Errorf("strata index left %d bytes in the chunk cache", st.CacheBytes)
	}
	return res
}

// distinctLayers are m's layer digests, each once.
func distinctLayers(m *daemon.Mount) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	for _, l := range m.Layers {
		out[l.Digest] = true
	}
	return out
}

// TestGzipIndexFromRegistry: `strata index` on one machine pushes the
// index of a 200 MiB plain gzip layer as a referrer of the image; a fresh
// daemon mounts the image at once, moving the index and nothing of the
// layer, and reading a 4 KiB file moves one span of the layer. With the
// registry flipping bytes, a read fails with EIO and caches nothing; with
// layer_indexes = "off" the index is not looked for.
func TestGzipIndexFromRegistry(t *testing.T) {
	reg, ref := bigGzip.image(t, fixture.FormGzip, "gzip")
	res := indexImage(t, ref)
	if len(res.Layers) != 1 || res.Layers[0].Format != "gzip" || res.Layers[0].IndexBytes == 0 || res.Artifact == "" {
		t.Fatalf("index result %+v", res)
	}
	il := res.Layers[0]
	t.Logf("index of the %d-entry layer: %d bytes, %d checkpoints, pushed as %s", il.Entries, il.IndexBytes, il.Checkpoints, res.Artifact)
	if il.Checkpoints < 150 {
		t.Errorf("%d checkpoints for 200 MiB: want one about every MiB", il.Checkpoints)
	}
	checkIndexReferrer(t, ref, res)

	t.Run("lazy read", func(t *testing.T) {
		p := startProxy(t, reg)
		d := startDaemon(t, nil)
		mark := logMark()
		dir, m := d.mount(t, viaProxy(ref, reg, p))
		atMount := p.Stats()
		waitLog(t, mark, "layer index imported", m.Layers[0].Digest.String())
		if atMount.BlobBytes > il.IndexBytes+4096 {
			t.Errorf("the mount moved %d blob bytes in %d requests; the index is %d bytes", atMount.BlobBytes, atMount.BlobRequests, il.IndexBytes)
		}
		p.ResetStats()
		readChecked(t, dir, "small/a/4k.bin", fixture.Big(200))
		read := p.Stats()
		t.Logf("mount moved %d blob bytes in %d requests; the 4 KiB read %d bytes in %d requests",
			atMount.BlobBytes, atMount.BlobRequests, read.BlobBytes, read.BlobRequests)
		// At most one span: about 1 MiB of the tar, as stored (random
		// data), or its start up to the file.
		if read.BlobRequests != 1 || read.BlobBytes > 5<<18 {
			t.Errorf("reading a 4 KiB file moved %d bytes in %d requests, want one span", read.BlobBytes, read.BlobRequests)
		}
		// A random read into the big file: one span again.
		p.ResetStats()
		const at = 123<<20 + 4321
		f, err := os.Open(filepath.Join(dir, fixture.BigFile))
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4096)
		_, err = f.ReadAt(got, at)
		f.Close()
		if err != nil || !bytes.Equal(got, expected(t, fixture.Big(200), fixture.BigFile)[at:at+4096]) {
			t.Fatalf("random read of the big file: %v", err)
		}
		if s := p.Stats(); s.BlobBytes > 2*(5<<18) {
			t.Errorf("a random 4 KiB read moved %d bytes in %d requests", s.BlobBytes, s.BlobRequests)
		}
		ms, err := d.client.List(context.Background())
		if err != nil || len(ms) != 1 || ms[0].Layers[0].Format != "gzip" || ms[0].Layers[0].Packed != "" {
			t.Errorf("listed as %+v (%v), want a gzip layer read lazily", ms, err)
		}
	})

	t.Run("corrupt span is EIO", func(t *testing.T) {
		p := startProxy(t, reg)
		d := startDaemon(t, nil)
		dir, _ := d.mount(t, viaProxy(ref, reg, p))
		mark := logMark()
		p.SetFault(flipEvery(1024))
		path := filepath.Join(dir, "small/b/4k.bin")
		if en, _ := readErrno(path); en != unix.EIO {
			t.Fatalf("read of a corrupted span: errno %v, want EIO", en)
		}
		waitLog(t, mark, "failed verification")
		p.SetFault(nil)
		p.ResetStats()
		readChecked(t, dir, "small/b/4k.bin", fixture.Big(200))
		if s := p.Stats(); s.BlobRequests == 0 {
			t.Error("the read after the registry recovered fetched nothing: bytes of the corrupt span were cached")
		}
	})

	// An index pushed to one repository is taken on the trust of whoever
	// may push there, for its images alone: an image of another
	// repository with the same layer and no index of its own is never
	// read through it, neither while the layer is mounted with it nor
	// after (its layer is indexed here, from its own bytes).
	t.Run("another repository", func(t *testing.T) {
		otherRef := copyToRepo(t, reg, ref, "gzip-elsewhere")
		p := startProxy(t, reg)
		d := startDaemon(t, nil)
		mark := logMark()
		first, m := d.mount(t, viaProxy(ref, reg, p))
		waitLog(t, mark, "layer index imported", m.Layers[0].Digest.String())
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := d.client.Mount(ctx, daemon.MountRequest{Ref: viaProxy(otherRef, reg, p), Dir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "with an index from") {
			t.Fatalf("mount of another repository's image while its layer is served from this one's index: %v", err)
		}
		if err := d.client.Unmount(ctx, first, false); err != nil {
			t.Fatal(err)
		}
		p.ResetStats()
		dir, m := d.mount(t, viaProxy(otherRef, reg, p))
		if s := p.Stats(); s.BlobBytes < m.Layers[0].Size {
			t.Errorf("the other repository's mount moved %d blob bytes of a %d-byte layer: the first repository's index was used", s.BlobBytes, m.Layers[0].Size)
		}
		readChecked(t, dir, "small/a/4k.bin", fixture.Big(200))

		// Once the other repository has the same index pushed, its
		// image shares the layer's mount, both read lazily.
		indexImage(t, otherRef)
		d = startDaemon(t, nil)
		p.ResetStats()
		d.mount(t, viaProxy(ref, reg, p))
		dir, _ = d.mount(t, viaProxy(otherRef, reg, p))
		if s := p.Stats(); s.BlobBytes > 2*(il.IndexBytes+4096) {
			t.Errorf("the two repositories' mounts moved %d blob bytes; their indexes are %d bytes each", s.BlobBytes, il.IndexBytes)
		}
		readChecked(t, dir, "small/b/4k.bin", fixture.Big(200))
	})

	t.Run("layer_indexes off", func(t *testing.T) {
		p := startProxy(t, reg)
		d := startDaemon(t, func(c *daemon.Config) {
			c.LayerIndexes = daemon.LayerIndexesOff
			c.PrefetchLists = daemon.PrefetchListsOff // which would ask for referrers too
		})
		_, m := d.mount(t, viaProxy(ref, reg, p))
		for _, e := range p.Stats().Log {
			if strings.Contains(e.Path, "/referrers/") || strings.Contains(e.Path, "/manifests/sha256-") {
				t.Errorf("looked for a referrer with layer_indexes off: %s %s", e.Method, e.Path)
			}
		}
		if s := p.Stats(); s.BlobBytes < m.Layers[0].Size {
			t.Errorf("the mount moved %d blob bytes of a %d-byte layer: it cannot have indexed it itself", s.BlobBytes, m.Layers[0].Size)
		}
	})
}

// checkIndexReferrer checks the pushed artifact as a registry client sees
// it: a referrer of the image, of the layer index type, bound to the
// image's layers.
func checkIndexReferrer(t *testing.T, ref string, res *daemon.IndexResult) {
	t.Helper()
	found := false
	refs := referrersOf(t, ref, res.Digest)
	for _, m := range refs {
		found = found || (m.Digest.String() == res.Artifact.String() && m.ArtifactType == layerIndexArtifact)
	}
	if !found {
		t.Fatalf("the artifact %s is not among the image's referrers %+v", res.Artifact, refs)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	art, err := ggcrremote.Image(r.Context().Digest(res.Artifact.String()))
	if err != nil {
		t.Fatal(err)
	}
	man, err := art.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var layers []string
	for _, l := range res.Layers {
		layers = append(layers, l.Digest.String())
	}
	if man.Subject == nil || man.Subject.Digest.String() != res.Digest.String() || man.Annotations[imageLayersKey] != strings.Join(layers, ",") {
		t.Errorf("artifact manifest %+v is not bound to the image %s and its layers", man, res.Digest)
	}
	for _, l := range man.Layers {
		if string(l.MediaType) != layerIndexBlob || l.Annotations[indexedLayerKey] == "" {
			t.Errorf("artifact blob %+v", l)
		}
	}
}

// TestMountGzipIndexedSameTreeAsFullUnpack: the standard image in plain
// gzip form (whiteouts, opaque directories, hardlinks, a name replaced),
// indexed by another machine, mounts from the pushed indexes alone and
// equals the layer specs and umoci's unpack entry by entry.
func TestMountGzipIndexedSameTreeAsFullUnpack(t *testing.T) {
	checkSameTreeAsFullUnpack(t, treeCase{
		layers: fixture.Standard(), form: fixture.FormGzip, tag: "gzip-indexed", unpack: treecmp.ReferenceUnpack, indexFirst: true,
	})
}

// TestMountTarIndexedSameTreeAsFullUnpack: the same for uncompressed tar
// layers, whose indexes `strata index` pushes too.
func TestMountTarIndexedSameTreeAsFullUnpack(t *testing.T) {
	checkSameTreeAsFullUnpack(t, treeCase{
		layers: fixture.Standard(), form: fixture.FormUncompressed, tag: "tar-indexed", unpack: treecmp.ReferenceUnpack, indexFirst: true,
	})
}

// TestWrongLayerIndexIsIgnored: indexes in the registry that are not
// those of the image mounted — another image's artifact, an index of
// another layer under this layer's name, a truncated or garbage index —
// are logged and not used: the mount reads the layer whole and indexes it
// itself, and serves the right files.
func TestWrongLayerIndexIsIgnored(t *testing.T) {
	requireRoot(t)
	other := push(t, shared.reg, uniqueRepo("gzindex-other"), "gzip", fixture.Big(16), fixture.FormGzip)
	otherRes := indexImage(t, other)
	otherIndex := artifactBlob(t, other, otherRes.Artifact)

	for caseName, tc := range map[string]struct {
		imageLayers func(own string) string
		blob        []byte
		log         string
	}{
		"another image's artifact": {func(string) string { return otherRes.Layers[0].Digest.String() }, otherIndex, "layer index artifact not used"},
		"another layer's index":    {func(own string) string { return own }, otherIndex, "layer index from the registry not used"},
		"truncated index":          {func(own string) string { return own }, otherIndex[:len(otherIndex)/2], "layer index from the registry not used"},
		"garbage":                  {func(own string) string { return own }, []byte("not an index at all"), "layer index from the registry not used"},
	} {
		t.Run(caseName, func(t *testing.T) {
			layers := fixture.Standard()
			ref := push(t, shared.reg, uniqueRepo("gzindex-wrong"), "gzip", layers, fixture.FormGzip)
			r, err := name.ParseReference(ref, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			img, err := ggcrremote.Image(r)
			if err != nil {
				t.Fatal(err)
			}
			man, err := img.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			imgDigest, err := img.Digest()
			if err != nil {
				t.Fatal(err)
			}
			var own []string
			for _, l := range man.Layers {
				own = append(own, l.Digest.String())
			}
			pushIndexArtifact(t, ref, digest.Digest(imgDigest.String()), tc.imageLayers(strings.Join(own, ",")), own[0], tc.blob)

			p := startProxy(t, shared.reg)
			d := startDaemon(t, nil)
			mark := logMark()
			dir, m := d.mount(t, viaProxy(ref, shared.reg, p))
			waitLog(t, mark, tc.log)
			if strings.Contains(logs.String()[mark:], "layer index imported") {
				t.Error("an index that is not the layer's was imported")
			}
			if s := p.Stats(); s.BlobBytes < m.Layers[0].Size {
				t.Errorf("the mount moved %d blob bytes: it did not read the %d-byte layer to index it", s.BlobBytes, m.Layers[0].Size)
			}
			checkTreeIsSpecs(t, dir, layers)
		})
	}
}

// artifactBlob fetches the one blob of the artifact at ref's repository.
func artifactBlob(t *testing.T, ref string, artifact digest.Digest) []byte {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	art, err := ggcrremote.Image(r.Context().Digest(artifact.String()))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := art.Layers()
	if err != nil || len(ls) != 1 {
		t.Fatalf("artifact layers %v, %v", ls, err)
	}
	rc, err := ls[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pushIndexArtifact pushes a layer index artifact for subject at ref's
// repository, naming imageLayers and holding blob as the index of layer.
func pushIndexArtifact(t *testing.T, ref string, subject digest.Digest, imageLayers, layer string, blob []byte) {
	t.Helper()
	pushArtifact(t, ref, subject, layerIndexArtifact, layerIndexBlob, blob, map[string]string{indexedLayerKey: layer},
		map[string]string{imageLayersKey: imageLayers, ocispec.AnnotationCreated: time.Now().UTC().Format(time.RFC3339Nano)})
}

// TestGzipWithoutIndex: with no index anywhere, the first mount reads
// each gzip layer whole once, indexes it and keeps what it read: reading
// a file afterwards moves nothing. --index-push then pushes the index, and
// a fresh daemon mounts without reading the layer.
func TestGzipWithoutIndex(t *testing.T) {
	requireRoot(t)
	layers := fixture.Big(16)
	ref := push(t, shared.reg, uniqueRepo("gzindex-none"), "gzip", layers, fixture.FormGzip)
	p := startProxy(t, shared.reg)
	d := startDaemon(t, nil)
	dir, m := d.mountWith(t, daemon.MountRequest{Ref: viaProxy(ref, shared.reg, p), IndexPush: true})
	size := m.Layers[0].Size
	var layerBytes int64 // the config is a blob too
	for _, e := range p.Stats().Log {
		if strings.HasSuffix(e.Path, "/blobs/"+m.Layers[0].Digest.String()) {
			layerBytes += e.Bytes
		}
	}
	if layerBytes != size {
		t.Errorf("the first mount moved %d bytes of the %d-byte layer, want each byte once", layerBytes, size)
	}
	if m.IndexArtifact == "" || m.IndexPushError != "" {
		t.Fatalf("index push: artifact %q, error %q", m.IndexArtifact, m.IndexPushError)
	}
	p.ResetStats()
	for _, f := range []string{"small/a/4k.bin", "other/4k.bin", fixture.BigFile} {
		readChecked(t, dir, f, layers)
	}
	if s := p.Stats(); s.BlobBytes != 0 {
		t.Errorf("reading files the first mount read moved %d bytes", s.BlobBytes)
	}

	p2 := startProxy(t, shared.reg)
	d2 := startDaemon(t, nil)
	dir2, _ := d2.mount(t, viaProxy(ref, shared.reg, p2))
	if s := p2.Stats(); s.BlobBytes > size/4 {
		t.Errorf("a fresh daemon's mount moved %d blob bytes of the %d-byte layer: the pushed index was not used", s.BlobBytes, size)
	}
	readChecked(t, dir2, "other/4k.bin", layers)
}

// TestMountShowsProgress: a mount that reads a 200 MiB gzip layer whole
// (no index: layer_indexes off) reports how far it got while it reads,
// over a link slow enough that the read takes seconds.
func TestMountShowsProgress(t *testing.T) {
	reg, ref := bigGzip.image(t, fixture.FormGzip, "gzip")
	p := startProxy(t, reg)
	p.SetProfile(proxy.ProfileLAN) // 1 Gbit/s: 200 MiB take over a second
	d := startDaemon(t, func(c *daemon.Config) { c.LayerIndexes = daemon.LayerIndexesOff })
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var lines []string
	m, err := d.client.MountProgress(ctx, daemon.MountRequest{Ref: viaProxy(ref, reg, p), Dir: dir}, func(l string) { lines = append(lines, l) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.client.Unmount(context.Background(), dir, false); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	if m.Dir != dir || len(m.Layers) != 1 {
		t.Fatalf("mount %+v", m)
	}
	t.Logf("progress: %q", lines)
	if len(lines) == 0 || !strings.Contains(lines[0], "MB read") || !strings.Contains(lines[0], m.Layers[0].Digest.Encoded()[:12]) {
		t.Errorf("progress lines %q, want the layer's bytes read so far", lines)
	}
	readChecked(t, dir, "small/a/4k.bin", fixture.Big(200))
}

// TestGzipIndexPrioritized: `strata index --prioritize` on a plain gzip
// image puts a checkpoint just before each listed file that starts far
// into a span and pushes the list as the image's prefetch list: a fresh
// daemon's mount fetches those files at once, moving little more than
// them (not the MiB of incompressible data before each in its span), and
// reads of them move nothing more. A path in no layer is reported.
func TestGzipIndexPrioritized(t *testing.T) {
	requireRoot(t)
	layers := []fixture.LayerSpec{{
		fixture.Dir("d"), fixture.Reg("d/big.bin", 6<<20+700<<10, 7), fixture.Reg("d/after-big.txt", 4096, 8),
		fixture.Reg("d/big2.bin", 3<<20+500<<10, 9), fixture.Reg("d/late.txt", 4096, 10), fixture.Reg("d/unlisted.txt", 4096, 11),
	}}
	img, err := fixture.Build(context.Background(), layers, fixture.FormGzip)
	if err != nil {
		t.Fatal(err)
	}
	ref := shared.reg.Ref("prioritized", "gzip")
	if _, err := fixture.Push(context.Background(), img, ref); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Mounted before it has a list: the daemon notes the registry has none.
	before, _ := d.mount(t, ref)
	must(t, d.client.Unmount(ctx, before, false))
	res, err := d.client.Index(ctx, daemon.IndexRequest{Ref: ref,
		Prioritize: []string{"/d/late.txt", "d/after-big.txt", "no/such/file", "d"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Artifact == "" || res.PrefetchList == "" || res.Listed != 2 || !slices.Equal(res.Missing, []string{"no/such/file", "d"}) {
		t.Fatalf("index result %+v: want the indexes and a list of 2 files pushed, no/such/file and d missing", res)
	}
	il := res.Layers[0]
	t.Logf("index: %d bytes, %d checkpoints; list pushed as %s", il.IndexBytes, il.Checkpoints, res.PrefetchList)
	found := false
	for _, m := range referrersOf(t, ref, res.Digest) {
		found = found || m.Digest.String() == res.PrefetchList.String() && m.ArtifactType == "application/vnd.stratafs.prefetch-list.v1+json"
	}
	if !found {
		t.Errorf("the prefetch list %s is not among the image's referrers", res.PrefetchList)
	}

	p := startProxy(t, shared.reg)
	fresh := startDaemon(t, nil)
	mark := logMark()
	dir, m := fresh.mount(t, viaProxy(ref, shared.reg, p))
	line := waitLog(t, mark, "recorded prefetch done", m.Digest.String())
	if !strings.Contains(line, "files=2") || !strings.Contains(line, "missing=0") {
		t.Errorf("prefetch: %s", line)
	}
	moved := p.Stats()
	// The index, the list, and each listed file from a checkpoint close
	// before it: without one, each would cost the rest of its span, up
	// to 700 KB of incompressible data.
	if moved.BlobBytes > il.IndexBytes+16<<10+2*(128<<10) {
		t.Errorf("mount and prefetch moved %d blob bytes in %d requests; the index is %d bytes", moved.BlobBytes, moved.BlobRequests, il.IndexBytes)
	}
	p.ResetStats()
	readChecked(t, dir, "d/after-big.txt", layers)
	readChecked(t, dir, "d/late.txt", layers)
	if s := p.Stats(); s.BlobBytes != 0 {
		t.Errorf("reading the prefetched files moved %d bytes", s.BlobBytes)
	}
	readChecked(t, dir, "d/unlisted.txt", layers)
	readChecked(t, dir, "d/big2.bin", layers)
	readChecked(t, dir, "d/big.bin", layers)

	// The daemon that pushed the list uses it at its next mount, though
	// it found none there before.
	mark = logMark()
	_, m = d.mount(t, ref)
	if line := waitLog(t, mark, "recorded prefetch done", m.Digest.String()); !strings.Contains(line, "files=2") {
		t.Errorf("prefetch on the machine that pushed the list: %s", line)
	}
}

// TestIndexPrioritizedOfLayersThatCannotBeIndexed: a list whose files all
// lie in layers that cannot be indexed (plain zstd) pushes nothing, and
// says why.
func TestIndexPrioritizedOfLayersThatCannotBeIndexed(t *testing.T) {
	requireRoot(t)
	layers := fixture.Big(16)
	ref := push(t, shared.reg, uniqueRepo("zstd-prio"), "zstd", layers, fixture.FormZstd)
	d := startDaemon(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := d.client.Index(ctx, daemon.IndexRequest{Ref: ref, Prioritize: []string{"other/4k.bin"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "1 of its 1 layers cannot be, and their files cannot be listed") {
		t.Fatalf("index --prioritize of a zstd image: %v, want the reason", err)
	}
}

// TestIndexAfterZstdFetchedWhole: a plain zstd layer that a mount fetched
// whole is still one that cannot be indexed: strata index says so, as it
// does on a daemon that never mounted it, rather than failing on the
// index of the layer's local tar.
func TestIndexAfterZstdFetchedWhole(t *testing.T) {
	requireRoot(t)
	ref := push(t, shared.reg, uniqueRepo("zstd-whole"), "zstd", fixture.Big(16), fixture.FormZstd)
	index := func(d *testDaemon) (*daemon.IndexResult, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return d.client.Index(ctx, daemon.IndexRequest{Ref: ref}, nil)
	}
	fresh, freshErr := index(startDaemon(t, nil))
	d := startDaemon(t, nil)
	d.mount(t, ref)
	// What the whole fetch took is counted (strata ls), though the layer
	// is read from the local store now.
	ms, err := d.client.List(context.Background())
	must(t, err)
	if len(ms) != 1 || len(ms[0].Layers) != 1 || ms[0].Layers[0].FetchedBytes < ms[0].Layers[0].Size {
		t.Errorf("mounts %+v: want the zstd layer's %d bytes counted as fetched", ms, ms[0].Layers[0].Size)
	}
	got, err := index(d)
	if (err == nil) != (freshErr == nil) {
		t.Fatalf("after a mount: %v; on a fresh daemon: %v", err, freshErr)
	}
	if err != nil {
		return
	}
	if len(got.Layers) != 1 || got.Layers[0].Note != fresh.Layers[0].Note || got.Layers[0].Format != fresh.Layers[0].Format {
		t.Errorf("after a mount %+v, on a fresh daemon %+v", got.Layers, fresh.Layers)
	}
}
