package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzUnpack feeds unpackTar hostile tar streams: whatever it unpacks or
// refuses, nothing may change outside the destination.
func FuzzUnpack(f *testing.F) {
	for _, script := range unpackSeeds {
		f.Add(tarFromScript(f, script))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if declaresMoreThan(data, 1<<20) {
			t.Skip("the archive declares more than 1 MiB: unpacking it tests the disk, not the paths")
		}
		checkUnpackStaysInside(t, data)
	})
}

// FuzzUnpackEntries is FuzzUnpack with archives built from a script, one
// entry a line: "<kind> <name> <link name>", kind f (file), d, l (symlink),
// h (hard link) or p (fifo). A valid archive with hostile names is what
// it explores; FuzzUnpack's mutations mostly break the tar checksum.
func FuzzUnpackEntries(f *testing.F) {
	for _, script := range unpackSeeds {
		f.Add(script)
	}
	f.Fuzz(func(t *testing.T, script string) {
		checkUnpackStaysInside(t, tarFromScript(t, script))
	})
}

var unpackSeeds = []string{
	"d dir/\nf dir/file",
	"f ../../evil",
	"f /abs",
	"l l ../../..\nf l/victim/evil",
	"l l /\nf l/../victim/evil",
	"h h ../victim/canary",
	"l l ../victim\nh h l/canary",
	"d d\nl d ..\nf d/x",
	"l a b\nl b a\nf a/x",
	"l d ../../../../victim\nd d/sub\np d/sub/fifo",
}

func tarFromScript(t testing.TB, script string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for line := range strings.SplitSeq(script, "\n") {
		kind, rest, _ := strings.Cut(line, " ")
		name, link, _ := strings.Cut(rest, " ")
		hdr := &tar.Header{Name: name, Linkname: link, Typeflag: tar.TypeReg, Mode: 0o755, Size: 1, ModTime: oldTime}
		switch kind {
		case "d":
			hdr.Typeflag = tar.TypeDir
		case "l":
			hdr.Typeflag = tar.TypeSymlink
		case "h":
			hdr.Typeflag = tar.TypeLink
		case "p":
			hdr.Typeflag = tar.TypeFifo
		}
		if hdr.Typeflag != tar.TypeReg {
			hdr.Size = 0
		}
		if tw.WriteHeader(hdr) != nil {
			continue // a header tar cannot encode: leave it out
		}
		if _, err := tw.Write([]byte("x")[:hdr.Size]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkUnpackStaysInside unpacks data into outer/a/b/dest next to
// outer/victim and fails if anything changed outside dest.
func checkUnpackStaysInside(t *testing.T, data []byte) {
	outer := t.TempDir()
	victim := mkdirTest(t, outer, "victim", 0o755)
	canary := writeTestFile(t, victim, "canary", "canary", 0o644)
	dest := mkdirTest(t, outer, "a/b/dest", 0o755)
	unpackTar(context.Background(), bytes.NewReader(data), mustRoot(t, dest), &newDirAttrs{uid: os.Getuid(), gid: os.Getgid()})
	for dir, want := range map[string][]string{outer: {"a", "victim"}, filepath.Join(outer, "a"): {"b"}, filepath.Join(outer, "a/b"): {"dest"}, victim: {"canary"}} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if !slices.Equal(names, want) {
			t.Fatalf("%s holds %q, want %q", dir, names, want)
		}
	}
	if got, err := os.ReadFile(canary); err != nil || string(got) != "canary" {
		t.Fatalf("canary: %q, %v", got, err)
	}
	if fi, err := os.Lstat(dest); err != nil || !fi.IsDir() {
		t.Fatalf("dest: %v, %v; want it still a directory", fi, err)
	}
}

// declaresMoreThan says whether tar stream data declares entries larger
// than limit in all, sparse files' holes included.
func declaresMoreThan(data []byte, limit int64) bool {
	tr := tar.NewReader(bytes.NewReader(data))
	var total int64
	for {
		hdr, err := tr.Next()
		if hdr == nil || err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return false // unpackTar stops here too
		}
		if total += hdr.Size; total > limit || hdr.Size < 0 {
			return true
		}
	}
}
