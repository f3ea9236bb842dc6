package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/proxy"
	"github.com/stratafs/strata/test/registry"
)

// viaProxy returns ref rewritten to go through p.
func viaProxy(ref string, reg *registry.Registry, p *proxy.Proxy) string {
	return strings.Replace(ref, reg.Host(), p.Host(), 1)
}

func startProxy(t *testing.T, reg *registry.Registry) *proxy.Proxy {
	t.Helper()
	p, err := proxy.New(reg.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// expected returns the content of file path in a Big image.
func expected(t *testing.T, layers []fixture.LayerSpec, path string) []byte {
	t.Helper()
	for _, l := range layers {
		for _, f := range l {
			if f.Path == path {
				b, err := io.ReadAll(f.Reader())
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
		}
	}
	t.Fatalf("no %s in the fixture", path)
	return nil
}

// TestLazyReadMovesLittle reads one 4 KiB file of an image with a 200 MiB
// layer and counts, at the registry side, what moved.
func TestLazyReadMovesLittle(t *testing.T) {
	reg, ref := bigImage(t)
	checkLazyReadMovesLittle(t, reg, ref)
}

// checkLazyReadMovesLittle mounts ref, the big image with a TOC (eStargz
// or zstd:chunked), through a counting proxy, reads one 4 KiB file and
// checks what the mount and the read moved.
func checkLazyReadMovesLittle(t *testing.T, reg *registry.Registry, ref string) {
	t.Helper()
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	dir, m := d.mount(t, viaProxy(ref, reg, p))
	atMount := p.Stats()
	p.ResetStats()

	got, err := os.ReadFile(filepath.Join(dir, "small/a/4k.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, expected(t, fixture.Big(200), "small/a/4k.bin")) {
		t.Fatal("wrong content")
	}
	read := p.Stats()
	t.Logf("layer %d bytes; mount moved %d blob bytes in %d requests; the 4 KiB read moved %d bytes in %d requests",
		m.Layers[0].Size, atMount.BlobBytes, atMount.BlobRequests, read.BlobBytes, read.BlobRequests)
	if read.BlobBytes > 1<<20 {
		t.Errorf("reading a 4 KiB file moved %d bytes, want at most 1 MiB", read.BlobBytes)
	}
	// The mount itself reads the footer and TOC: at most the last 512 KiB
	// plus the TOC, in at most two requests.
	if atMount.BlobRequests > 2 {
		t.Errorf("mount made %d blob requests, want at most 2 (footer+TOC)", atMount.BlobRequests)
	}
	if atMount.BlobBytes > 1<<20 {
		t.Errorf("mount moved %d blob bytes; the TOC of this image is far smaller", atMount.BlobBytes)
	}
}

// TestCorruptChunkIsEIO has the registry flip a byte of every chunk it
// serves: reads fail with EIO, the cause is logged, nothing bad is cached;
// once the registry is honest again the same read succeeds.
func TestCorruptChunkIsEIO(t *testing.T) {
	reg, ref := bigImage(t)
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, viaProxy(ref, reg, p))

	p.SetFault(flipEvery(1024))
	path := filepath.Join(dir, "small/b/4k.bin")
	if en, _ := readErrno(path); en != unix.EIO {
		t.Fatalf("read of a corrupted chunk: errno %v, want EIO", en)
	}
	if !strings.Contains(logs.String(), "failed verification") {
		t.Errorf("the verification failure was not logged")
	}
	p.SetFault(nil)
	en, got := readErrno(path)
	if en != 0 {
		t.Fatalf("read after the registry recovered: %v", en)
	}
	if !bytes.Equal(got, expected(t, fixture.Big(200), "small/b/4k.bin")) {
		t.Fatal("wrong content after recovery")
	}
}

// TestTransientErrorsAreRetried: 503 twice, then the real answer.
func TestTransientErrorsAreRetried(t *testing.T) {
	reg, ref := bigImage(t)
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, viaProxy(ref, reg, p))
	p.SetFault(proxy.FailN(2, 503, proxy.IsBlob))
	en, got := readErrno(filepath.Join(dir, "other/4k.bin"))
	if en != 0 {
		t.Fatalf("read with two 503s before success: %v", en)
	}
	if !bytes.Equal(got, expected(t, fixture.Big(200), "other/4k.bin")) {
		t.Fatal("wrong content")
	}
}

// TestBlobGoneIsEIO: a layer blob the registry no longer has (404) fails
// the read with EIO, logged, not ENOENT: the file is in the image, its
// bytes are what is missing, and a program must not take it for absent.
func TestBlobGoneIsEIO(t *testing.T) {
	reg, ref := bigImage(t)
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, viaProxy(ref, reg, p))
	start := len(logs.String())
	p.SetFault(proxy.FailN(1<<30, http.StatusNotFound, proxy.IsBlob))
	if en, _ := readErrno(filepath.Join(dir, "small/a/4k.bin")); en != unix.EIO {
		t.Fatalf("read of a blob the registry no longer has: errno %v, want EIO", en)
	}
	if l := logs.String()[start:]; !strings.Contains(l, "fs: read failed") || !strings.Contains(l, "404") {
		t.Errorf("the failed fetch was not logged")
	}
}

// copyToRepo copies the image ref to a new repository of reg named after
// repo (its blobs mounted there) and returns the copy's reference.
func copyToRepo(t *testing.T, reg *registry.Registry, ref, repo string) string {
	t.Helper()
	src, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := ggcrremote.Image(src)
	if err != nil {
		t.Fatal(err)
	}
	copyRef := reg.Ref(uniqueRepo(repo), "v1")
	dst, err := name.ParseReference(copyRef, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(dst, img); err != nil {
		t.Fatal(err)
	}
	return copyRef
}

// TestSharedLayerReadFromAnotherRepository: a layer two images share is
// mounted once, from the repository of the image mounted first; when that
// repository loses the blob, the layer is read from the other image's, for
// either mount, and not failed while a repository still has it.
func TestSharedLayerReadFromAnotherRepository(t *testing.T) {
	reg, ref := bigImage(t)
	copyRef := copyToRepo(t, reg, ref, "big-copy")
	src, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	first, _ := d.mount(t, viaProxy(ref, reg, p))
	second, _ := d.mount(t, viaProxy(copyRef, reg, p))
	firstRepo := "/v2/" + src.Context().RepositoryStr() + "/blobs/"
	p.SetFault(proxy.FailN(1<<30, http.StatusNotFound, func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, firstRepo) }))
	for dir, f := range map[string]string{second: "small/a/4k.bin", first: "other/4k.bin"} {
		en, got := readErrno(filepath.Join(dir, f))
		if en != 0 {
			t.Fatalf("%s with its first repository's blob gone: errno %v", f, en)
		}
		if !bytes.Equal(got, expected(t, fixture.Big(200), f)) {
			t.Fatalf("%s: wrong content", f)
		}
	}
}

// TestRegistryGone: reads fail with EIO within the configured bound, the
// daemon stays up, and another mount keeps working.
func TestRegistryGone(t *testing.T) {
	reg, ref := bigImage(t)
	stdRef := push(t, reg, "standard", "estargz", fixture.Standard(), fixture.FormEStargz)
	p := startProxy(t, reg)
	const bound = 3 * time.Second
	d := startDaemon(t, func(c *daemon.Config) { c.FetchTimeout = daemon.Duration{Duration: bound} })
	dir, _ := d.mount(t, viaProxy(ref, reg, p))
	other, _ := d.mount(t, stdRef) // not through the proxy

	p.SetFault(proxy.Down())
	start := time.Now()
	en, _ := readErrno(filepath.Join(dir, "small/a/4k.bin"))
	took := time.Since(start)
	if en != unix.EIO {
		t.Fatalf("read with the registry gone: errno %v, want EIO", en)
	}
	// Generous slack over the bound: the machine may be loaded, but a
	// read must never hang for long.
	if took > bound+20*time.Second {
		t.Errorf("read failed after %s, bound is %s", took, bound)
	}
	if _, err := d.client.Status(context.Background()); err != nil {
		t.Fatalf("daemon down after registry failure: %v", err)
	}
	if en, _ := readErrno(filepath.Join(other, "etc/hosts")); en != 0 {
		t.Fatalf("other mount affected: %v", en)
	}
}

// TestParallelReaders: 32 goroutines read random files and ranges.
func TestParallelReaders(t *testing.T) {
	_, ref := bigImage(t)
	layers := fixture.Big(200)
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, ref)
	files := []string{fixture.BigFile, "small/a/4k.bin", "small/b/4k.bin", "other/4k.bin"}
	want := map[string][32]byte{}
	contents := map[string]*io.SectionReader{}
	for _, l := range layers {
		for _, f := range l {
			for _, name := range files {
				if f.Path == name {
					contents[name] = f.Reader()
				}
			}
		}
	}
	for _, name := range files[1:] {
		want[name] = sha256.Sum256(expected(t, layers, name))
	}
	var wg sync.WaitGroup
	errs := make(chan string, 32*8)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 1))
			for i := 0; i < 8; i++ {
				name := files[rng.IntN(len(files))]
				if name != fixture.BigFile {
					b, err := os.ReadFile(filepath.Join(dir, name))
					if err != nil || sha256.Sum256(b) != want[name] {
						errs <- name + ": wrong content or error"
					}
					continue
				}
				off := rng.Int64N(200<<20 - 1<<20)
				n := 1 + rng.IntN(1<<20)
				got := make([]byte, n)
				f, err := os.Open(filepath.Join(dir, name))
				if err != nil {
					errs <- err.Error()
					continue
				}
				_, err = f.ReadAt(got, off)
				f.Close()
				wantB := make([]byte, n)
				contents[name].ReadAt(wantB, off)
				if err != nil || !bytes.Equal(got, wantB) {
					errs <- "big file: wrong bytes or error at offset"
				}
			}
		}(uint64(g))
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestIndexAndChunksFetchedOnce: a second mount of the same image reads
// the layer index from the metadata DB and file content from the chunk
// cache; the registry sees only the manifest and config again.
func TestIndexAndChunksFetchedOnce(t *testing.T) {
	reg, ref := bigImage(t)
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	ref = viaProxy(ref, reg, p)
	dir, _ := d.mount(t, ref)
	want, err := os.ReadFile(filepath.Join(dir, "small/a/4k.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.client.Unmount(context.Background(), dir, false); err != nil {
		t.Fatal(err)
	}
	p.ResetStats()
	dir2, m := d.mount(t, ref)
	got, err := os.ReadFile(filepath.Join(dir2, "small/a/4k.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("content differs between mounts")
	}
	for _, e := range p.Stats().Log {
		if strings.Contains(e.Path, m.Layers[0].Digest.String()) {
			t.Errorf("second mount and read fetched from the layer blob: %s %s %s", e.Method, e.Path, e.Range)
		}
	}
}

// flipEvery corrupts every stride-th byte of blob responses, so whatever
// ranges a read is served from, each chunk in them is damaged.
func flipEvery(stride int64) proxy.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !proxy.IsBlob(r) {
			return false
		}
		proxy.Forward(&strideFlipper{ResponseWriter: w, stride: stride}, r)
		return true
	}
}

type strideFlipper struct {
	http.ResponseWriter
	stride, pos int64
}

func (f *strideFlipper) Write(b []byte) (int, error) {
	c := append([]byte(nil), b...)
	for i := range c {
		if (f.pos+int64(i))%f.stride == 0 {
			c[i] ^= 0xff
		}
	}
	n, err := f.ResponseWriter.Write(c)
	f.pos += int64(n)
	return n, err
}

// TestUnmountWhileBusy: a file held open in the mount (a running program,
// a container) must not make umount or daemon shutdown hang.
func TestUnmountWhileBusy(t *testing.T) {
	reg, ref := bigImage(t)
	_ = reg
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, ref)
	f, err := os.Open(filepath.Join(dir, fixture.BigFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.client.Unmount(ctx, dir, false) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("unmount with a file held open: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("unmount hung while a file was held open")
	}
	// The held file's layer is gone: reads fail rather than hang.
	if _, err := f.ReadAt(make([]byte, 4096), 100<<20); err == nil {
		t.Error("read through a file of an unmounted layer succeeded")
	}
}

// TestPrioritizedFilesArePrefetched mounts an image whose layer stores two
// files first, behind a prefetch landmark: the mount fetches them without
// being asked, reading them then moves nothing, and the rest of the layer
// is not fetched.
func TestPrioritizedFilesArePrefetched(t *testing.T) {
	requireRoot(t)
	layers := fixture.Big(16)
	ref := push(t, shared.reg, "prioritized", "estargz", layers, fixture.FormEStargz,
		fixture.WithPrioritizedFiles("small/b/4k.bin", "other/4k.bin"))
	p := startProxy(t, shared.reg)
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, viaProxy(ref, shared.reg, p))

	// The prefetch starts after the mount returns (which reads the footer
	// and TOC, at most two requests); wait, bounded, for its request. A
	// read of a file it is fetching waits for it rather than asking again.
	deadline := time.Now().Add(30 * time.Second)
	for p.Stats().BlobRequests < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("no prefetch after the mount within 30s: %+v", p.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	prefetched := p.Stats()
	if prefetched.BlobBytes > 1<<20 {
		t.Fatalf("the prefetch moved %d bytes; the prioritized files are 8 KiB (the 16 MiB file must stay put)", prefetched.BlobBytes)
	}
	p.ResetStats()
	for _, f := range []string{"small/b/4k.bin", "other/4k.bin"} {
		got, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, expected(t, layers, f)) {
			t.Fatalf("%s: wrong content", f)
		}
	}
	if s := p.Stats(); s.BlobRequests != 0 {
		t.Errorf("reading the prefetched files made %d requests (%d bytes), want none", s.BlobRequests, s.BlobBytes)
	}
}
