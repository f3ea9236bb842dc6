package treecmp

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// buildTree makes one of every entry type with the attributes Walk records.
func buildTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := func(name string) string { return filepath.Join(root, name) }
	must(os.Mkdir(p("d"), 0o755))
	must(os.WriteFile(p("d/f"), []byte("hello"), 0o644))
	must(os.Lchown(p("d/f"), 70000, 80000))
	must(unix.Chmod(p("d/f"), 0o4755)) // raw bits (os.FileMode spells setuid differently), after chown: it clears setuid
	must(os.Link(p("d/f"), p("d/g")))
	must(os.Symlink("/etc", p("d/link"))) // must not be followed
	must(unix.Mkfifo(p("fifo"), 0o600))
	must(unix.Mknod(p("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(os.Chmod(p("null"), 0o666)) // mknod applies the umask
	must(unix.Lsetxattr(p("d/f"), "user.b", []byte("\x00\x01"), 0))
	must(unix.Lsetxattr(p("d/f"), "user.a", []byte("A"), 0))
	must(unix.Lsetxattr(p("d"), "trusted.overlay.opaque", []byte("y"), 0))
	mtime := time.Unix(1600000000, 987654321)
	must(os.Chtimes(p("d/f"), mtime, mtime))
	return root
}

func TestWalkRecordsEverything(t *testing.T) {
	requireRoot(t)
	recs, err := Walk(buildTree(t))
	if err != nil {
		t.Fatal(err)
	}
	paths := make([]string, len(recs))
	for i, r := range recs {
		paths[i] = r.Path
	}
	want := []string{".", "d", "d/f", "d/g", "d/link", "fifo", "null"}
	if !slices.Equal(paths, want) {
		t.Fatalf("paths %v, want %v (symlinks must not be followed)", paths, want)
	}
	got := index(recs)
	f := got["d/f"]
	wantF := Record{Path: "d/f", Type: "reg", Mode: 0o4755, UID: 70000, GID: 80000, Size: 5,
		MTime: 1600000000987654321, Xattrs: []Xattr{{"user.a", "A"}, {"user.b", "\x00\x01"}},
		SHA256:    "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
		Hardlinks: []string{"d/f", "d/g"}}
	if d := Diff([]Record{wantF}, []Record{f}); len(d) != 0 {
		t.Errorf("d/f: %q", d)
	}
	if g := got["d/g"].Hardlinks; !slices.Equal(g, wantF.Hardlinks) {
		t.Errorf("d/g group %v", g)
	}
	if r := got["d"]; r.Type != "dir" || len(r.Xattrs) != 0 || r.Size != 0 || r.Hardlinks != nil {
		t.Errorf("d: %+v (trusted.overlay.* must be excluded, dir size 0)", r)
	}
	if r := got["d/link"]; r.Type != "symlink" || r.Link != "/etc" || r.Size != 4 {
		t.Errorf("d/link: %+v", r)
	}
	if r := got["null"]; r.Type != "char" || r.RdevMajor != 1 || r.RdevMinor != 3 || r.Mode != 0o666 {
		t.Errorf("null: %+v", r)
	}
	if r := got["fifo"]; r.Type != "fifo" || r.Mode != 0o600 {
		t.Errorf("fifo: %+v", r)
	}
}

func TestWalkMissingRoot(t *testing.T) {
	if _, err := Walk(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Fatal("Walk of a missing root succeeded")
	}
}

// Walking the same tree twice gives equal records, and a copy with one
// change gives exactly that change.
func TestWalkDetectsChange(t *testing.T) {
	requireRoot(t)
	root := buildTree(t)
	before, err := Walk(root)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Walk(root)
	if d := Diff(before, again); len(d) != 0 {
		t.Fatalf("same tree differs: %q", d)
	}
	if err := os.Chmod(filepath.Join(root, "fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	after, _ := Walk(root)
	d := Diff(before, after)
	if len(d) != 1 || d[0] != "fifo: mode want 0600, got 0640" {
		t.Fatalf("diff %q", d)
	}
}
