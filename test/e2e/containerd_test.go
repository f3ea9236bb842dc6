package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	tcontainerd "github.com/stratafs/strata/test/containerd"
	"github.com/stratafs/strata/test/fixture"
)

// TestContainerd runs images through real containerd with strata as its
// snapshotter. The subtests share one bench (registry, daemon, containerd)
// and run in order: restart works on what lazy pulled.
func TestContainerd(t *testing.T) {
	e := startCtdEnv(t)
	busybox := busyboxLayer(t)

	// ≥ 200 MB of incompressible data the container never reads whole,
	// plus small files it checksums.
	data := fixture.LayerSpec{
		fixture.Dir("data"), fixture.Reg("data/big0", 100<<20, 1), fixture.Reg("data/big1", 100<<20, 2),
		fixture.Dir("small"), fixture.Reg("small/a.bin", 4096, 10), fixture.Reg("small/b.bin", 300<<10, 11),
		fixture.Text("small/hello.txt", "hello from strata\n"),
	}
	const script = "cd / && sha256sum small/a.bin small/b.bin small/hello.txt && head -c 1048576 data/big1 | sha256sum"
	want := sumLines(data, "small/a.bin", "small/b.bin", "small/hello.txt") +
		fmt.Sprintf("%s  -\n", sha256Of(io.LimitReader(fileOf(data, "data/big1").Reader(), 1<<20)))

	lazyRef, lazySize := e.pushImage(t, "lazy", []fixture.LayerSpec{busybox, data}, fixture.FormEStargz)
	if lazySize < 200<<20 {
		t.Fatalf("test image is %d bytes, want ≥ 200 MiB", lazySize)
	}

	t.Run("lazy", func(t *testing.T) {
		e.proxy.ResetStats()
		out := e.pull(t, lazyRef)
		if !strings.Contains(out, "2 layers, 2 mounted lazily") {
			t.Errorf("pull did not mount both layers lazily:\n%s", out)
		}
		if got := e.run(t, lazyRef, "lazy-1", script); got != want {
			t.Errorf("container printed\n%s\nwant\n%s", got, want)
		}
		st := e.proxy.Stats()
		t.Logf("registry sent %d blob bytes in %d requests for a %d-byte image (%.2f%%)",
			st.BlobBytes, st.BlobRequests, lazySize, 100*float64(st.BlobBytes)/float64(lazySize))
		if st.BlobBytes >= lazySize/10 {
			t.Errorf("registry sent %d blob bytes, want < 10%% of %d", st.BlobBytes, lazySize)
		}
		if n := len(e.layerMounts(t)); n != 2 {
			t.Errorf("%d layer mounts after pulling a 2-layer image, want 2", n)
		}
		// strata ls shows the layers served to containerd, with the image.
		ls, err := exec.Command(e.bin, "ls", "--config", e.cfg, "--socket", e.control).CombinedOutput()
		if err != nil {
			t.Fatalf("strata ls: %v\n%s", err, ls)
		}
		if !strings.Contains(string(ls), "containerd snapshots served lazily: 2") ||
			strings.Count(string(ls), lazyRef+" (cri)") != 2 || !strings.Contains(string(ls), "estargz, lazily") {
			t.Errorf("strata ls does not list the 2 layers served for %s:\n%s", lazyRef, ls)
		}
	})

	// containerd collects each snapshotter name's garbage on its own: a
	// snapshot prepared and removed under "stargz" has its collector walk
	// that name's snapshotter and remove what the name's metadata does not
	// know. Under "strata" the image's snapshots must stay (with one
	// socket for both names, they all went, active ones too).
	t.Run("names", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		list := func() string {
			out, err := e.ctd.Ctr(ctx, "snapshots", "--snapshotter", tcontainerd.Snapshotter, "ls")
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		before := list()
		// The stargz snapshotter's snapshot directories: `ctr snapshots
		// rm` drops the record, the collection the snapshot itself.
		stargzSnapshots := func() int {
			ents, err := os.ReadDir(filepath.Join(e.root, "snapshotter-stargz", "snapshots"))
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			return len(ents)
		}
		for _, args := range [][]string{{"prepare", "gc-probe"}, {"rm", "gc-probe"}} {
			if out, err := e.ctd.Ctr(ctx, append([]string{"snapshots", "--snapshotter", tcontainerd.StargzName}, args...)...); err != nil {
				t.Fatalf("ctr snapshots %v under %s: %v\n%s", args, tcontainerd.StargzName, err, out)
			}
			if args[0] == "prepare" && stargzSnapshots() != 1 {
				t.Fatalf("%d snapshots of the %s snapshotter after a prepare, want 1", stargzSnapshots(), tcontainerd.StargzName)
			}
		}
		for stargzSnapshots() > 0 && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond) // the collection is scheduled, not immediate
		}
		if ctx.Err() != nil {
			t.Fatalf("containerd never collected the %s snapshotter's garbage", tcontainerd.StargzName)
		}
		if after := list(); after != before {
			t.Fatalf("%s's snapshots changed when %s's garbage was collected:\nbefore\n%s\nafter\n%s", tcontainerd.Snapshotter, tcontainerd.StargzName, before, after)
		}
		if got := e.run(t, lazyRef, "names-1", script); got != want {
			t.Errorf("container printed\n%s\nwant\n%s", got, want)
		}
	})

	t.Run("restart", func(t *testing.T) {
		before := e.proxy.Stats().BlobBytes
		e.stopDaemon(t, syscall.SIGKILL)
		e.startDaemon(t)
		e.waitSnapshotter(t)
		log, _ := os.ReadFile(filepath.Join(e.root, "daemon.log"))
		if n := strings.Count(string(log), "remote layer restored"); n != 2 {
			t.Errorf("daemon log reports %d remote layers restored, want 2", n)
		}
		if got := e.run(t, lazyRef, "lazy-2", script); got != want {
			t.Errorf("after restart the container printed\n%s\nwant\n%s", got, want)
		}
		if after := e.proxy.Stats().BlobBytes; after != before {
			t.Errorf("registry sent %d more blob bytes after the restart for reads already cached", after-before)
		}
		if n := len(e.layerMounts(t)); n != 2 {
			t.Errorf("%d layer mounts after restart, want 2", n)
		}
	})

	t.Run("record", func(t *testing.T) {
		// A container asks, by a snapshot label, for what it opens to be
		// recorded; its removal (--rm) ends the recording and keeps the
		// list with the image, as `strata mount --record` does.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := e.ctd.Ctr(ctx, "run", "--rm", "--snapshotter", tcontainerd.Snapshotter,
			"--snapshotter-label", "containerd.io/snapshot/strata.record=5m", lazyRef, "record-1",
			"/bin/sh", "-c", "cat /small/hello.txt /small/a.bin > /dev/null"); err != nil {
			t.Fatalf("ctr run: %v\n%s", err, out)
		}
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(e.daemonLog(), "recorded prefetch list kept") {
			if time.Now().After(deadline) {
				t.Fatalf("no list kept after the container was removed; daemon log:\n%s", e.daemonLog())
			}
			time.Sleep(50 * time.Millisecond)
		}
		var line string
		for _, l := range strings.Split(e.daemonLog(), "\n") {
			if strings.Contains(l, "recorded prefetch list kept") {
				line = l
			}
		}
		if strings.Contains(line, "files=0 ") {
			t.Errorf("the recording saw no file: %s", line)
		}
		t.Log(line)
	})

	t.Run("gzip", func(t *testing.T) {
		small := fixture.LayerSpec{fixture.Dir("small"), fixture.Reg("small/g.bin", 128<<10, 20)}
		ref, _ := e.pushImage(t, "plain", []fixture.LayerSpec{busybox, small}, fixture.FormGzip)
		mounts := len(e.layerMounts(t))
		out := e.pull(t, ref)
		if !strings.Contains(out, "2 layers, 0 mounted lazily, 2 unpacked locally") {
			t.Errorf("pull output does not say both layers were unpacked locally:\n%s", out)
		}
		if got, want := e.run(t, ref, "gzip-1", "cd / && sha256sum small/g.bin"), sumLines(small, "small/g.bin"); got != want {
			t.Errorf("container printed %q, want %q", got, want)
		}
		if n := len(e.layerMounts(t)); n != mounts {
			t.Errorf("a gzip image added %d layer mounts", n-mounts)
		}
	})

	t.Run("gzip indexed", func(t *testing.T) {
		// Another machine ran `strata index`: containerd's pull mounts
		// the plain gzip layers lazily from the pushed indexes.
		small := fixture.LayerSpec{fixture.Dir("small"), fixture.Reg("small/i.bin", 128<<10, 21)}
		// busybox on top: below, its chain would be the "gzip" subtest's,
		// which containerd unpacked already and does not prepare again.
		ref, _ := e.pushImage(t, "plain-indexed", []fixture.LayerSpec{small, busybox}, fixture.FormGzip)
		indexImage(t, ref)
		mounts := len(e.layerMounts(t))
		out := e.pull(t, ref)
		if !strings.Contains(out, "2 layers, 2 mounted lazily") {
			t.Errorf("pull did not mount both gzip layers lazily from their indexes:\n%s", out)
		}
		if got, want := e.run(t, ref, "gzip-indexed-1", "cd / && sha256sum small/i.bin"), sumLines(small, "small/i.bin"); got != want {
			t.Errorf("container printed %q, want %q", got, want)
		}
		if n := len(e.layerMounts(t)); n != mounts+2 {
			t.Errorf("an indexed gzip image added %d layer mounts, want 2", n-mounts)
		}
	})

	t.Run("shared base", func(t *testing.T) {
		base := append(fixture.LayerSpec{fixture.Dir("shared"), fixture.Reg("shared/blob", 16<<20, 7)}, busybox...)
		refA, _ := e.pushImage(t, "shared-a", []fixture.LayerSpec{base, {fixture.Text("a.txt", "A\n")}}, fixture.FormEStargz)
		refB, _ := e.pushImage(t, "shared-b", []fixture.LayerSpec{base, {fixture.Text("b.txt", "B\n")}}, fixture.FormEStargz)
		mounts := len(e.layerMounts(t))
		e.pull(t, refA)
		e.pull(t, refB)
		if n := len(e.layerMounts(t)) - mounts; n != 3 {
			t.Errorf("two images sharing their base added %d layer mounts, want 3 (base, A, B)", n)
		}
		want := sumLines(base, "shared/blob")
		e.proxy.ResetStats()
		if got := e.run(t, refA, "shared-a", "cd / && sha256sum shared/blob"); got != want {
			t.Errorf("A printed %q, want %q", got, want)
		}
		first := e.proxy.Stats().BlobBytes
		if got := e.run(t, refB, "shared-b", "cd / && sha256sum shared/blob"); got != want {
			t.Errorf("B printed %q, want %q", got, want)
		}
		if first < 16<<20 {
			t.Errorf("reading the shared 16 MiB file moved only %d blob bytes; the test reads nothing?", first)
		}
		if again := e.proxy.Stats().BlobBytes - first; again != 0 {
			t.Errorf("reading the shared file through the second image fetched %d more blob bytes, want 0", again)
		}
	})

	t.Run("record shared layer", func(t *testing.T) {
		// An image whose top layer another image shares, pulled after
		// that image: its layer snapshot names the other image, and a
		// container of it records nothing rather than a list for the
		// other image.
		base := fixture.LayerSpec{fixture.Dir("rec"), fixture.Text("rec/base.txt", "base\n")}
		baseRef, _ := e.pushImage(t, "rec-base", []fixture.LayerSpec{busybox, base}, fixture.FormEStargz)
		appRef, _ := e.pushImage(t, "rec-app", []fixture.LayerSpec{busybox, base, {fixture.Text("app.txt", "app\n")}}, fixture.FormEStargz)
		e.pull(t, appRef)
		e.pull(t, baseRef)
		kept := strings.Count(e.daemonLog(), "recorded prefetch list kept")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := e.ctd.Ctr(ctx, "run", "--rm", "--snapshotter", tcontainerd.Snapshotter,
			"--snapshotter-label", "containerd.io/snapshot/strata.record=5m", baseRef, "record-shared",
			"/bin/sh", "-c", "cat /rec/base.txt > /dev/null"); err != nil {
			t.Fatalf("ctr run: %v\n%s", err, out)
		}
		if !strings.Contains(e.daemonLog(), "cannot tell the container's image") {
			t.Errorf("the daemon does not say it cannot tell the container's image; log:\n%s", e.daemonLog())
		}
		if n := strings.Count(e.daemonLog(), "recorded prefetch list kept"); n != kept {
			t.Errorf("%d lists kept for a container of a shared layer, want none", n-kept)
		}
	})

	t.Run("index containerd layers", func(t *testing.T) {
		// Configured to, the daemon indexes gzip layers that have no
		// pushed index itself (reading each once) instead of leaving
		// them to containerd's unpack.
		cfg, err := os.ReadFile(e.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(e.cfg, append(cfg, "index_containerd_layers = true\n"...), 0o600); err != nil {
			t.Fatal(err)
		}
		e.stopDaemon(t, syscall.SIGTERM)
		e.startDaemon(t)
		e.waitSnapshotter(t)
		small := fixture.LayerSpec{fixture.Dir("small"), fixture.Reg("small/x.bin", 64<<10, 23)}
		// A busybox layer of its own: the one of the images above was
		// imported with an index another repository pushed, which
		// this repository's image is not served through (it would be
		// unpacked by containerd, correctly, while that is mounted).
		own := append(slices.Clone(busybox), fixture.Text("self-indexed.txt", "x\n"))
		ref, _ := e.pushImage(t, "plain-self-indexed", []fixture.LayerSpec{small, own}, fixture.FormGzip)
		out := e.pull(t, ref)
		if !strings.Contains(out, "2 layers, 2 mounted lazily") {
			t.Errorf("pull did not mount both gzip layers lazily:\n%s", out)
		}
		if got, want := e.run(t, ref, "self-indexed-1", "cd / && sha256sum small/x.bin"), sumLines(small, "small/x.bin"); got != want {
			t.Errorf("container printed %q, want %q", got, want)
		}
	})
}

// pushImage builds layers in form, pushes them to the registry and returns
// the reference through the counting proxy and the image's blob bytes.
func (e *ctdEnv) pushImage(t *testing.T, repo string, layers []fixture.LayerSpec, form fixture.Form, opts ...fixture.Option) (string, int64) {
	t.Helper()
	start := time.Now()
	ctx := context.Background()
	img, err := fixture.Build(ctx, layers, form, append([]fixture.Option{fixture.WithTempDir(t.TempDir())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ref := e.reg.Ref(repo, "v1")
	if _, err := fixture.Push(ctx, img, ref); err != nil {
		t.Fatal(err)
	}
	size := imageSize(t, img)
	t.Logf("pushed %s (%s, %d bytes) in %s", ref, form, size, time.Since(start).Round(time.Millisecond))
	return strings.Replace(ref, e.reg.Host(), e.proxy.Host(), 1), size
}

func imageSize(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// busyboxLayer is a layer with busybox as /bin/sh and the tools tests use.
func busyboxLayer(t *testing.T) fixture.LayerSpec {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := tcontainerd.EnsureBusybox(ctx); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(tcontainerd.Busybox)
	if err != nil {
		t.Fatal(err)
	}
	spec := fixture.LayerSpec{fixture.Dir("bin"), {Path: "bin/busybox", Type: fixture.TypeReg, Mode: 0o755, Data: bin}}
	for _, tool := range []string{"sh", "sha256sum", "head", "cat"} {
		spec = append(spec, fixture.Symlink("bin/"+tool, "busybox"))
	}
	return spec
}

func fileOf(spec fixture.LayerSpec, path string) fixture.File {
	for _, f := range spec {
		if f.Path == path {
			return f
		}
	}
	panic("fixture has no " + path)
}

// sumLines is what `sha256sum paths...` prints for the files of spec.
func sumLines(spec fixture.LayerSpec, paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&b, "%s  %s\n", sha256Of(fileOf(spec, p).Reader()), p)
	}
	return b.String()
}

func sha256Of(r io.Reader) string {
	h := sha256.New()
	io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil))
}
