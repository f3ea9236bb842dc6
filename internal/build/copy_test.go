package build

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Fixed times, far from now, so a time kept is told from a time set by
// the copy.
var (
	oldTime   = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	otherTime = time.Date(2011, 12, 13, 14, 15, 16, 0, time.UTC)
)

func requireRootForCopy(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it gives files owners other than the test's user, or makes devices")
	}
}

// writeTestFile writes content at dir/rel, making parents, with mode and
// modification time oldTime.
func writeTestFile(t *testing.T, dir, rel, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, oldTime, oldTime); err != nil {
		t.Fatal(err)
	}
	return p
}

func mkdirTest(t *testing.T, dir, rel string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func symlinkTest(t *testing.T, target, dir, rel string) {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func mustCopy(t *testing.T, spec CopySpec) int {
	t.Helper()
	n, err := Copy(context.Background(), spec)
	if err != nil {
		t.Fatalf("Copy(%v -> %s): %v", spec.Sources, spec.Dest, err)
	}
	return n
}

func wantFile(t *testing.T, p, content string, mode os.FileMode) os.FileInfo {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatalf("want file %s: %v", p, err)
	}
	if !fi.Mode().IsRegular() {
		t.Fatalf("%s is %v, want a regular file", p, fi.Mode())
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != content {
		t.Errorf("%s holds %q, want %q", p, got, content)
	}
	if fi.Mode() != mode {
		t.Errorf("%s has mode %v, want %v", p, fi.Mode(), mode)
	}
	return fi
}

func wantMissing(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (%v), want nothing there", p, err)
	}
}

func wantOwner(t *testing.T, p string, uid, gid int) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s is owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
	}
}

func wantMtime(t *testing.T, p string, want time.Time) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(want) {
		t.Errorf("%s was modified at %v, want %v", p, fi.ModTime().UTC(), want)
	}
}

func wantEmptyDir(t *testing.T, p string) {
	t.Helper()
	entries, err := os.ReadDir(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("%s holds %v, want nothing", p, entries)
	}
}

func TestCopyFileDestinations(t *testing.T) {
	src := t.TempDir()
	writeTestFile(t, src, "app.conf", "conf", 0o640)
	tests := []struct {
		dest   string
		before func(t *testing.T, root string)
		want   string
	}{
		{dest: "/etc/app/app.conf", want: "etc/app/app.conf"},
		{dest: "/etc/app/", want: "etc/app/app.conf"},
		{dest: "/etc/app/.", want: "etc/app/app.conf"},
		{dest: "/renamed", want: "renamed"},
		{dest: "/opt", before: func(t *testing.T, root string) { mkdirTest(t, root, "opt", 0o700) }, want: "opt/app.conf"},
		{dest: "/lib/", before: func(t *testing.T, root string) {
			mkdirTest(t, root, "usr/lib", 0o755)
			symlinkTest(t, "usr/lib", root, "lib")
		}, want: "usr/lib/app.conf"},
		{dest: "/lib", before: func(t *testing.T, root string) {
			mkdirTest(t, root, "usr/lib", 0o755)
			symlinkTest(t, "/usr/lib", root, "lib")
		}, want: "usr/lib/app.conf"},
		{dest: "/old", before: func(t *testing.T, root string) { writeTestFile(t, root, "old", "previous", 0o777) }, want: "old"},
	}
	for _, tt := range tests {
		t.Run(tt.dest, func(t *testing.T) {
			root := t.TempDir()
			if tt.before != nil {
				tt.before(t, root)
			}
			mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"app.conf"}, DestRoot: root, Dest: tt.dest})
			p := filepath.Join(root, tt.want)
			wantFile(t, p, "conf", 0o640)
			wantMtime(t, p, oldTime)
		})
	}
}

func TestCopyMakesDestDirectories(t *testing.T) {
	requireRootForCopy(t)
	src := t.TempDir()
	writeTestFile(t, src, "f", "x", 0o644)
	root := t.TempDir()
	mkdirTest(t, root, "usr", 0o700)
	n := mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"f"}, DestRoot: root, Dest: "/usr/local/bin/", UID: 1234, GID: 5678})
	if n != 3 {
		t.Errorf("Copy wrote %d entries, want 3 (local, bin, f)", n)
	}
	for _, dir := range []string{"usr/local", "usr/local/bin"} {
		fi, err := os.Stat(filepath.Join(root, dir))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != os.ModeDir|0o755 {
			t.Errorf("new directory %s has mode %v, want drwxr-xr-x", dir, fi.Mode())
		}
		wantOwner(t, filepath.Join(root, dir), 1234, 5678)
	}
	fi, _ := os.Stat(filepath.Join(root, "usr"))
	if fi.Mode() != os.ModeDir|0o700 {
		t.Errorf("existing /usr has mode %v, want it kept at drwx------", fi.Mode())
	}
	wantOwner(t, filepath.Join(root, "usr"), 0, 0)
	wantOwner(t, filepath.Join(root, "usr/local/bin/f"), 1234, 5678)
}

func TestCopyDirectoryContents(t *testing.T) {
	src := t.TempDir()
	writeTestFile(t, src, "dir/a", "A", 0o644)
	writeTestFile(t, src, "dir/sub/b", "B", 0o600)
	writeTestFile(t, src, "dir/sub/deep/c", "C", 0o755)
	symlinkTest(t, "a", src, "dir/link")
	symlinkTest(t, "/nowhere/at/all", src, "dir/dangling")
	for _, d := range []string{"dir/sub/deep", "dir/sub", "dir"} {
		if err := os.Chmod(filepath.Join(src, d), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(filepath.Join(src, d), otherTime, otherTime); err != nil {
			t.Fatal(err)
		}
	}
	root := t.TempDir()
	n := mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"dir"}, DestRoot: root, Dest: "/app"})
	if n != 8 {
		t.Errorf("Copy wrote %d entries, want 8", n)
	}
	wantMissing(t, filepath.Join(root, "app/dir"))
	wantFile(t, filepath.Join(root, "app/a"), "A", 0o644)
	wantFile(t, filepath.Join(root, "app/sub/b"), "B", 0o600)
	wantFile(t, filepath.Join(root, "app/sub/deep/c"), "C", 0o755)
	for link, target := range map[string]string{"app/link": "a", "app/dangling": "/nowhere/at/all"} {
		got, err := os.Readlink(filepath.Join(root, link))
		if err != nil || got != target {
			t.Errorf("%s: readlink = %q, %v; want a symlink to %q", link, got, err, target)
		}
	}
	fi, _ := os.Stat(filepath.Join(root, "app"))
	if fi.Mode() != os.ModeDir|0o755 {
		t.Errorf("/app has mode %v, want drwxr-xr-x (a new destination directory)", fi.Mode())
	}
	fi, _ = os.Stat(filepath.Join(root, "app/sub"))
	if fi.Mode() != os.ModeDir|0o750 {
		t.Errorf("/app/sub has mode %v, want the source's drwxr-x---", fi.Mode())
	}
	wantMtime(t, filepath.Join(root, "app"), otherTime)
	wantMtime(t, filepath.Join(root, "app/sub"), otherTime)
	wantMtime(t, filepath.Join(root, "app/sub/deep"), otherTime)
	wantMtime(t, filepath.Join(root, "app/sub/deep/c"), oldTime)
}

func TestCopyMergesIntoExistingDirectories(t *testing.T) {
	requireRootForCopy(t)
	src := t.TempDir()
	writeTestFile(t, src, "tree/sub/new", "new", 0o644)
	mkdirTest(t, src, "tree/sub", 0o750)
	root := t.TempDir()
	writeTestFile(t, root, "app/sub/old", "old", 0o644)
	mkdirTest(t, root, "app/sub", 0o700)
	mkdirTest(t, root, "app", 0o711)
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/app/", UID: 42, GID: 43})
	wantFile(t, filepath.Join(root, "app/sub/old"), "old", 0o644)
	wantFile(t, filepath.Join(root, "app/sub/new"), "new", 0o644)
	fi, _ := os.Stat(filepath.Join(root, "app"))
	if fi.Mode() != os.ModeDir|0o711 {
		t.Errorf("existing Dest /app has mode %v, want it kept at drwx--x--x", fi.Mode())
	}
	wantOwner(t, filepath.Join(root, "app"), 0, 0)
	fi, _ = os.Stat(filepath.Join(root, "app/sub"))
	if fi.Mode() != os.ModeDir|0o750 {
		t.Errorf("merged /app/sub has mode %v, want the copied directory's drwxr-x---", fi.Mode())
	}
	wantOwner(t, filepath.Join(root, "app/sub"), 42, 43)
}

func TestCopyFollowsSourceSymlinks(t *testing.T) {
	src := t.TempDir()
	writeTestFile(t, src, "real/f", "F", 0o644)
	symlinkTest(t, "real", src, "dirlink")
	symlinkTest(t, "/real/f", src, "filelink")
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"dirlink"}, DestRoot: root, Dest: "/x"})
	wantFile(t, filepath.Join(root, "x/f"), "F", 0o644)
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"filelink"}, DestRoot: root, Dest: "/y/"})
	wantFile(t, filepath.Join(root, "y/filelink"), "F", 0o644)
}

func TestCopyWildcards(t *testing.T) {
	src := t.TempDir()
	for _, f := range []string{"a.txt", "b.txt", "c.md", "sub/d.txt", "sub2/e.txt"} {
		writeTestFile(t, src, f, f, 0o644)
	}
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"*.txt"}, DestRoot: root, Dest: "/out/"})
	wantFile(t, filepath.Join(root, "out/a.txt"), "a.txt", 0o644)
	wantFile(t, filepath.Join(root, "out/b.txt"), "b.txt", 0o644)
	wantMissing(t, filepath.Join(root, "out/c.md"))
	wantMissing(t, filepath.Join(root, "out/d.txt"))

	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"/sub*/*.txt"}, DestRoot: root, Dest: "/deep/"})
	wantFile(t, filepath.Join(root, "deep/d.txt"), "sub/d.txt", 0o644)
	wantFile(t, filepath.Join(root, "deep/e.txt"), "sub2/e.txt", 0o644)

	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"c.*"}, DestRoot: root, Dest: "/one"})
	wantFile(t, filepath.Join(root, "one"), "c.md", 0o644)

	_, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"*.txt"}, DestRoot: root, Dest: "/file"})
	if !errors.Is(err, ErrDestNotDirectory) || !strings.Contains(err.Error(), "When using COPY with more than one source file, the destination must be a directory and end with a /") {
		t.Errorf("two matches into /file: err = %v, want Docker's message and ErrDestNotDirectory", err)
	}
	wantMissing(t, filepath.Join(root, "file"))

	// A wildcard matching nothing copies nothing, beside other sources or
	// alone (BuildKit's AllowEmptyWildcard); a plain source naming nothing
	// is an error.
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"*.none", "c.md"}, DestRoot: root, Dest: "/some/"})
	wantFile(t, filepath.Join(root, "some/c.md"), "c.md", 0o644)
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"*.none"}, DestRoot: root, Dest: "/none/"})
	wantMissing(t, filepath.Join(root, "none"))
	_, err = Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"*.none", "none.md"}, DestRoot: root, Dest: "/out/"})
	if !errors.Is(err, ErrSourceNotFound) || !strings.Contains(err.Error(), "stat none.md: file does not exist") {
		t.Errorf("a plain source naming nothing: err = %v, want ErrSourceNotFound", err)
	}
}

func TestCopyMultipleSourcesNeedDirectory(t *testing.T) {
	src := t.TempDir()
	writeTestFile(t, src, "a", "a", 0o644)
	writeTestFile(t, src, "b", "b", 0o644)
	root := t.TempDir()
	_, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"a", "b"}, DestRoot: root, Dest: "/x", Add: true})
	if !errors.Is(err, ErrDestNotDirectory) || !strings.HasPrefix(err.Error(), "When using ADD with more than one source file") {
		t.Errorf("err = %v, want ErrDestNotDirectory", err)
	}
	wantEmptyDir(t, root)
	if n := mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"a", "b"}, DestRoot: root, Dest: "/x/"}); n != 3 {
		t.Errorf("Copy wrote %d entries, want 3", n)
	}
	wantFile(t, filepath.Join(root, "x/a"), "a", 0o644)
	wantFile(t, filepath.Join(root, "x/b"), "b", 0o644)
}

func TestCopyMissingSource(t *testing.T) {
	src := t.TempDir()
	root := t.TempDir()
	_, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"foo"}, DestRoot: root, Dest: "/"})
	want := "COPY failed: file not found in build context or excluded by .dockerignore: stat foo: file does not exist"
	if !errors.Is(err, ErrSourceNotFound) || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want %q", err, want)
	}
}

func TestCopyClampsEscapingSources(t *testing.T) {
	outer := t.TempDir()
	writeTestFile(t, outer, "x", "outside", 0o644)
	src := mkdirTest(t, outer, "ctx", 0o755)
	writeTestFile(t, src, "x", "inside", 0o644)
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"../x"}, DestRoot: root, Dest: "/a"})
	wantFile(t, filepath.Join(root, "a"), "inside", 0o644)
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"sub/../../../x"}, DestRoot: root, Dest: "/b"})
	wantFile(t, filepath.Join(root, "b"), "inside", 0o644)
}

func TestCopyExcludes(t *testing.T) {
	src := t.TempDir()
	for _, f := range []string{"Dockerfile", ".dockerignore", "keep.txt", "secret.key", "logs/a.log", "logs/keep.log", "node_modules/pkg/x.js", "docs/a/b.md", "docs/c.txt"} {
		writeTestFile(t, src, f, f, 0o644)
	}
	symlinkTest(t, "secret.key", src, "keylink")
	excludes := []string{"*.key", "logs", "!logs/keep.log", "node_modules", "docs/**/*.md"}
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"."}, Excludes: excludes, DestRoot: root, Dest: "/app/"})
	for _, f := range []string{"Dockerfile", ".dockerignore", "keep.txt", "logs/keep.log", "docs/c.txt"} {
		wantFile(t, filepath.Join(root, "app", f), f, 0o644)
	}
	for _, f := range []string{"secret.key", "logs/a.log", "node_modules", "docs/a/b.md"} {
		wantMissing(t, filepath.Join(root, "app", f))
	}
	if target, err := os.Readlink(filepath.Join(root, "app/keylink")); err != nil || target != "secret.key" {
		t.Errorf("app/keylink: %q, %v; want the symlink copied as it is", target, err)
	}

	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"logs"}, Excludes: excludes, DestRoot: root, Dest: "/l/"})
	wantFile(t, filepath.Join(root, "l/keep.log"), "logs/keep.log", 0o644)
	wantMissing(t, filepath.Join(root, "l/a.log"))

	for _, hidden := range []string{"secret.key", "node_modules", "node_modules/pkg/x.js", "keylink", "/docs/a/b.md"} {
		_, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{hidden}, Excludes: excludes, DestRoot: root, Dest: "/h/"})
		if !errors.Is(err, ErrSourceNotFound) {
			t.Errorf("COPY %s: err = %v, want ErrSourceNotFound", hidden, err)
		}
	}
	// A wildcard matching only hidden files matches nothing, and copies
	// nothing (the context BuildKit sends has no such file).
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"*.key"}, Excludes: excludes, DestRoot: root, Dest: "/h/"})
	wantMissing(t, filepath.Join(root, "h"))
}

// TestCopySourceExcludes: COPY --exclude patterns match below each
// directory source, relative to it, with BuildKit's rule for exceptions
// (one brings back only what an earlier pattern hid, not what lies below
// a directory it names); a source named itself is never hidden; and they
// work with .dockerignore's excludes.
func TestCopySourceExcludes(t *testing.T) {
	src := t.TempDir()
	for _, f := range []string{"a.txt", "b.md", "ignored.txt", "dir/c.txt", "dir/d.md", "dir/sub/e.txt", "dir/sub/f.md", "dir/keep/g.txt"} {
		writeTestFile(t, src, f, f, 0o644)
	}
	for _, tt := range []struct {
		sources, excludes, want []string
	}{
		{[]string{"."}, []string{"*.txt"}, []string{"b.md", "dir/c.txt", "dir/d.md", "dir/keep/g.txt", "dir/sub/e.txt", "dir/sub/f.md"}},
		{[]string{"dir"}, []string{"*.txt"}, []string{"d.md", "keep/g.txt", "sub/e.txt", "sub/f.md"}},
		{[]string{"dir"}, []string{"sub"}, []string{"c.txt", "d.md", "keep/g.txt"}},
		{[]string{"dir"}, []string{"**/*.txt", "!keep"}, []string{"d.md", "sub/f.md"}},
		{[]string{"dir"}, []string{"sub", "!sub/e.txt"}, []string{"c.txt", "d.md", "keep/g.txt", "sub/e.txt"}},
		{[]string{"a.txt", "b.md"}, []string{"*.md", "*.txt"}, []string{"a.txt", "b.md"}},
	} {
		root := t.TempDir()
		mustCopy(t, CopySpec{SrcRoot: src, Sources: tt.sources, Excludes: []string{"ignored.txt"}, SourceExcludes: tt.excludes, DestRoot: root, Dest: "/out/"})
		var got []string
		filepath.WalkDir(filepath.Join(root, "out"), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(filepath.Join(root, "out"), p)
				got = append(got, rel)
			}
			return nil
		})
		if !slices.Equal(got, tt.want) {
			t.Errorf("COPY --exclude=%q %q: copied %q, want %q", tt.excludes, tt.sources, got, tt.want)
		}
	}
	_, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"dir"}, SourceExcludes: []string{"[x"}, DestRoot: t.TempDir(), Dest: "/out/"})
	if err == nil || !strings.Contains(err.Error(), "--exclude") {
		t.Errorf("a bad pattern: err = %v, want one naming --exclude", err)
	}
}

func TestCopyChmod(t *testing.T) {
	src := t.TempDir()
	writeTestFile(t, src, "tree/f", "f", 0o600)
	writeTestFile(t, src, "tree/sub/g", "g", 0o644)
	for _, tt := range []struct {
		chmod os.FileMode
		want  os.FileMode
	}{
		{0o751, 0o751},
		{os.FileMode(0o4755), os.ModeSetuid | 0o755},
		{os.ModeSetgid | 0o750, os.ModeSetgid | 0o750},
	} {
		root := t.TempDir()
		mode := tt.chmod
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/app", Chmod: &mode})
		wantFile(t, filepath.Join(root, "app/f"), "f", tt.want)
		wantFile(t, filepath.Join(root, "app/sub/g"), "g", tt.want)
		for _, d := range []string{"app", "app/sub"} {
			if fi, _ := os.Stat(filepath.Join(root, d)); fi.Mode() != os.ModeDir|tt.want {
				t.Errorf("--chmod=%o: %s has mode %v, want %v", tt.chmod, d, fi.Mode(), os.ModeDir|tt.want)
			}
		}
	}
}

// TestCopyChmodSymbolic: a symbolic --chmod applies to each entry's own
// mode, as BuildKit applies one ("X" gives x to directories and to what
// has an x already); the directories made on the way to Dest are 0755.
func TestCopyChmodSymbolic(t *testing.T) {
	src := t.TempDir()
	mkdirTest(t, src, "tree", 0o750)
	mkdirTest(t, src, "tree/sub", 0o700)
	writeTestFile(t, src, "tree/f", "f", 0o600)
	writeTestFile(t, src, "tree/sub/g", "g", 0o644)
	writeTestFile(t, src, "tree/sub/x", "x", os.ModeSetuid|0o710)
	for _, tt := range []struct {
		chmod string
		want  map[string]os.FileMode
	}{
		{"a+X", map[string]os.FileMode{"a/app": os.ModeDir | 0o751, "a/app/sub": os.ModeDir | 0o711, "a/app/f": 0o600,
			"a/app/sub/g": 0o644, "a/app/sub/x": os.ModeSetuid | 0o711, "a": os.ModeDir | 0o755}},
		{"go-rwx,u+x", map[string]os.FileMode{"a/app": os.ModeDir | 0o750&^0o077, "a/app/sub": os.ModeDir | 0o700, "a/app/f": 0o700,
			"a/app/sub/g": 0o700, "a/app/sub/x": os.ModeSetuid | 0o700}},
		{"u=rw,g=r,o=", map[string]os.FileMode{"a/app/f": 0o640, "a/app/sub/x": 0o640}}, // "u=" clears setuid too, as chmod(1)
	} {
		root := t.TempDir()
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/a/app", ChmodSymbolic: tt.chmod})
		for p, want := range tt.want {
			if fi, err := os.Lstat(filepath.Join(root, p)); err != nil || fi.Mode() != want {
				t.Errorf("--chmod=%s: %s has mode %v (%v), want %v", tt.chmod, p, fi.Mode(), err, want)
			}
		}
	}
	bad := []CopySpec{
		{SrcRoot: src, Sources: []string{"tree"}, DestRoot: t.TempDir(), Dest: "/x", ChmodSymbolic: "u+q"},
		{SrcRoot: src, Sources: []string{"tree"}, DestRoot: t.TempDir(), Dest: "/x", ChmodSymbolic: "u+x", Chmod: new(os.FileMode)},
	}
	for _, spec := range bad {
		if _, err := Copy(context.Background(), spec); err == nil {
			t.Errorf("--chmod=%s (and %v) accepted", spec.ChmodSymbolic, spec.Chmod)
		}
	}
}

func TestCopyChown(t *testing.T) {
	requireRootForCopy(t)
	src := t.TempDir()
	writeTestFile(t, src, "tree/f", "f", 0o644)
	symlinkTest(t, "f", src, "tree/link")
	mkdirTest(t, src, "tree/sub", 0o755)
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/app", UID: 1000, GID: 1001})
	for _, p := range []string{"app", "app/f", "app/link", "app/sub"} {
		wantOwner(t, filepath.Join(root, p), 1000, 1001)
	}
}

// TestCopyHostileDestSymlinks copies into images whose symlinks point out
// of their root: every write must land inside DestRoot.
func TestCopyHostileDestSymlinks(t *testing.T) {
	outer := t.TempDir()
	victim := mkdirTest(t, outer, "victim", 0o755)
	src := mkdirTest(t, outer, "src", 0o755)
	name := fmt.Sprintf("strata-copy-test-%d", os.Getpid())
	writeTestFile(t, src, name, "payload", 0o644)
	writeTestFile(t, src, "tree/etc/conf", "conf", 0o644)
	newRoot := func(t *testing.T) string {
		root := filepath.Join(outer, "a", "b", t.Name())
		mkdirTest(t, root, "usr", 0o755)
		return root
	}

	t.Run("absolute to the host /etc", func(t *testing.T) {
		root := newRoot(t)
		symlinkTest(t, "/etc", root, "usr/local")
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{name}, DestRoot: root, Dest: "/usr/local/"})
		wantFile(t, filepath.Join(root, "etc", name), "payload", 0o644)
		wantMissing(t, filepath.Join("/etc", name))
	})
	t.Run("absolute to a host path, dangling inside", func(t *testing.T) {
		root := newRoot(t)
		symlinkTest(t, victim, root, "usr/local")
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{name}, DestRoot: root, Dest: "/usr/local/bin/"})
		wantFile(t, filepath.Join(root, victim, "bin", name), "payload", 0o644)
		wantEmptyDir(t, victim)
	})
	t.Run("relative out of the root", func(t *testing.T) {
		root := newRoot(t)
		symlinkTest(t, "../../../", root, "usr/local")
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{name}, DestRoot: root, Dest: "/usr/local/bin/"})
		wantFile(t, filepath.Join(root, "bin", name), "payload", 0o644)
		wantMissing(t, filepath.Join(outer, "a", "bin"))
		wantMissing(t, filepath.Join(outer, "bin"))
	})
	t.Run("last component", func(t *testing.T) {
		root := newRoot(t)
		secret := writeTestFile(t, victim, "secret", "host", 0o600)
		defer os.Remove(secret)
		symlinkTest(t, secret, root, "app/config")
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{name}, DestRoot: root, Dest: "/app/config"})
		wantFile(t, filepath.Join(root, "app/config"), "payload", 0o644)
		wantFile(t, secret, "host", 0o600)
	})
	t.Run("last component dangling, a directory source", func(t *testing.T) {
		root := newRoot(t)
		symlinkTest(t, victim+"/made", root, "app/abs")
		symlinkTest(t, "../../../../made-rel", root, "app/rel")
		for _, dest := range []string{"/app/abs", "/app/rel"} {
			mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: dest})
		}
		for link, target := range map[string]string{"app/abs": victim + "/made", "app/rel": "../../../../made-rel"} {
			if got, err := os.Readlink(filepath.Join(root, link)); err != nil || got != target {
				t.Errorf("%s: %q, %v; want the symlink kept, to %s", link, got, err, target)
			}
		}
		wantFile(t, filepath.Join(root, victim, "made/etc/conf"), "conf", 0o644)
		wantFile(t, filepath.Join(root, "made-rel/etc/conf"), "conf", 0o644)
		wantEmptyDir(t, victim)
		wantMissing(t, filepath.Join(outer, "made-rel"))
	})
	t.Run("directory of the tree", func(t *testing.T) {
		root := newRoot(t)
		symlinkTest(t, victim, root, "etc")
		_, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/"})
		if !errors.Is(err, unix.ENOTDIR) {
			t.Errorf("copying etc/ onto a symlink: err = %v, want ENOTDIR (BuildKit's cannot copy to non-directory)", err)
		}
		wantEmptyDir(t, victim)
	})
	t.Run("link", func(t *testing.T) {
		root := newRoot(t)
		symlinkTest(t, "/etc", root, "usr/local")
		symlinkTest(t, victim, root, "etc")
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{name}, DestRoot: root, Dest: "/usr/local/bin/", Link: true})
		wantFile(t, filepath.Join(root, "usr/local/bin", name), "payload", 0o644)
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/", Link: true})
		wantFile(t, filepath.Join(root, "etc/conf"), "conf", 0o644)
		wantEmptyDir(t, victim)
	})
}

// TestCopyHostileSrcSymlinks copies from an image whose symlinks point out
// of it: they must resolve inside SrcRoot.
func TestCopyHostileSrcSymlinks(t *testing.T) {
	outer := t.TempDir()
	secret := writeTestFile(t, outer, "secret", "host secret", 0o644)
	img := mkdirTest(t, outer, "img", 0o755)
	writeTestFile(t, img, secret, "in image", 0o644)
	writeTestFile(t, img, "secret", "in image, relative", 0o644)
	symlinkTest(t, "/../../../../.."+secret, img, "etc/passwd")
	symlinkTest(t, "../../../../secret", img, "etc/shadow")
	symlinkTest(t, outer, img, "hostdir")
	symlinkTest(t, "/no/such/file", img, "etc/dangling")
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: img, Sources: []string{"/etc/passwd"}, DestRoot: root, Dest: "/passwd"})
	wantFile(t, filepath.Join(root, "passwd"), "in image", 0o644)
	mustCopy(t, CopySpec{SrcRoot: img, Sources: []string{"/etc/shadow"}, DestRoot: root, Dest: "/shadow"})
	wantFile(t, filepath.Join(root, "shadow"), "in image, relative", 0o644)
	mustCopy(t, CopySpec{SrcRoot: img, Sources: []string{"/hostdir/*"}, DestRoot: root, Dest: "/glob/"})
	wantFile(t, filepath.Join(root, "glob/secret"), "in image", 0o644)
	if _, err := Copy(context.Background(), CopySpec{SrcRoot: img, Sources: []string{"/etc/dangling"}, DestRoot: root, Dest: "/d"}); !errors.Is(err, ErrSourceNotFound) {
		t.Errorf("dangling source symlink: err = %v, want ErrSourceNotFound", err)
	}
}

func TestCopyReplaces(t *testing.T) {
	src := t.TempDir()
	writeTestFile(t, src, "f", "new", 0o644)
	writeTestFile(t, src, "tree/x", "x", 0o644)
	root := t.TempDir()
	writeTestFile(t, root, "old", "old content that is longer", 0o755)
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"f"}, DestRoot: root, Dest: "/old"})
	wantFile(t, filepath.Join(root, "old"), "new", 0o644)

	mkdirTest(t, root, "out/f", 0o755)
	if _, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"f"}, DestRoot: root, Dest: "/out/f/x"}); err != nil {
		t.Errorf("a file into a directory: %v", err)
	}
	_, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"f"}, DestRoot: root, Dest: "/out/"})
	if !errors.Is(err, unix.EISDIR) {
		t.Errorf("a file onto a directory: err = %v, want EISDIR", err)
	}
	_, err = Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/old"})
	if !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("a directory onto a file: err = %v, want ENOTDIR", err)
	}
}

func TestCopySpecialFiles(t *testing.T) {
	requireRootForCopy(t)
	src := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(mkdirTest(t, src, "tree", 0o755), "fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(src, "tree", "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/t"})
	fi, err := os.Lstat(filepath.Join(root, "t/fifo"))
	if err != nil || fi.Mode() != os.ModeNamedPipe|0o640 {
		t.Errorf("fifo: %v, %v; want a fifo with mode 0640", fi, err)
	}
	wantMissing(t, filepath.Join(root, "t/sock"))
}

func TestCopyXattrs(t *testing.T) {
	src := t.TempDir()
	f := writeTestFile(t, src, "tree/f", "f", 0o644)
	if err := unix.Setxattr(f, "user.strata", []byte("kept"), 0); err != nil {
		t.Skipf("the test file system takes no user xattrs: %v", err)
	}
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/t"})
	buf := make([]byte, 16)
	n, err := unix.Getxattr(filepath.Join(root, "t/f"), "user.strata", buf)
	if err != nil || string(buf[:n]) != "kept" {
		t.Errorf("user.strata on the copy: %q, %v; want kept", buf[:n], err)
	}
}

func TestCopyCancelled(t *testing.T) {
	src := t.TempDir()
	writeTestFile(t, src, "f", "f", 0o644)
	root := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Copy(ctx, CopySpec{SrcRoot: src, Sources: []string{"f"}, DestRoot: root, Dest: "/f"}); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	wantEmptyDir(t, root)
}

func TestCopyRefusesURLs(t *testing.T) {
	_, err := Copy(context.Background(), CopySpec{Sources: []string{"https://example.invalid/x"}, DestRoot: t.TempDir(), Dest: "/x"})
	if err == nil || !strings.Contains(err.Error(), "can't be a URL for COPY") {
		t.Errorf("err = %v, want source can't be a URL for COPY", err)
	}
}

func TestReadIgnoreFile(t *testing.T) {
	dir := t.TempDir()
	if got, err := ReadIgnoreFile(""); got != nil || err != nil {
		t.Errorf("no ignore file: %v, %v; want nil, nil", got, err)
	}
	if _, err := ReadIgnoreFile(filepath.Join(dir, ".dockerignore")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing ignore file: %v, want not exist", err)
	}
	writeTestFile(t, dir, ".dockerignore", "# comment\n/abs\n  spaced  \n!keep\n\n*.o\n", 0o644)
	got, err := ReadIgnoreFile(filepath.Join(dir, ".dockerignore"))
	if want := []string{"abs", "spaced", "!keep", "*.o"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("ReadIgnoreFile = %q, %v; want %q", got, err, want)
	}
	writeTestFile(t, dir, "huge", strings.Repeat("x\n", maxIgnoreFile/2+1), 0o644)
	if _, err := ReadIgnoreFile(filepath.Join(dir, "huge")); err == nil || !strings.Contains(err.Error(), "is over") {
		t.Errorf("an ignore file over %d bytes: %v, want refused", maxIgnoreFile, err)
	}
}

// TestFindIgnoreFile checks which ignore file a build takes: the
// Dockerfile's own, then .containerignore, then .dockerignore.
func TestFindIgnoreFile(t *testing.T) {
	dir := t.TempDir()
	df := filepath.Join(dir, "build", "app.Dockerfile")
	if got := FindIgnoreFile(dir, df); got != "" {
		t.Errorf("no ignore file: got %q", got)
	}
	for _, c := range []struct{ add, want string }{
		{".dockerignore", ".dockerignore"},
		{".containerignore", ".containerignore"},
		{"build/app.Dockerfile.dockerignore", "build/app.Dockerfile.dockerignore"},
	} {
		writeTestFile(t, dir, c.add, "x\n", 0o644)
		if got, want := FindIgnoreFile(dir, df), filepath.Join(dir, c.want); got != want {
			t.Errorf("with %s: got %q, want %q", c.add, got, want)
		}
	}
	// From standard input there is no Dockerfile to have one of its own.
	if got, want := FindIgnoreFile(dir, ""), filepath.Join(dir, ".containerignore"); got != want {
		t.Errorf("Dockerfile from stdin: got %q, want %q", got, want)
	}
	// A directory of that name is not an ignore file.
	other := t.TempDir()
	must(t, os.Mkdir(filepath.Join(other, ".containerignore"), 0o755))
	writeTestFile(t, other, ".dockerignore", "x\n", 0o644)
	if got, want := FindIgnoreFile(other, ""), filepath.Join(other, ".dockerignore"); got != want {
		t.Errorf("with a directory .containerignore: got %q, want %q", got, want)
	}
}

// checksumTree makes one build context for TestChecksum, tweaked by change.
func checksumTree(t *testing.T, change func(dir string)) string {
	dir := t.TempDir()
	writeTestFile(t, dir, "app/main.go", "package main", 0o644)
	writeTestFile(t, dir, "app/run.sh", "#!/bin/sh", 0o755)
	writeTestFile(t, dir, "app/ignored.log", "noise", 0o644)
	symlinkTest(t, "run.sh", dir, "app/start")
	mkdirTest(t, dir, "app/empty", 0o755)
	if change != nil {
		change(dir)
	}
	return dir
}

func TestChecksum(t *testing.T) {
	sum := func(dir string, tweak func(*CopySpec)) string {
		t.Helper()
		spec := CopySpec{SrcRoot: dir, Sources: []string{"app"}, Excludes: []string{"*.log", "app/*.log"}, Dest: "/srv/"}
		if tweak != nil {
			tweak(&spec)
		}
		d, err := Checksum(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		return d.String()
	}
	base := sum(checksumTree(t, nil), nil)
	same := map[string]func(string){
		"an mtime": func(dir string) {
			os.Chtimes(filepath.Join(dir, "app/main.go"), otherTime, otherTime)
			os.Chtimes(filepath.Join(dir, "app"), otherTime, otherTime)
		},
		"an excluded file": func(dir string) { writeTestFile(t, dir, "app/ignored.log", "other noise", 0o600) },
		"a file outside the source": func(dir string) {
			writeTestFile(t, dir, "other", "x", 0o644)
		},
	}
	if os.Geteuid() == 0 {
		same["an owner"] = func(dir string) { os.Lchown(filepath.Join(dir, "app/main.go"), 7, 7) }
	}
	for what, change := range same {
		if got := sum(checksumTree(t, change), nil); got != base {
			t.Errorf("changing %s changed the checksum", what)
		}
	}
	differ := map[string]func(string){
		"a byte": func(dir string) { writeTestFile(t, dir, "app/main.go", "package mainx", 0o644) },
		"a mode": func(dir string) { os.Chmod(filepath.Join(dir, "app/main.go"), 0o600) },
		"a name": func(dir string) { os.Rename(filepath.Join(dir, "app/main.go"), filepath.Join(dir, "app/Main.go")) },
		"a link target": func(dir string) {
			os.Remove(filepath.Join(dir, "app/start"))
			os.Symlink("main.go", filepath.Join(dir, "app/start"))
		},
		"a new dir":     func(dir string) { mkdirTest(t, dir, "app/empty2", 0o755) },
		"a dir's mode":  func(dir string) { os.Chmod(filepath.Join(dir, "app/empty"), 0o700) },
		"an added file": func(dir string) { writeTestFile(t, dir, "app/new", "", 0o644) },
		"a file to link": func(dir string) {
			os.Remove(filepath.Join(dir, "app/run.sh"))
			os.Symlink("#!/bin/sh", filepath.Join(dir, "app/run.sh"))
		},
		// The same bytes and mode, now one file of two names, as Copy
		// writes it.
		"a copy to a hard link": func(dir string) {
			writeTestFile(t, dir, "app/main2.go", "package main", 0o644)
			writeTestFile(t, dir, "app/main3.go", "package main", 0o644)
		},
	}
	linked := func(dir string) {
		writeTestFile(t, dir, "app/main2.go", "package main", 0o644)
		must(t, os.Link(filepath.Join(dir, "app/main.go"), filepath.Join(dir, "app/main3.go")))
	}
	if sum(checksumTree(t, differ["a copy to a hard link"]), nil) == sum(checksumTree(t, linked), nil) {
		t.Error("hard linking two files of a source left the checksum as it was")
	}
	for what, change := range differ {
		if got := sum(checksumTree(t, change), nil); got == base {
			t.Errorf("changing %s left the checksum as it was", what)
		}
	}
	for what, tweak := range map[string]func(*CopySpec){
		"the destination": func(s *CopySpec) { s.Dest = "/opt/" },
		"the owner":       func(s *CopySpec) { s.UID = 1 },
		"--chmod":         func(s *CopySpec) { m := os.FileMode(0o700); s.Chmod = &m },
		"the excludes":    func(s *CopySpec) { s.Excludes = nil },
		"--exclude":       func(s *CopySpec) { s.SourceExcludes = []string{"*.sh"} },
	} {
		if got := sum(checksumTree(t, nil), tweak); got == base {
			t.Errorf("changing %s left the checksum as it was", what)
		}
	}
}

func TestCopyLinkNeverFollowsDest(t *testing.T) {
	src := t.TempDir()
	writeTestFile(t, src, "f", "f", 0o644)
	for _, link := range []bool{false, true} {
		root := t.TempDir()
		mkdirTest(t, root, "real", 0o755)
		symlinkTest(t, "/real", root, "app")
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"f"}, DestRoot: root, Dest: "/app", Link: link})
		if link {
			wantFile(t, filepath.Join(root, "app"), "f", 0o644)
			wantEmptyDir(t, filepath.Join(root, "real"))
		} else {
			wantFile(t, filepath.Join(root, "real/f"), "f", 0o644)
		}
	}
}

func TestCopyKeepsHardlinksWithinASource(t *testing.T) {
	src := t.TempDir()
	a := writeTestFile(t, src, "tree/a", "linked", 0o640)
	for _, rel := range []string{"tree/b", "tree/sub/c"} {
		mkdirTest(t, src, filepath.Dir(rel), 0o755)
		if err := os.Link(a, filepath.Join(src, rel)); err != nil {
			t.Fatal(err)
		}
	}
	writeTestFile(t, src, "tree/d", "linked", 0o640)
	plain := t.TempDir()
	for _, rel := range []string{"a", "b", "sub/c", "d"} {
		writeTestFile(t, plain, "tree/"+rel, "linked", 0o640)
	}

	root := t.TempDir()
	writeTestFile(t, root, "t/b", "replaced", 0o644)
	mode := os.FileMode(0o600)
	n := mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/t", UID: 1234, GID: 5678, Chmod: &mode})
	plainRoot := t.TempDir()
	writeTestFile(t, plainRoot, "t/b", "replaced", 0o644)
	if want := mustCopy(t, CopySpec{SrcRoot: plain, Sources: []string{"tree"}, DestRoot: plainRoot, Dest: "/t"}); n != want {
		t.Errorf("copy wrote %d entries, the same tree without links %d", n, want)
	}
	ino := func(rel string, mode os.FileMode) uint64 {
		t.Helper()
		fi := wantFile(t, filepath.Join(root, rel), "linked", mode)
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	for _, rel := range []string{"t/a", "t/b", "t/sub/c", "t/d"} {
		wantOwner(t, filepath.Join(root, rel), 1234, 5678)
	}
	if a, b, c := ino("t/a", 0o600), ino("t/b", 0o600), ino("t/sub/c", 0o600); a != b || a != c {
		t.Errorf("t/a, t/b, t/sub/c are inodes %d, %d, %d: want one file with three names", a, b, c)
	}
	if ino("t/d", 0o600) == ino("t/a", 0o600) {
		t.Error("t/d, a file of its own in the source, is a link of t/a")
	}

	// Names given as sources of their own are copied as files of their own
	// (as buildah copies them).
	root = t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"tree/a", "tree/b"}, DestRoot: root, Dest: "/p/"})
	if ino("p/a", 0o640) == ino("p/b", 0o640) {
		t.Error("two sources naming one file were copied as links")
	}
}

// TestCopyParents: COPY --parents puts each source below Dest at its path,
// or at what follows a "/./" pivot, its missing directories made with the
// source directories' modes (or --chmod's) and the copy's owner.
func TestCopyParents(t *testing.T) {
	src := t.TempDir()
	for _, f := range []string{"a.txt", "x/a.txt", "x/b.md", "x/sub/c.txt", "y/a.txt", "z/deep/d.txt"} {
		writeTestFile(t, src, f, f, 0o644)
	}
	for rel, mode := range map[string]os.FileMode{"x": 0o750, "x/sub": 0o711, "z/deep": 0o700} {
		if err := os.Chmod(filepath.Join(src, rel), mode); err != nil {
			t.Fatal(err)
		}
	}
	files := func(root string) []string {
		var got []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(root, p)
				got = append(got, rel)
			}
			return nil
		})
		return got
	}
	for _, tt := range []struct {
		sources, exclude, want []string
	}{
		{[]string{"x/a.txt", "y/a.txt"}, nil, []string{"x/a.txt", "y/a.txt"}},
		{[]string{"*/a.txt"}, nil, []string{"x/a.txt", "y/a.txt"}},
		{[]string{"x"}, nil, []string{"x/a.txt", "x/b.md", "x/sub/c.txt"}},
		{[]string{"./z/./deep/d.txt"}, nil, []string{"deep/d.txt"}},
		{[]string{"z/./deep"}, nil, []string{"deep/d.txt"}},
		{[]string{"a.txt"}, nil, []string{"a.txt"}},
		// "**" matches any number of directories, none too (the
		// Dockerfile reference's own example), as BuildKit's include
		// pattern does
		{[]string{"./**/*.txt"}, nil, []string{"a.txt", "x/a.txt", "x/sub/c.txt", "y/a.txt", "z/deep/d.txt"}},
		{[]string{"x/**/*.txt"}, nil, []string{"x/a.txt", "x/sub/c.txt"}},
		{[]string{"**/c.txt"}, nil, []string{"x/sub/c.txt"}},
		{[]string{"z/./**/*.txt"}, nil, []string{"deep/d.txt"}},
		{[]string{"x/**"}, nil, []string{"x/a.txt", "x/b.md", "x/sub/c.txt"}},
		{[]string{"x/**/*.none"}, nil, nil},
		// --exclude sees the paths from the pivot, wildcard matches too
		{[]string{"x/*"}, []string{"x/a.txt"}, []string{"x/b.md", "x/sub/c.txt"}},
		{[]string{"x/**/*"}, []string{"**/c.txt"}, []string{"x/a.txt", "x/b.md"}},
		{[]string{"x"}, []string{"x/sub"}, []string{"x/a.txt", "x/b.md"}},
		{[]string{"x"}, []string{"sub"}, []string{"x/a.txt", "x/b.md", "x/sub/c.txt"}},
		{[]string{"z/./deep"}, []string{"deep/d.txt"}, nil},
	} {
		root := t.TempDir()
		mustCopy(t, CopySpec{SrcRoot: src, Sources: tt.sources, SourceExcludes: tt.exclude, DestRoot: root, Dest: "/p", Parents: true})
		if got := files(filepath.Join(root, "p")); !slices.Equal(got, tt.want) {
			t.Errorf("COPY --parents --exclude=%q %q: copied %q, want %q", tt.exclude, tt.sources, got, tt.want)
		}
	}
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"x/sub/c.txt", "z/./deep/d.txt"}, DestRoot: root, Dest: "/p/", Parents: true, UID: 1234, GID: 5678})
	for rel, mode := range map[string]os.FileMode{"p": 0o755, "p/x": 0o750, "p/x/sub": 0o711, "p/deep": 0o700} {
		fi, err := os.Stat(filepath.Join(root, rel))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want a directory of mode %04o", rel, fi, err, mode)
			continue
		}
		if rel != "p" && os.Geteuid() == 0 {
			wantOwner(t, filepath.Join(root, rel), 1234, 5678)
		}
	}
	mode := os.FileMode(0o700)
	root = t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"x/sub/c.txt"}, DestRoot: root, Dest: "/p/", Parents: true, Chmod: &mode})
	if fi, err := os.Stat(filepath.Join(root, "p/x/sub")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("p/x/sub with --chmod=0700: %v, %v", fi, err)
	}
}

// TestCopyParentsSymlinks: COPY --parents copies a symlink it names as a
// symlink, and goes through none on the way, its pivot's included (the
// path names nothing then), as BuildKit's copy walks with lstat.
func TestCopyParentsSymlinks(t *testing.T) {
	src := t.TempDir()
	writeTestFile(t, src, "f", "f", 0o644)
	writeTestFile(t, src, "dir/sub/b", "b", 0o644)
	symlinkTest(t, "f", src, "lnk")
	symlinkTest(t, "sub", src, "dir/dirlnk")
	symlinkTest(t, "dir", src, "dlnk")
	symlinkTest(t, "/dir", src, "abs")
	readlink := func(p string) string {
		target, err := os.Readlink(p)
		if err != nil {
			t.Errorf("%v; want a symlink", err)
		}
		return target
	}
	for _, tt := range []struct {
		source, link, target string
	}{
		{"lnk", "p/lnk", "f"},
		{"dir/dirlnk", "p/dir/dirlnk", "sub"},
		{"./dir/./dirlnk", "p/dirlnk", "sub"},
		{"dir/*lnk", "p/dir/dirlnk", "sub"},
		{"dir/./dirlnk", "p/dirlnk", "sub"},
	} {
		root := t.TempDir()
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{tt.source}, DestRoot: root, Dest: "/p/", Parents: true})
		if tt.link != "" {
			if got := readlink(filepath.Join(root, tt.link)); got != tt.target {
				t.Errorf("COPY --parents %s: %s links to %q, want %q", tt.source, tt.link, got, tt.target)
			}
		}
	}
	// The cache key sees the link, not what it points to.
	spec := CopySpec{SrcRoot: src, Sources: []string{"lnk"}, DestRoot: t.TempDir(), Dest: "/p/", Parents: true}
	before, err := Checksum(context.Background(), spec)
	must(t, err)
	must(t, os.Remove(filepath.Join(src, "lnk")))
	symlinkTest(t, "dir", src, "lnk")
	if after, err := Checksum(context.Background(), spec); err != nil || after == before {
		t.Errorf("COPY --parents lnk: checksum %s, %v after the link changed, %s before", after, err, before)
	}
	for _, source := range []string{"dlnk/sub/b", "dir/dirlnk/b", "dlnk/./dirlnk", "abs/./sub/b"} {
		_, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{source}, DestRoot: t.TempDir(), Dest: "/p/", Parents: true})
		if !errors.Is(err, ErrSourceNotFound) {
			t.Errorf("COPY --parents %s (through a symlink): err = %v, want ErrSourceNotFound", source, err)
		}
	}
}

// TestCopyKeepOwners: with KeepOwners (COPY --from without --chown) every
// entry keeps its source owner, the directories made for Dest are UID:GID's,
// and an owner then counts in the cache key.
func TestCopyKeepOwners(t *testing.T) {
	requireRootForCopy(t)
	src := t.TempDir()
	writeTestFile(t, src, "tree/f", "f", 0o644)
	mkdirTest(t, src, "tree/sub", 0o700)
	symlinkTest(t, "f", src, "tree/link")
	for rel, id := range map[string]int{"tree/f": 1234, "tree/sub": 42, "tree/link": 7} {
		if err := os.Lchown(filepath.Join(src, rel), id, id+1); err != nil {
			t.Fatal(err)
		}
	}
	root := t.TempDir()
	spec := CopySpec{SrcRoot: src, Sources: []string{"tree"}, DestRoot: root, Dest: "/made/t/", KeepOwners: true}
	mustCopy(t, spec)
	wantOwner(t, filepath.Join(root, "made/t/f"), 1234, 1235)
	wantOwner(t, filepath.Join(root, "made/t/sub"), 42, 43)
	wantOwner(t, filepath.Join(root, "made/t/link"), 7, 8)
	wantOwner(t, filepath.Join(root, "made"), 0, 0)

	spec.DestRoot = ""
	k1, err := Checksum(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(src, "tree/f"), 99, 99); err != nil {
		t.Fatal(err)
	}
	if k2, _ := Checksum(context.Background(), spec); k2 == k1 {
		t.Error("a source owner changed and the cache key of a copy that keeps owners did not")
	}
}
