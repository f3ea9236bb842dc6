package snapshotter_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/snapshotter"
)

func newLocal(t *testing.T) (*snapshotter.Snapshotter, string) {
	t.Helper()
	requireRoot(t)
	base := testRoot(t)
	sn, err := snapshotter.New(filepath.Join(base, "root"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn, base
}

// Cleanup must remove orphans (a crash between Mount and Commit leaves one
// with a layer mounted in it) without deleting through the mount.
func TestCleanupNeverDeletesThroughAMount(t *testing.T) {
	sn, base := newLocal(t)
	ctx := context.Background()
	precious := makeLayer(t, base, "precious", map[string]string{"keep": "me"})
	orphan := filepath.Join(base, "root", "snapshots", "999", "fs")
	if err := os.MkdirAll(orphan, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(precious, orphan, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(orphan)); !os.IsNotExist(err) {
		t.Fatalf("orphan left: %v", err)
	}
	if got := readFile(t, filepath.Join(precious, "keep")); got != "me" {
		t.Fatalf("cleanup deleted through a mount: %q", got)
	}
}

func TestCleanupKeepsLiveSnapshots(t *testing.T) {
	sn, base := newLocal(t)
	ctx := context.Background()
	ms, err := sn.Prepare(ctx, "live", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ms[0].Source, "data"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(base, "root", "snapshots", "new-123")
	if err := os.MkdirAll(filepath.Join(junk, "fs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(junk); !os.IsNotExist(err) {
		t.Fatalf("interrupted Prepare's directory left: %v", err)
	}
	if got := readFile(t, filepath.Join(ms[0].Source, "data")); got != "x" {
		t.Fatalf("live snapshot damaged: %q", got)
	}
}

// overlayfs without redirect_dir refuses to rename a directory that comes
// from a lower layer (EXDEV; tools such as mv then copy). containerd's
// overlay snapshotter has the same limit, and the conformance suite is run
// with the "overlayfs" expectation for that reason. If this test fails, the
// kernel or mount options now allow the rename, and the layer differ must
// learn overlayfs redirects before this changes.
func TestLowerDirectoryRenameIsCrossDevice(t *testing.T) {
	sn, base := newLocal(t)
	ctx := context.Background()
	ms, err := sn.Prepare(ctx, "l1-active", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(ms[0].Source, "dir1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "l1", "l1-active"); err != nil {
		t.Fatal(err)
	}
	ms, err = sn.Prepare(ctx, "l2-active", "l1")
	if err != nil {
		t.Fatal(err)
	}
	rootfs := mountAt(t, base, ms)
	err = os.Rename(filepath.Join(rootfs, "dir1"), filepath.Join(rootfs, "dir2"))
	if !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("rename of a lower directory: %v, want EXDEV", err)
	}
}

// Past the point where containerd's mount.Mount rewrites lowerdir to
// relative paths, a mount must still work.
func TestManyLayersMountThroughRelativeLowerdirs(t *testing.T) {
	sn, base := newLocal(t)
	ctx := context.Background()
	const layers = 150
	parent := ""
	for i := range layers {
		key := fmt.Sprintf("active-%d", i)
		ms, err := sn.Prepare(ctx, key, parent)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			// Write straight into the bind source; later layers are
			// upperdirs written the same way.
			if err := os.WriteFile(filepath.Join(ms[0].Source, "bottom"), []byte("0"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		parent = fmt.Sprintf("layer-%d", i)
		if err := sn.Commit(ctx, parent, key); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := sn.Prepare(ctx, "top", parent)
	if err != nil {
		t.Fatal(err)
	}
	if size := len(strings.Join(ms[0].Options, ",")); size < os.Getpagesize() {
		t.Fatalf("options are %d bytes; the test must exceed a page to mean anything", size)
	}
	rootfs := mountAt(t, base, ms)
	if got := readFile(t, filepath.Join(rootfs, "bottom")); got != "0" {
		t.Fatalf("bottom = %q", got)
	}
}
