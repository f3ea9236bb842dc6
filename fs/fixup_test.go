package fs

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeTree is a layer given as its entries: path → node (a directory
// with or without an entry, a whiteout or file that hides), parents
// implied.
type fakeTree map[string]fixNode

func realDir(mode, uid uint32) fixNode {
	return fixNode{kind: nodeDir, fix: Fix{Mode: mode, UID: uid, GID: uid, ModTime: time.Unix(int64(1000+uid), 0)}}
}

var (
	implicitDir = fixNode{kind: nodeDir, implicit: true, fix: Fix{Mode: 0o755}}
	recreated   = fixNode{kind: nodeDir, implicit: true, recreated: true, opaque: true, fix: Fix{Mode: 0o755}}
	hides       = fixNode{kind: nodeHides}
)

func (t fakeTree) implicit() []string {
	var out []string
	for p, n := range t {
		if n.kind == nodeDir && n.implicit {
			out = append(out, p)
		}
	}
	return out
}

func (t fakeTree) lookup(p string) (fixNode, error) {
	var above bool
	if p != "." {
		parts := strings.Split(p, "/")
		for i := range parts {
			parent := "."
			if i > 0 {
				parent = strings.Join(parts[:i], "/")
			}
			if t[parent].opaque {
				above = true
			}
			q := strings.Join(parts[:i+1], "/")
			n, ok := t[q]
			if !ok {
				return fixNode{kind: nodeAbsent, opaqueAbove: above}, nil
			}
			if n.kind == nodeHides && q != p {
				return fixNode{kind: nodeHides}, nil
			}
		}
	}
	n, ok := t[p]
	if !ok {
		return fixNode{kind: nodeAbsent, opaqueAbove: above}, nil
	}
	n.opaqueAbove = above
	n.fix.Path = p
	return n, nil
}

func TestFixes(t *testing.T) {
	opaque := func(n fixNode) fixNode { n.opaque = true; return n }
	root := realDir(0o755, 0)
	for _, c := range []struct {
		name   string
		layers []fakeTree // top first
		want   map[string]uint32
	}{
		{"implicit over a real one", []fakeTree{
			{".": implicitDir, "priv": implicitDir, "priv/b": realDir(0o644, 0)},
			{".": root, "priv": realDir(0o700, 5)},
		}, map[string]uint32{".": 0o755, "priv": 0o700}},
		{"implicit over implicit over real", []fakeTree{
			{".": root, "a": implicitDir, "a/b": implicitDir},
			{".": root, "a": implicitDir},
			{".": root, "a": realDir(0o750, 7)},
		}, map[string]uint32{".": 0o755, "a": 0o750}},
		{"a real one on top wins: nothing to fix", []fakeTree{
			{".": root, "a": realDir(0o711, 0)},
			{".": root, "a": realDir(0o700, 5)},
		}, nil},
		{"nothing below", []fakeTree{
			{".": implicitDir, "new": implicitDir},
			{".": implicitDir},
		}, nil},
		{"a whiteout between hides the lower one", []fakeTree{
			{".": root, "a": implicitDir},
			{".": root, "a": hides},
			{".": root, "a": realDir(0o700, 5)},
		}, nil},
		{"an opaque parent between hides what is below it", []fakeTree{
			{".": root, "p": implicitDir, "p/a": implicitDir},
			{".": root, "p": opaque(realDir(0o751, 0))},
			{".": root, "p": realDir(0o755, 0), "p/a": realDir(0o700, 5)},
		}, map[string]uint32{".": 0o755, "p": 0o751}},
		{"hidden from above: no fix brings it back", []fakeTree{
			{".": root, "a": hides},
			{".": root, "a": implicitDir},
			{".": root, "a": realDir(0o700, 5)},
		}, nil},
		{"the root alone", []fakeTree{
			{".": implicitDir},
			{".": realDir(0o750, 9)},
		}, map[string]uint32{".": 0o750}},
		{"a new directory under a setgid one takes its group and setgid, as mkdir gives them", []fakeTree{
			{".": root, "g": realDir(0o2750, 8), "g/new": implicitDir, "g/new/deeper": implicitDir},
			{".": root},
		}, map[string]uint32{".": 0o755, "g": 0o2750, "g/new": 0o2755, "g/new/deeper": 0o2755}},
		{"an opaque marker empties a directory the unpack keeps", []fakeTree{
			{".": root, "a": opaque(implicitDir), "a/new": realDir(0o644, 0)},
			{".": root, "a": realDir(0o700, 5)},
		}, map[string]uint32{".": 0o755, "a": 0o700}},
		{"made anew in place of a whiteout: mkdir's, under a setgid parent", []fakeTree{
			{".": root, "g": implicitDir, "g/a": recreated, "g/a/f": realDir(0o644, 0)},
			{".": root, "g": realDir(0o2770, 9), "g/a": realDir(0o700, 5)},
		}, map[string]uint32{".": 0o755, "g": 0o2770, "g/a": 0o2755}},
		{"made anew, no setgid: nothing to fix", []fakeTree{
			{".": root, "a": recreated},
			{".": root, "a": realDir(0o700, 5)},
		}, nil},
		{"parents get their own attributes", []fakeTree{
			{".": root, "x": implicitDir, "x/y": implicitDir, "x/y/f": realDir(0o644, 0)},
			{".": root, "x": realDir(0o711, 3), "x/y": realDir(0o700, 4)},
		}, map[string]uint32{".": 0o755, "x": 0o711, "x/y": 0o700}},
	} {
		t.Run(c.name, func(t *testing.T) {
			trees := make([]fixTree, len(c.layers))
			for i, l := range c.layers {
				trees[i] = l
			}
			got, err := fixes(trees)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("fixes %+v, want %v", got, c.want)
			}
			for _, f := range got {
				if m, ok := c.want[f.Path]; !ok || m != f.Mode {
					t.Errorf("fix %+v, want mode %o", f, m)
				}
			}
		})
	}
}

// TestWriteFixup: a fixup holds its directories with the attributes given
// (parents' times set after their children are made), is named by its
// content, and a second write of the same list finds it.
func TestWriteFixup(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	when := time.Date(1960, 5, 1, 0, 0, 0, 0, time.UTC)
	list := []Fix{
		{Path: ".", Mode: 0o755, ModTime: time.Unix(5, 0)},
		{Path: "a", Mode: 0o2750, UID: 5, GID: 6, ModTime: when, Xattrs: map[string][]byte{"user.k": []byte("v")}},
		{Path: "a/b", Mode: 0o700, UID: 7, GID: 8, ModTime: time.Unix(100, 5)},
	}
	dir, err := writeFixup(root, list)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range list {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, f.Path), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o7777 != f.Mode || st.Uid != f.UID || st.Gid != f.GID || !time.Unix(st.Mtim.Unix()).Equal(f.ModTime) {
			t.Errorf("%s: mode %o %d:%d %v, want %+v", f.Path, st.Mode&0o7777, st.Uid, st.Gid, time.Unix(st.Mtim.Unix()), f)
		}
	}
	b := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "a"), "user.k", b); err != nil || string(b[:n]) != "v" {
		t.Errorf("xattr user.k: %q, %v", b[:n], err)
	}
	again, err := writeFixup(root, list)
	if err != nil || again != dir {
		t.Errorf("again: %s, %v; want %s", again, err, dir)
	}
	if left, _ := filepath.Glob(filepath.Join(root, ".making-*")); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
	if _, err := writeFixup(root, []Fix{{Path: "."}, {Path: "../out"}}); err == nil {
		t.Error("a fix outside the image was made")
	}
}
