package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/proxy"
	"github.com/stratafs/strata/test/registry"
	"github.com/stratafs/strata/test/treecmp"
)

// TestMountUncompressedSameTreeAsFullUnpack mounts the standard image with
// uncompressed tar layers (application/vnd.oci.image.layer.v1.tar) and
// checks the tree entry by entry against the layer specs and umoci's full
// unpack. A tar keeps nanosecond mtimes, so they are compared whole.
func TestMountUncompressedSameTreeAsFullUnpack(t *testing.T) {
	checkSameTreeAsFullUnpack(t, treeCase{
		layers: fixture.Standard(), form: fixture.FormUncompressed, tag: "uncompressed", unpack: treecmp.ReferenceUnpack,
	})
}

// bigOnce builds and pushes fixture.Big(200) in one form once, to the
// shared registry.
type bigOnce struct {
	once sync.Once
	ref  string
	err  error
}

var bigTar, bigZstdChunked bigOnce

// image returns the big image in form, tagged tag in repository "big".
func (b *bigOnce) image(t *testing.T, form fixture.Form, tag string) (*registry.Registry, string) {
	t.Helper()
	requireRoot(t)
	b.once.Do(func() {
		img, err := fixture.Build(context.Background(), fixture.Big(200), form)
		if err != nil {
			b.err = err
			return
		}
		b.ref = shared.reg.Ref("big", tag)
		_, b.err = fixture.Push(context.Background(), img, b.ref)
	})
	if b.err != nil {
		t.Fatalf("building the big %s image: %v", form, b.err)
	}
	return shared.reg, b.ref
}

// bigTarImage is fixture.Big(200) with an uncompressed layer, pushed once
// to the shared registry.
func bigTarImage(t *testing.T) (*registry.Registry, string) {
	t.Helper()
	return bigTar.image(t, fixture.FormUncompressed, "uncompressed")
}

// TestLazyReadUncompressed: a plain tar has no table of contents, so
// indexing it reads the whole layer once (counted at the registry side),
// and keeps what it read in the chunk cache: reading a file afterwards
// moves nothing. With a cache too small to keep the layer, a file whose
// data was evicted moves about its span, not the layer.
func TestLazyReadUncompressed(t *testing.T) {
	reg, ref := bigTarImage(t)
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	dir0, _ := d.mount(t, viaProxy(ref, reg, p))
	p.ResetStats()
	if got, err := os.ReadFile(filepath.Join(dir0, "small/a/4k.bin")); err != nil || !bytes.Equal(got, expected(t, fixture.Big(200), "small/a/4k.bin")) {
		t.Fatalf("small/a/4k.bin: %v", err)
	}
	if st := p.Stats(); st.BlobBytes != 0 {
		t.Errorf("reading a file the indexing read kept moved %d bytes in %d requests, want none", st.BlobBytes, st.BlobRequests)
	}

	p.ResetStats()
	d = startDaemon(t, func(c *daemon.Config) { c.CacheSize = 1 << 20 })
	dir, m := d.mount(t, viaProxy(ref, reg, p))
	atMount := p.Stats()
	p.ResetStats()

	// The big file is stored first and evicted first; 4 KiB from its
	// middle is a random read, which takes its span and no read-ahead.
	const at = 100 << 20
	f, err := os.Open(filepath.Join(dir, fixture.BigFile))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	_, err = f.ReadAt(got, at)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, expected(t, fixture.Big(200), fixture.BigFile)[at:at+4096]) {
		t.Fatal("wrong content")
	}
	read := p.Stats()
	size := m.Layers[0].Size
	t.Logf("layer %d bytes; mount moved %d blob bytes in %d requests; the 4 KiB read moved %d bytes in %d requests",
		size, atMount.BlobBytes, atMount.BlobRequests, read.BlobBytes, read.BlobRequests)
	// The index is built from one pass over the blob (plus the 512-byte
	// head format detection reads).
	if atMount.BlobBytes < size || atMount.BlobBytes > size+4096 {
		t.Errorf("mount moved %d blob bytes, want the layer's %d once", atMount.BlobBytes, size)
	}
	if read.BlobBytes == 0 || read.BlobBytes > 1<<20 {
		t.Errorf("reading 4 KiB of an evicted span moved %d bytes, want at most 1 MiB", read.BlobBytes)
	}
}

// TestCorruptSpanIsEIO: after indexing, the registry flips bytes of what
// it serves; a span read then fails its digest, and the read is EIO. The
// cache is too small to keep what indexing read of the big file.
func TestCorruptSpanIsEIO(t *testing.T) {
	reg, ref := bigTarImage(t)
	p := startProxy(t, reg)
	d := startDaemon(t, func(c *daemon.Config) { c.CacheSize = 1 << 20 })
	dir, _ := d.mount(t, viaProxy(ref, reg, p))
	head := func() (unix.Errno, []byte) {
		f, err := os.Open(filepath.Join(dir, fixture.BigFile))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 4096)
		_, err = io.ReadFull(f, b)
		var en unix.Errno
		if errors.As(err, &en) {
			return en, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, b
	}
	p.SetFault(flipEvery(1024))
	if en, _ := head(); en != unix.EIO {
		t.Fatalf("read of a corrupted span: errno %v, want EIO", en)
	}
	if !strings.Contains(logs.String(), "failed verification") {
		t.Errorf("the verification failure was not logged")
	}
	p.SetFault(nil)
	en, got := head()
	if en != 0 || !bytes.Equal(got, expected(t, fixture.Big(200), fixture.BigFile)[:4096]) {
		t.Fatalf("read after the registry recovered: errno %v", en)
	}
}

// TestIndexingReadsACorruptedLayerAgain: one response of a plain gzip
// layer spoiled on the way (a byte flipped, once) while it is read whole
// to be indexed fails the decoding before the layer's digest can be
// checked; the layer is read once more, and the mount serves it right.
func TestIndexingReadsACorruptedLayerAgain(t *testing.T) {
	layers := []fixture.LayerSpec{{fixture.Dir("d"), fixture.Reg("d/big", 2<<20, 31), fixture.Text("d/small", "small\n")}}
	ref := push(t, shared.reg, uniqueRepo("corrupt-once"), "v1", layers, fixture.FormGzip)
	p := startProxy(t, shared.reg)
	var blobs atomic.Int64
	flip := proxy.FlipByte(proxy.IsBlob, 20_000)
	p.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		// The layer's first range read (the config is read whole).
		if proxy.IsBlob(r) && r.Header.Get("Range") != "" && blobs.Add(1) == 1 {
			return flip(w, r)
		}
		return false
	})
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, viaProxy(ref, shared.reg, p))
	got, err := os.ReadFile(filepath.Join(dir, "d/big"))
	if err != nil || !bytes.Equal(got, expected(t, layers, "d/big")) {
		t.Fatalf("d/big read after the layer was read again: %v", err)
	}
	if !strings.Contains(logs.String(), "reading the layer once more") {
		t.Errorf("the daemon does not say it read the layer again")
	}
}

// TestMountZstdChunkedSameTreeAsFullUnpack mounts the standard image with
// zstd:chunked layers (stargz-snapshotter's writer) and checks the tree
// entry by entry against the layer specs and umoci's full unpack (of a
// gzip copy: umoci reads no zstd). The TOC has eStargz's schema, so
// mtimes are whole seconds, as for eStargz.
func TestMountZstdChunkedSameTreeAsFullUnpack(t *testing.T) {
	checkSameTreeAsFullUnpack(t, treeCase{
		layers: fixture.Standard(), form: fixture.FormZstdChunked, tag: "zstd-chunked",
		wholeSeconds: true, unpack: treecmp.ReferenceUnpackGzip,
	})
}

// TestLazyReadZstdChunked reads one 4 KiB file of fixture.Big(200) in
// zstd:chunked form and counts, at the registry side, what moved: the
// mount reads the footer and TOC (at most two requests), the read little
// more than the file's chunk.
func TestLazyReadZstdChunked(t *testing.T) {
	reg, ref := bigZstdChunked.image(t, fixture.FormZstdChunked, "zstd-chunked")
	checkLazyReadMovesLittle(t, reg, ref)
}

// TestMountGzipSameTreeAsFullUnpack mounts the standard image in plain
// gzip form without an index: each layer is streamed once, indexed in the
// same pass and served through its spans. The tree must equal the layer
// specs and umoci's unpack entry by entry, nanosecond mtimes included (a
// tar keeps them).
func TestMountGzipSameTreeAsFullUnpack(t *testing.T) {
	checkSameTreeAsFullUnpack(t, treeCase{
		layers: fixture.Standard(), form: fixture.FormGzip, tag: "gzip-whole", unpack: treecmp.ReferenceUnpack,
	})
}

// TestMountZstdSameTreeAsFullUnpack mounts the standard image with plain
// zstd layers (no TOC, no index: fetched whole once, unpacked into the
// store) and compares it with umoci's unpack of a gzip copy (umoci reads
// no zstd).
func TestMountZstdSameTreeAsFullUnpack(t *testing.T) {
	checkSameTreeAsFullUnpack(t, treeCase{
		layers: fixture.Standard(), form: fixture.FormZstd, tag: "zstd", unpack: treecmp.ReferenceUnpackGzip,
	})
}

// TestMountBuildahZstdChunked mounts a zstd:chunked image as
// containers/storage writes it (`buildah push --compression-format
// zstd:chunked`, the writer podman and skopeo share): small files carry
// only their content digest, large ones are cut into chunks of their own.
// It must mount lazily and equal umoci's unpack of the same image, with
// every chunk verified.
func TestMountBuildahZstdChunked(t *testing.T) {
	requireRoot(t)
	reg := registry.Start(t)
	b := newBuildah(t)
	ctxDir := t.TempDir()
	files := map[string][]byte{
		"hello.txt":   []byte("hello from buildah\n"),
		"sub/big.bin": randomBytes(3 << 20),
		"sub/empty":   nil,
	}
	// Enough files for a TOC of several zstd blocks, which buildah
	// writes as a streaming frame declaring a 32 MiB window.
	for i := range 1500 {
		files[fmt.Sprintf("many/file-%04d.txt", i)] = []byte(strconv.Itoa(i) + "\n")
	}
	for name, data := range files {
		must(t, os.MkdirAll(filepath.Join(ctxDir, "files", filepath.Dir(name)), 0o755))
		must(t, os.WriteFile(filepath.Join(ctxDir, "files", name), data, 0o644))
	}
	must(t, os.Symlink("hello.txt", filepath.Join(ctxDir, "files", "link")))
	must(t, os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nCOPY files/ /data/\n"), 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := b.cmd(ctx, "bud", "--timestamp", "0", "--isolation", "chroot", "-t", "localhost/zc", ctxDir); err != nil {
		t.Fatalf("buildah bud: %v\n%s", err, out)
	}
	ref := reg.Ref("zstd-chunked", "buildah")
	if out, err := b.cmd(ctx, "push", "--tls-verify=false", "--compression-format", "zstd:chunked", "localhost/zc", "docker://"+ref); err != nil {
		t.Fatalf("buildah push: %v\n%s", err, out)
	}
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, ref)
	ms, err := d.client.List(ctx)
	must(t, err)
	if len(ms) != 1 || len(ms[0].Layers) != 1 || ms[0].Layers[0].Format != "zstd:chunked" || ms[0].Layers[0].Packed != "" {
		t.Fatalf("mounts %+v, want one zstd:chunked layer read lazily", ms)
	}
	for name, data := range files {
		got, err := os.ReadFile(filepath.Join(dir, "data", name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("data/%s: %d bytes, %v; want the %d bytes written", name, len(got), err, len(data))
		}
	}
	got, err := treecmp.Walk(dir)
	must(t, err)
	ref0 := t.TempDir()
	must(t, treecmp.ReferenceUnpackGzip(ctx, t, ref, ref0))
	unpacked, err := treecmp.Walk(ref0)
	must(t, err)
	// zstd:chunked's TOC, like eStargz's, keeps mtimes in whole seconds.
	for _, diff := range treecmp.Diff(wholeSeconds(unpacked), treecmp.DropEmptyXattrs(got)) {
		t.Errorf("mount differs from umoci's full unpack: %s", diff)
	}
}

// randomBytes is n bytes of a fixed pseudo-random stream: incompressible,
// the same on every run.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestConcurrentMountsAtOneDirectory: of mounts asked for at once at one
// directory, one is made and the others are refused, as a mount there
// after it would be: none is stacked where the daemon cannot see it.
func TestConcurrentMountsAtOneDirectory(t *testing.T) {
	_, ref := bigTarImage(t)
	d := startDaemon(t, nil)
	dir := t.TempDir()
	t.Cleanup(func() {
		d.client.Unmount(context.Background(), dir, false)
		for range 4 {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	const n = 4
	errs := make(chan error, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: dir})
			errs <- err
		}()
	}
	made := 0
	for range n {
		err := <-errs
		switch {
		case err == nil:
			made++
		case !strings.Contains(err.Error(), "already mounted there"):
			t.Errorf("a refused mount: %v", err)
		}
	}
	if made != 1 {
		t.Fatalf("%d mounts made at one directory, want 1", made)
	}
	if err := d.client.Unmount(context.Background(), dir, false); err != nil {
		t.Fatal(err)
	}
	if kmount.IsMountpoint(dir) {
		t.Error("something is still mounted there after the unmount")
	}
}

// TestLayerMountTakenAway: a layer mount unmounted outside the daemon is
// not bound again, bare, under the next mount of its image: that mount is
// refused with the reason.
func TestLayerMountTakenAway(t *testing.T) {
	_, ref := bigTarImage(t)
	d := startDaemon(t, nil)
	d.mount(t, ref)
	layers, err := kmount.Under(filepath.Join(d.cfg.Root, "l"))
	if err != nil || len(layers) == 0 {
		t.Fatalf("layer mounts: %v, %v", layers, err)
	}
	for _, l := range layers {
		if err := unix.Unmount(l.Target, unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	_, err = d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: dir})
	if err == nil {
		d.client.Unmount(context.Background(), dir, false)
		t.Fatal("an image whose layer mount was taken away mounted")
	}
	if !strings.Contains(err.Error(), "taken away outside the daemon") {
		t.Errorf("err = %v, want the reason", err)
	}
}
