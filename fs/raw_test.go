package fs

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestListingWithoutOpendir lists directories too big for one READDIRPLUS
// reply, from the start, in small batches and after rewinding, and checks
// that a kernel offering FUSE_NO_OPENDIR_SUPPORT stopped sending OPENDIR
// after the first one.
func TestListingWithoutOpendir(t *testing.T) {
	requireRoot(t)
	var names []string
	var sizes []int
	for d := range 3 {
		for i := range 700 { // ~100 KB of READDIRPLUS replies a directory
			names = append(names, fmt.Sprintf("d%d/a-rather-long-file-name-to-fill-replies-%04d", d, i))
			sizes = append(sizes, 1)
		}
		names = append(names, fmt.Sprintf("d%d/sub/x", d))
		sizes = append(sizes, 1)
	}
	bl := buildEStargz(t, names, sizes, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)

	want := func(d int) []string {
		var out []string
		for i := range 700 {
			out = append(out, fmt.Sprintf("a-rather-long-file-name-to-fill-replies-%04d", i))
		}
		return append(out, "sub")
	}
	for round := range 2 { // the second round is served from the kernel's cache
		for d := range 3 {
			dir := filepath.Join(ml.dir, fmt.Sprintf("d%d", d))
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
				if e.Name() == "sub" != e.IsDir() {
					t.Fatalf("round %d: %s/%s: IsDir %v", round, dir, e.Name(), e.IsDir())
				}
			}
			if !slices.Equal(got, want(d)) {
				t.Fatalf("round %d: %s lists %d names, want %d", round, dir, len(got), len(want(d)))
			}
			if b, err := os.ReadFile(filepath.Join(dir, "sub", "x")); err != nil || string(b) != string(bl.files[fmt.Sprintf("d%d/sub/x", d)]) {
				t.Fatalf("d%d/sub/x: %q %v", d, b, err)
			}
		}
	}

	// Small batches, then a rewind: every reply at an offset of its own.
	f, err := os.Open(filepath.Join(ml.dir, "d1"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []string
	for {
		batch, err := f.Readdirnames(7)
		got = append(got, batch...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	again, err := f.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	slices.Sort(again)
	if !slices.Equal(got, want(1)) || !slices.Equal(again, want(1)) {
		t.Fatalf("batched listing %d names, after rewind %d, want %d", len(got), len(again), len(want(1)))
	}

	opendirs := ml.mount.lfs.opendirs.Load()
	if !ml.mount.lfs.noOpendir.Load() {
		t.Logf("kernel without FUSE_NO_OPENDIR_SUPPORT: %d OPENDIR requests", opendirs)
		return
	}
	if opendirs != 1 {
		t.Fatalf("%d OPENDIR requests reached the daemon, want 1 (answered ENOSYS, then none)", opendirs)
	}
}

// TestCloseWithoutFlush reads files and checks that their closes sent no
// FLUSH (FOPEN_NOFLUSH), or one at most where the kernel ignores that flag
// (answered ENOSYS, after which it sends none).
func TestCloseWithoutFlush(t *testing.T) {
	requireRoot(t)
	names := []string{"a", "b", "c", "d"}
	bl := buildEStargz(t, names, []int{10, 20, 30, 40}, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	for _, name := range names {
		for range 2 {
			b, err := os.ReadFile(filepath.Join(ml.dir, name))
			if err != nil || string(b) != string(bl.files[name]) {
				t.Fatalf("%s: %q %v", name, b, err)
			}
		}
	}
	if n := ml.mount.lfs.flushes.Load(); n > 1 {
		t.Fatalf("%d FLUSH requests for 8 closes, want at most 1", n)
	}
}

// TestXattrsOfALayerWithout asks a layer that has no xattrs at all for
// one: the answer is "no such attribute" (ENODATA) and an empty list, as
// from any filesystem with xattrs, never EOPNOTSUPP, which containerd's
// differ takes as an error (a diff over the layer, such as BuildKit's
// export of a build step, would fail on security.capability).
func TestXattrsOfALayerWithout(t *testing.T) {
	requireRoot(t)
	bl := buildEStargz(t, []string{"dir/file"}, []int{10}, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	for _, p := range []string{"dir", "dir/file"} {
		path := filepath.Join(ml.dir, p)
		for range 2 { // the second time too: the kernel must not have stopped asking
			if _, err := unix.Lgetxattr(path, "security.capability", make([]byte, 64)); err != unix.ENODATA {
				t.Errorf("%s: getxattr security.capability: %v, want ENODATA", p, err)
			}
			if n, err := unix.Llistxattr(path, make([]byte, 64)); err != nil || n != 0 {
				t.Errorf("%s: listxattr: %d, %v; want an empty list", p, n, err)
			}
		}
	}
}
