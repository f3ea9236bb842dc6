package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stratafs/strata/fs"
	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/snapshotter"
	"github.com/stratafs/strata/store"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/registry"
)

// newTestLayers is a daemon with just a store and a pool, which is all
// snapshotLayers uses.
func newTestLayers(t *testing.T) *snapshotLayers {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounts FUSE layers: run as root")
	}
	root := t.TempDir()
	st, err := store.Open(root, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	d := &Daemon{store: st, cfg: DefaultConfig()}
	d.images = &images{d: d, mounts: map[string]*Mount{}}
	if d.pool, err = fs.NewPool(st, filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.pool.Close() })
	return newSnapshotLayers(d)
}

// pushFixture pushes a one-file image and returns its ref, manifest
// digest and layer digest.
func pushFixture(t *testing.T, reg *registry.Registry, repo string, form fixture.Form) (ref string, manifest, layer digest.Digest) {
	t.Helper()
	ctx := context.Background()
	img, err := fixture.Build(ctx, []fixture.LayerSpec{{fixture.Text("hello.txt", "hello\n")}}, form, fixture.WithTempDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	ref = reg.Ref(repo, "v1")
	md, err := fixture.Push(ctx, img, ref)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ld, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return ref, digest.Digest(md), digest.Digest(ld.String())
}

func labelsOf(ref string, manifest, layer digest.Digest) map[string]string {
	return map[string]string{
		snapshotter.LabelImageRef:       ref,
		snapshotter.LabelLayerDigest:    layer.String(),
		snapshotter.LabelManifestDigest: manifest.String(),
	}
}

func TestSnapshotLayersMountCheckUnmount(t *testing.T) {
	s := newTestLayers(t)
	reg := registry.StartInProcess(t)
	ref, md, ld := pushFixture(t, reg, "lazy", fixture.FormEStargz)
	ctx := context.Background()
	dir := t.TempDir()
	t.Cleanup(func() { kmount.Unmount(dir) })

	if err := s.Check(ctx, dir, nil); err == nil {
		t.Error("Check of an empty directory succeeded")
	}
	if err := s.Mount(ctx, dir, labelsOf(ref, md, ld)); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "hello.txt")); err != nil || string(b) != "hello\n" {
		t.Errorf("hello.txt = %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644); err == nil {
		t.Error("the layer mount is writable")
	}
	if err := s.Check(ctx, dir, nil); err != nil {
		t.Errorf("Check of a live mount: %v", err)
	}
	if _, err := s.d.store.Blobs.Get(md); err != nil {
		t.Errorf("manifest not kept in the store: %v", err)
	}
	if err := s.Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if kmount.IsMountpoint(dir) {
		t.Error("still mounted after Unmount")
	}
	if n := len(s.d.pool.Stats()); n != 0 {
		t.Errorf("pool holds %d layers after Unmount", n)
	}
	if err := s.Check(ctx, dir, nil); err == nil {
		t.Error("Check succeeded after Unmount")
	}
}

func TestSnapshotLayersNotRemote(t *testing.T) {
	s := newTestLayers(t)
	reg := registry.StartInProcess(t)
	ref, md, ld := pushFixture(t, reg, "plain", fixture.FormGzip)
	ctx := context.Background()
	for name, labels := range map[string]map[string]string{
		"gzip layer":    labelsOf(ref, md, ld),
		"no labels":     {},
		"bad digest":    {snapshotter.LabelImageRef: ref, snapshotter.LabelLayerDigest: "sha256:zz"},
		"bad image ref": {snapshotter.LabelImageRef: "UPPER/case:x", snapshotter.LabelLayerDigest: ld.String()},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			err := s.Mount(ctx, dir, labels)
			if !errors.Is(err, snapshotter.ErrNotRemote) {
				t.Errorf("Mount = %v, want ErrNotRemote", err)
			}
			if kmount.IsMountpoint(dir) {
				kmount.Unmount(dir)
				t.Error("a failed Mount left a mount")
			}
		})
	}
	// A layer that is not in the manifest is an error, not a fallback.
	other := digest.FromString("other")
	if err := s.Mount(ctx, t.TempDir(), labelsOf(ref, md, other)); err == nil || errors.Is(err, snapshotter.ErrNotRemote) {
		t.Errorf("Mount of a layer missing from the manifest = %v", err)
	}
}

// BuildKit, nerdctl and ctr-remote name the layer with stargz-snapshotter's
// labels and the image by tag only: the layer mounts the same.
func TestSnapshotLayersStargzLabels(t *testing.T) {
	s := newTestLayers(t)
	reg := registry.StartInProcess(t)
	ref, _, ld := pushFixture(t, reg, "lazy", fixture.FormEStargz)
	ctx := context.Background()
	dir := t.TempDir()
	t.Cleanup(func() { kmount.Unmount(dir) })
	labels := map[string]string{
		snapshotter.LabelStargzRef:    ref,
		snapshotter.LabelStargzDigest: ld.String(),
		snapshotter.LabelStargzLayers: ld.String(),
	}
	counted := func(result string) float64 {
		return testutil.ToFloat64(metricContainerdLayers.WithLabelValues(snapshotter.ClientStargz, result))
	}
	lazy, unpacked := counted("lazy"), counted("unpacked")
	if err := s.Mount(ctx, dir, labels); err != nil {
		t.Fatal(err)
	}
	if n := counted("lazy") - lazy; n != 1 {
		t.Errorf("strata_containerd_layers_total{client=stargz,result=lazy} grew by %v, want 1", n)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "hello.txt")); err != nil || string(b) != "hello\n" {
		t.Errorf("hello.txt = %q, %v", b, err)
	}
	if err := s.Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
	// A tag that no longer holds the layer: the client unpacks it itself.
	labels[snapshotter.LabelStargzDigest] = digest.FromString("moved").String()
	if err := s.Mount(ctx, t.TempDir(), labels); !errors.Is(err, snapshotter.ErrNotRemote) {
		t.Errorf("Mount of a layer the tag no longer holds = %v, want ErrNotRemote", err)
	}
	if n := counted("unpacked") - unpacked; n != 1 {
		t.Errorf("strata_containerd_layers_total{client=stargz,result=unpacked} grew by %v, want 1", n)
	}
}

// TestSnapshotLayersDigestRefOffline: a layer whose labels pin the image by
// digest (BuildKit's stargz.reference) mounts again from the store with
// the registry gone: the manifest it names is the one stored at the first
// mount, no lookup needed.
func TestSnapshotLayersDigestRefOffline(t *testing.T) {
	s := newTestLayers(t)
	reg := registry.StartInProcess(t)
	ref, md, ld := pushFixture(t, reg, "pinned", fixture.FormEStargz)
	pinned := reg.Host() + "/pinned@" + md.String()
	ctx := context.Background()
	labels := map[string]string{
		snapshotter.LabelStargzRef:    pinned,
		snapshotter.LabelStargzDigest: ld.String(),
		snapshotter.LabelStargzLayers: ld.String(),
	}
	read := func(dir string) {
		t.Helper()
		if b, err := os.ReadFile(filepath.Join(dir, "hello.txt")); err != nil || string(b) != "hello\n" {
			t.Errorf("hello.txt = %q, %v", b, err)
		}
	}
	dir := t.TempDir()
	t.Cleanup(func() { kmount.Unmount(dir) })
	if err := s.Mount(ctx, dir, labels); err != nil {
		t.Fatal(err)
	}
	read(dir)
	if err := s.Unmount(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	again := t.TempDir()
	t.Cleanup(func() { kmount.Unmount(again) })
	if err := s.Mount(ctx, again, labels); err != nil {
		t.Fatalf("mounting %s again with its registry gone: %v", ref, err)
	}
	read(again)
	if err := s.Unmount(ctx, again); err != nil {
		t.Fatal(err)
	}
}

// TestWritableLayersAreNoContainerdClient: the layers of Strata's own
// writable mounts and build steps (the snapshotLayers that fetch whole)
// are not counted as a containerd client's.
func TestWritableLayersAreNoContainerdClient(t *testing.T) {
	s := newTestLayers(t)
	s.describe = func(context.Context, map[string]string) (name.Repository, remote.Layer, []remote.Option, error) {
		return name.Repository{}, remote.Layer{}, nil, errors.New("no layer")
	}
	failed := func() float64 {
		return testutil.ToFloat64(metricContainerdLayers.WithLabelValues("none", "failed"))
	}
	before := failed()
	s.Mount(context.Background(), t.TempDir(), nil)
	if n := failed() - before; n != 1 {
		t.Fatalf("a containerd client's layer counted %v times, want 1", n)
	}
	s.whole = true
	s.Mount(context.Background(), t.TempDir(), nil)
	if n := failed() - before; n != 1 {
		t.Errorf("a writable mount's layer was counted as a containerd client's")
	}
}
