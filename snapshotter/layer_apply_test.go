package snapshotter_test

import (
	"context"
	"fmt"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/pkg/archive"
	digest "github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/snapshotter"
)

// checkApplied applies the layer with containerd's own applier onto a copy
// of the lower layer and expects the tree the step saw through its
// overlay, socket aside: names, types, modes, owners, contents, link
// targets, device numbers and xattrs (mtimes are clamped, so not compared).
func checkApplied(t *testing.T, s step, l *snapshotter.Layer) {
	t.Helper()
	applied := filepath.Join(t.TempDir(), "applied")
	if out, err := exec.Command("cp", "-a", s.lower, applied).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if _, err := archive.Apply(context.Background(), applied, decompress(t, l)); err != nil {
		t.Fatalf("containerd's archive.Apply: %v", err)
	}
	got, want := describeTree(t, applied), describeTree(t, s.merged)
	want = slices.DeleteFunc(want, func(e string) bool { return strings.HasPrefix(e, "new/sock ") })
	if !slices.Equal(got, want) {
		t.Errorf("applied layer:\n%s\nthe step saw:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, pair := range [][2]string{{"new/pair1", "new/pair2"}, {"usr/bin/tool", "usr/bin/tool2"}} {
		a, b := inode(t, filepath.Join(applied, pair[0])), inode(t, filepath.Join(applied, pair[1]))
		if a != b {
			t.Errorf("%s and %s are not one file once applied", pair[0], pair[1])
		}
	}
}

// describeTree lists everything under root but its mtimes, one line per
// entry, in walk order.
func describeTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d iofs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		line := fmt.Sprintf("%s %o %d:%d", rel, st.Mode, st.Uid, st.Gid)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += " " + digest.FromBytes(b).Encoded()[:12]
		case syscall.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + target
		case syscall.S_IFCHR, syscall.S_IFBLK:
			line += fmt.Sprintf(" rdev %d", st.Rdev)
		}
		xattrs, err := snapshotter.Xattrs(p)
		if err != nil {
			return err
		}
		for _, k := range slicesSorted(xattrs) {
			line += fmt.Sprintf(" %s=%q", k, xattrs[k])
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func slicesSorted(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	must(t, syscall.Lstat(p, &st))
	return st.Ino
}
