package snapshotter_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Reopening with the daemon still serving: Restore only checks.
func TestRestoreHealthyLayersOnlyChecks(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.pullRemote(ctx, t, "extract-1", "", "chain-l1", "sha256:l1")
	dir := f.layers.mountDir(t, 0)
	if err := f.sn.Close(); err != nil {
		t.Fatal(err)
	}

	sn := f.open(t, f.layers)
	if err := sn.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if f.layers.count("check", dir) != 1 || f.layers.count("mount", "") != 1 {
		t.Fatalf("calls %v: want one Check and no new Mount", f.layers.calls)
	}
}

// After a daemon restart the new daemon serves nothing yet, and the old
// mounts may linger (a dead FUSE mount stays in the mount table): Restore
// must clear them and mount every remote layer again, with the labels given
// at Prepare, so that containers started afterwards see the files.
func TestRestoreAfterDaemonRestartMountsAgain(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.pullRemote(ctx, t, "extract-1", "", "chain-l1", "sha256:l1")
	l2 := f.pullRemote(ctx, t, "extract-2", "chain-l1", "chain-l2", "sha256:l2")
	dir1, dir2 := f.layers.mountDir(t, 0), f.layers.mountDir(t, 1)
	if err := f.sn.Close(); err != nil {
		t.Fatal(err)
	}
	// The old daemon died: one of its mounts is gone, the other lingers.
	if err := unix.Unmount(dir1, 0); err != nil {
		t.Fatal(err)
	}

	restarted := newBindLayers(f.layers.sources)
	sn := f.open(t, restarted)
	if err := sn.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{dir1, dir2} {
		if restarted.count("check", dir) != 1 || restarted.count("mount", dir) != 1 {
			t.Fatalf("calls %v: want Check then Mount of %s", restarted.calls, dir)
		}
	}
	// Exactly one mount each: the lingering one was cleared, not stacked on.
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir2))
	if err != nil || len(infos) != 1 {
		t.Fatalf("mounts at %s: %d (%v), want 1", dir2, len(infos), err)
	}

	ms, err := sn.Prepare(ctx, "container", l2)
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountAt(t, f.base, ms)
	if got := readFile(t, filepath.Join(rootfs, "bin/tool")); got != "tool v1\n" {
		t.Fatalf("after restore bin/tool = %q", got)
	}
	if got := readFile(t, filepath.Join(rootfs, "app/main")); got != "main\n" {
		t.Fatalf("after restore app/main = %q", got)
	}
}

// A layer that cannot come back is reported, and the others still do.
func TestRestoreReportsLayersThatCannotBeMounted(t *testing.T) {
	f := newRemoteFixture(t)
	ctx := context.Background()
	f.pullRemote(ctx, t, "extract-1", "", "chain-l1", "sha256:l1")
	l2 := f.pullRemote(ctx, t, "extract-2", "chain-l1", "chain-l2", "sha256:l2")
	f.sn.Close()
	unmountAllUnder(t, f.root)

	restarted := newBindLayers(map[string]string{"sha256:l1": f.layers.sources["sha256:l1"]})
	sn := f.open(t, restarted)
	err := sn.Restore(ctx)
	if err == nil {
		t.Fatal("Restore succeeded with a layer the daemon cannot serve")
	}
	if restarted.count("mount", "") != 2 {
		t.Fatalf("calls %v: want both layers tried", restarted.calls)
	}
	if _, err := os.Stat(filepath.Join(f.layers.mountDir(t, 0), "bin/tool")); err != nil {
		t.Fatalf("healthy layer not restored: %v", err)
	}

	// A container on the image must not get an overlay over the empty
	// directory of the layer that did not come back: that tree lacks the
	// layer's files. Prepare, View and Mounts fail naming the layer, and
	// leave no snapshot behind.
	if _, err := sn.Prepare(ctx, "container", l2); err == nil || !strings.Contains(err.Error(), "sha256:l2") || !errdefs.IsUnavailable(err) {
		t.Fatalf("Prepare on an unserved layer: %v, want an unavailable error naming sha256:l2", err)
	}
	if _, err := sn.View(ctx, "view", l2); err == nil || !strings.Contains(err.Error(), "sha256:l2") {
		t.Fatalf("View on an unserved layer: %v, want an error naming sha256:l2", err)
	}
	if _, err := sn.Stat(ctx, "container"); !errdefs.IsNotFound(err) {
		t.Fatalf("failed Prepare left snapshot container: %v", err)
	}
	// The layer's source is back (the registry answers again): the next
	// Prepare mounts it again and the container sees every layer.
	restarted.mu.Lock()
	restarted.sources["sha256:l2"] = f.layers.sources["sha256:l2"]
	restarted.mu.Unlock()
	ms, err := sn.Prepare(ctx, "container", l2)
	if err != nil {
		t.Fatalf("Prepare once the layer can be served: %v", err)
	}
	rootfs := mountAt(t, f.base, ms)
	if got := readFile(t, filepath.Join(rootfs, "app/main")); got != "main\n" {
		t.Fatalf("app/main = %q after the layer was mounted again", got)
	}
	// Tried at Restore, at the failed Prepare and View, and now.
	if restarted.count("mount", f.layers.mountDir(t, 1)) != 4 {
		t.Fatalf("calls %v: want the failed layer tried again at each Prepare and View", restarted.calls)
	}
	// Mounts of the container after its layer went away again: an
	// error, not an overlay over an empty directory.
	if err := restarted.Unmount(ctx, f.layers.mountDir(t, 1)); err != nil {
		t.Fatal(err)
	}
	restarted.mu.Lock()
	delete(restarted.sources, "sha256:l2")
	restarted.mu.Unlock()
	if _, err := sn.Mounts(ctx, "container"); err == nil || !strings.Contains(err.Error(), "sha256:l2") {
		t.Fatalf("Mounts with an unserved layer: %v, want an error naming sha256:l2", err)
	}
}
