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
	"time"

	"github.com/containerd/containerd/v2/core/mount"
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

// TestFixupsOnTop: a stack of more than one layer gets the fixup its
// WithFixups gives as its topmost lower, and a new upper's root the
// owner of the root the stack shows (the fixup's); WithRootFromStack also
// its mode, time and xattrs.
func TestFixupsOnTop(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	base := testRoot(t)
	fixup := filepath.Join(base, "fixup")
	must(t, os.Mkdir(fixup, 0o700))
	must(t, os.Chown(fixup, 3, 4))
	must(t, os.Chmod(fixup, 0o751))
	must(t, unix.Lsetxattr(fixup, "user.root", []byte("r"), 0))
	when := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	must(t, os.Chtimes(fixup, when, when))
	var asked [][]string
	for _, fromStack := range []bool{false, true} {
		t.Run(fmt.Sprint("root-from-stack=", fromStack), func(t *testing.T) {
			opts := []snapshotter.Option{snapshotter.WithFixups(func(lowers []string) (string, error) {
				asked = append(asked, lowers)
				return fixup, nil
			})}
			if fromStack {
				opts = append(opts, snapshotter.WithRootFromStack())
			}
			sn, err := snapshotter.New(filepath.Join(base, fmt.Sprint("root-", fromStack)), opts...)
			must(t, err)
			t.Cleanup(func() { sn.Close() })
			parent := ""
			for i := range 2 {
				ms, err := sn.Prepare(ctx, fmt.Sprint("a", i), parent)
				must(t, err)
				must(t, os.WriteFile(filepath.Join(upperOf(t, ms), fmt.Sprint("f", i)), nil, 0o644))
				parent = fmt.Sprint("l", i)
				must(t, sn.Commit(ctx, parent, fmt.Sprint("a", i)))
			}
			ms, err := sn.Prepare(ctx, "top", parent)
			must(t, err)
			var lower string
			for _, o := range ms[0].Options {
				if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
					lower = v
				}
			}
			if !strings.HasPrefix(lower, fixup+":") || strings.Count(lower, ":") != 2 {
				t.Errorf("lowerdir=%s, want the fixup first, then the two layers", lower)
			}
			var st unix.Stat_t
			must(t, unix.Lstat(upperOf(t, ms), &st))
			buf := make([]byte, 8)
			n, xerr := unix.Lgetxattr(upperOf(t, ms), "user.root", buf)
			wantMode, wantX := uint32(0o755), false
			if fromStack {
				wantMode, wantX = 0o751, true
			}
			if st.Uid != 3 || st.Gid != 4 || st.Mode&0o7777 != wantMode || (xerr == nil && string(buf[:n]) == "r") != wantX ||
				fromStack && !time.Unix(st.Mtim.Unix()).Equal(when) {
				t.Errorf("upper root: %o %d:%d, xattr %v, time %v", st.Mode&0o7777, st.Uid, st.Gid, xerr == nil, time.Unix(st.Mtim.Unix()))
			}
		})
	}
	if len(asked) == 0 {
		t.Error("the fixup was never asked for")
	}
}

// upperOf is the upperdir of an active snapshot's mounts (its bind
// source for one without parents).
func upperOf(t *testing.T, ms []mount.Mount) string {
	t.Helper()
	for _, o := range ms[0].Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			return v
		}
	}
	return ms[0].Source
}
