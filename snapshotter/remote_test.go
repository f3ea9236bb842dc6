package snapshotter_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/stratafs/strata/snapshotter"
)

// remoteFixture is a snapshotter with two remote layers available:
// sha256:l1 (base) and sha256:l2 (which overrides /etc/version).
type remoteFixture struct {
	base   string
	root   string
	layers *bindLayers
	sn     *snapshotter.Snapshotter
}

func newRemoteFixture(t *testing.T) *remoteFixture {
	t.Helper()
	requireRoot(t)
	base := testRoot(t)
	layers := newBindLayers(map[string]string{
		"sha256:l1": makeLayer(t, base, "l1", map[string]string{"bin/tool": "tool v1\n", "etc/version": "1\n"}),
		"sha256:l2": makeLayer(t, base, "l2", map[string]string{"etc/version": "2\n", "app/main": "main\n"}),
	})
	f := &remoteFixture{base: base, root: filepath.Join(base, "root"), layers: layers}
	f.sn = f.open(t, layers)
	return f
}

func (f *remoteFixture) open(t *testing.T, layers snapshotter.RemoteLayers) *snapshotter.Snapshotter {
	t.Helper()
	sn, err := snapshotter.New(f.root, snapshotter.WithRemoteLayers(layers))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn
}

// pullRemote does what containerd's unpacker does for a remote layer and
// expects the remote protocol's answer; it returns the name of the
// committed snapshot, found as containerd's metadata layer finds it: by its
// target label and its parent.
func (f *remoteFixture) pullRemote(ctx context.Context, t *testing.T, key, parent, chainID, digest string) string {
	t.Helper()
	_, err := f.sn.Prepare(ctx, key, parent, remoteLabels(chainID, digest))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare %s: got %v, want ErrAlreadyExists", key, err)
	}
	return committedTarget(ctx, t, f.sn, chainID, parent)
}

// committedTarget is the committed snapshot of target label chainID above
// parent, as containerd finds it after ErrAlreadyExists.
func committedTarget(ctx context.Context, t *testing.T, sn snapshots.Snapshotter, chainID, parent string) string {
	t.Helper()
	var found []string
	err := sn.Walk(ctx, func(ctx context.Context, i snapshots.Info) error {
		if i.Kind == snapshots.KindCommitted && i.Labels[snapshots.LabelSnapshotRef] == chainID && i.Parent == parent {
			found = append(found, i.Name)
		}
		return nil
	})
	if err != nil || len(found) != 1 {
		t.Fatalf("committed snapshots of target %s above %q: %q, %v; want one", chainID, parent, found, err)
	}
	return found[0]
}

// mountDirOf returns the dir the fake was asked to mount for the n-th time.
func (b *bindLayers) mountDir(t *testing.T, n int) string {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.calls {
		if dir, ok := strings.CutPrefix(c, "mount "); ok {
			if n == 0 {
				return dir
			}
			n--
		}
	}
	t.Fatalf("no mount call #%d in %v", n, b.calls)
	return ""
}

func TestRemotePrepareCommitsAndChildSeesFiles(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()

	f.pullRemote(ctx, t, "extract-1 l1", "", "chain-l1", "sha256:l1")
	l2 := f.pullRemote(ctx, t, "extract-2 l2", "chain-l1", "chain-l2", "sha256:l2")

	info, err := f.sn.Stat(ctx, l2)
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshots.KindCommitted || info.Parent != "chain-l1" {
		t.Fatalf("chain-l2: kind %v parent %q, want committed on chain-l1", info.Kind, info.Parent)
	}
	if info.Labels[snapshotter.LabelRemote] == "" || info.Labels[snapshots.LabelSnapshotRef] != "chain-l2" ||
		info.Labels[snapshotter.LabelImageRef] != "registry.test/app:1" {
		t.Fatalf("chain-l2 labels not kept: %v", info.Labels)
	}
	if _, err := f.sn.Stat(ctx, "extract-2 l2"); !errdefs.IsNotFound(err) {
		t.Fatalf("extraction key still exists: %v", err)
	}
	if u, err := f.sn.Usage(ctx, l2); err != nil || u.Size != 0 {
		t.Fatalf("usage of remote layer: %+v, %v; want 0 (never walked)", u, err)
	}

	// The same layer again (another image sharing it): answered at once.
	_, err = f.sn.Prepare(ctx, "extract-3 l1", "", remoteLabels("chain-l1", "sha256:l1"))
	if !errdefs.IsAlreadyExists(err) || f.layers.count("mount", "") != 2 {
		t.Fatalf("second Prepare of chain-l1: %v after %d mounts; want ErrAlreadyExists and no new mount", err, f.layers.count("mount", ""))
	}

	ms, err := f.sn.Prepare(ctx, "container", l2)
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountAt(t, f.base, ms)
	if got := readFile(t, filepath.Join(rootfs, "etc/version")); got != "2\n" {
		t.Errorf("etc/version = %q, want the upper layer's", got)
	}
	if got := readFile(t, filepath.Join(rootfs, "bin/tool")); got != "tool v1\n" {
		t.Errorf("bin/tool = %q", got)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc/version"), []byte("3\n"), 0o644); err != nil {
		t.Fatalf("container cannot write over a remote layer: %v", err)
	}
	if got := readFile(t, filepath.Join(f.layers.sources["sha256:l2"], "etc/version")); got != "2\n" {
		t.Fatalf("write reached the remote layer: %q", got)
	}
}

// containerd's metadata layer may replace all labels of a snapshot; the
// remote mark must survive it, or Restore would forget the layer.
func TestRemoteLabelSurvivesLabelReplacement(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.pullRemote(ctx, t, "extract-1", "", "chain-l1", "sha256:l1")
	info, err := f.sn.Update(ctx, snapshots.Info{Name: "chain-l1", Labels: map[string]string{"only": "this"}})
	if err != nil {
		t.Fatal(err)
	}
	if info.Labels["only"] != "this" || info.Labels[snapshotter.LabelRemote] == "" {
		t.Fatalf("labels after replacement: %v", info.Labels)
	}
	if info, err = f.sn.Stat(ctx, "chain-l1"); err != nil || info.Labels[snapshotter.LabelRemote] == "" {
		t.Fatalf("stored labels after replacement: %v, %v", info.Labels, err)
	}
}

func TestRemoteViews(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.pullRemote(ctx, t, "extract-1", "", "chain-l1", "sha256:l1")
	l2 := f.pullRemote(ctx, t, "extract-2", "chain-l1", "chain-l2", "sha256:l2")

	for _, parent := range []string{"chain-l1", l2} {
		ms, err := f.sn.View(ctx, "view-"+parent, parent)
		if err != nil {
			t.Fatal(err)
		}
		view := mountAt(t, f.base, ms)
		if got := readFile(t, filepath.Join(view, "bin/tool")); got != "tool v1\n" {
			t.Errorf("view of %s: bin/tool = %q", parent, got)
		}
		err = os.WriteFile(filepath.Join(view, "new"), nil, 0o644)
		if !errors.Is(err, os.ErrPermission) && !strings.Contains(fmt.Sprint(err), "read-only") {
			t.Errorf("view of %s is writable: %v", parent, err)
		}
	}
}

// TestRemoteLayerAboveLocalParentsPerParent: one chain ID above two
// different parents (the same image pulled into two namespaces, whose
// lower layers were unpacked locally, each namespace's own) is a remote
// snapshot for each, found as containerd finds it (target label and
// parent); above remote parents it is one, shared.
func TestRemoteLayerAboveLocalParentsPerParent(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	var tops []string
	for _, ns := range []string{"ns1", "ns2"} {
		// The namespace's own locally unpacked bottom layer.
		if _, err := f.sn.Prepare(ctx, ns+"/extract-base", ""); err != nil {
			t.Fatal(err)
		}
		if err := f.sn.Commit(ctx, ns+"/base", ns+"/extract-base"); err != nil {
			t.Fatal(err)
		}
		tops = append(tops, f.pullRemote(ctx, t, ns+"/extract-top", ns+"/base", "chain-top", "sha256:l2"))
	}
	if tops[0] == tops[1] {
		t.Errorf("one remote snapshot %s above two parents", tops[0])
	}
	for i, top := range tops {
		ms, err := f.sn.View(ctx, fmt.Sprintf("view-%d", i), top)
		if err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(mountAt(t, f.base, ms), "app/main")); got != "main\n" {
			t.Errorf("%s: app/main = %q", top, got)
		}
	}
	// Above a remote parent: one snapshot, whoever asks.
	f.pullRemote(ctx, t, "ns1/extract-l1", "", "chain-l1", "sha256:l1")
	a := f.pullRemote(ctx, t, "ns1/extract-l2", "chain-l1", "chain-l2", "sha256:l2")
	mounts := f.layers.count("mount", "")
	b := f.pullRemote(ctx, t, "ns2/extract-l2", "chain-l1", "chain-l2", "sha256:l2")
	if a != b || f.layers.count("mount", "") != mounts {
		t.Errorf("the same layer above the same remote parent: %s and %s, %d mounts after %d", a, b, f.layers.count("mount", ""), mounts)
	}
}

func TestRemoteFallsBackToLocal(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.layers.notRemote["sha256:plain"] = fmt.Errorf("gzip without index: %w", snapshotter.ErrNotRemote)
	f.layers.notRemote["sha256:broken"] = errors.New("registry said 500")

	for i, digest := range []string{"sha256:plain", "sha256:broken"} {
		key := fmt.Sprintf("extract-%d", i)
		ms, err := f.sn.Prepare(ctx, key, "", remoteLabels("chain-"+digest, digest))
		if err != nil {
			t.Fatalf("Prepare %s: %v, want local fallback", digest, err)
		}
		// containerd now unpacks into the mounts and commits.
		target := mountAt(t, f.base, ms)
		if err := os.WriteFile(filepath.Join(target, "unpacked"), []byte(digest), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := f.sn.Commit(ctx, "chain-"+digest, key); err != nil {
			t.Fatal(err)
		}
		info, err := f.sn.Stat(ctx, "chain-"+digest)
		if err != nil || info.Labels[snapshotter.LabelRemote] != "" {
			t.Fatalf("fallback snapshot %s: %+v, %v; want a local committed snapshot", digest, info, err)
		}
		if u, err := f.sn.Usage(ctx, "chain-"+digest); err != nil || u.Size == 0 {
			t.Fatalf("usage of local layer: %+v, %v", u, err)
		}
	}
}

func TestRemoteMountThatLeavesLitterIsNotUsedLocally(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.layers.litter["sha256:messy"] = true
	_, err := f.sn.Prepare(ctx, "extract-1", "", remoteLabels("chain-messy", "sha256:messy"))
	if err == nil || errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare after a mount that wrote into dir: %v, want a failure", err)
	}
	if _, err := f.sn.Stat(ctx, "extract-1"); !errdefs.IsNotFound(err) {
		t.Fatalf("failed key kept: %v", err)
	}
	// The key is free again for containerd's retry.
	delete(f.layers.litter, "sha256:messy")
	f.layers.sources["sha256:messy"] = f.layers.sources["sha256:l1"]
	f.pullRemote(ctx, t, "extract-1", "", "chain-messy", "sha256:messy")
}

func TestRemoteRemoveUnmounts(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.pullRemote(ctx, t, "extract-1", "", "chain-l1", "sha256:l1")
	dir := f.layers.mountDir(t, 0)

	if err := f.sn.Remove(ctx, "chain-l1"); err != nil {
		t.Fatal(err)
	}
	if f.layers.count("unmount", dir) != 1 {
		t.Fatalf("calls %v: want one unmount of %s", f.layers.calls, dir)
	}
	if _, err := os.Stat(filepath.Dir(dir)); !os.IsNotExist(err) {
		t.Fatalf("snapshot directory left: %v", err)
	}
	if got := readFile(t, filepath.Join(f.layers.sources["sha256:l1"], "bin/tool")); got != "tool v1\n" {
		t.Fatalf("removal reached into the layer source: %q", got)
	}
}

// A restarted daemon does not unmount its predecessor's layers; removal must
// still never delete through the mount.
func TestRemoveDetachesMountsRemoteLayersForgot(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.pullRemote(ctx, t, "extract-1", "", "chain-l1", "sha256:l1")
	dir := f.layers.mountDir(t, 0)
	f.sn.Close()

	amnesiac := newBindLayers(nil)
	sn := f.open(t, amnesiac)
	if err := sn.Remove(ctx, "chain-l1"); err != nil {
		t.Fatal(err)
	}
	if amnesiac.count("unmount", dir) != 1 {
		t.Fatalf("calls %v: want Unmount of %s", amnesiac.calls, dir)
	}
	if _, err := os.Stat(filepath.Dir(dir)); !os.IsNotExist(err) {
		t.Fatalf("snapshot directory left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.layers.sources["sha256:l1"], "bin/tool")); err != nil {
		t.Fatalf("removal reached into the layer source: %v", err)
	}
}

func TestRemoteConcurrentPrepareOfOneLayer(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	var arrived sync.WaitGroup
	arrived.Add(2)
	f.layers.beforeMount = func() {
		arrived.Done()
		waitTimeout(t, &arrived, 10*time.Second)
	}
	errs := make(chan error, 2)
	for i := range 2 {
		go func() {
			_, err := f.sn.Prepare(ctx, fmt.Sprintf("extract-%d", i), "", remoteLabels("chain-l1", "sha256:l1"))
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; !errdefs.IsAlreadyExists(err) {
			t.Fatalf("concurrent Prepare: %v, want ErrAlreadyExists", err)
		}
	}
	var keys []string
	if err := f.sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		keys = append(keys, i.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "chain-l1" {
		t.Fatalf("snapshots after race: %v, want only chain-l1", keys)
	}
	if f.layers.count("unmount", "") != 1 {
		t.Fatalf("calls %v: the loser's mount must be released", f.layers.calls)
	}
}

func waitTimeout(t *testing.T, wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Error("timed out waiting for the other Prepare")
	}
}
