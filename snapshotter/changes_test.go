package snapshotter_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/snapshotter"
)

// TestUpperChanges makes every kind of change in a real overlay of a
// WithWholeUpper snapshotter and checks the list UpperChanges reports from
// the upper directory against a view of the lower layers.
func TestUpperChanges(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	base := testRoot(t)
	sn, err := snapshotter.New(filepath.Join(base, "root"), snapshotter.WithWholeUpper())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })

	// The lower layer, written through a snapshot of its own.
	lowerMounts, err := sn.Prepare(ctx, "lower-active", "")
	if err != nil {
		t.Fatal(err)
	}
	work := mountAt(t, base, lowerMounts)
	for _, d := range []string{"etc", "usr/bin", "var/lib/gone", "var/lib/gone/sub", "var/opaque/sub", "mv/src/deep", "meta", "quiet/dir"} {
		must(t, os.MkdirAll(filepath.Join(work, d), 0o755))
	}
	for p, content := range map[string]string{
		"etc/hosts": "hosts", "etc/keep": "keep", "usr/bin/tool": "tool", "var/lib/gone/a": "a",
		"var/lib/gone/sub/b": "b", "var/opaque/sub/c": "c", "var/opaque/old": "old", "mv/src/deep/f": "f",
		"meta/file": "meta", "quiet/dir/file": "quiet",
	} {
		must(t, os.WriteFile(filepath.Join(work, p), []byte(content), 0o644))
	}
	// Fixed times, so that nothing depends on when the test runs.
	old := time.Unix(1_600_000_000, 123)
	must(t, filepath.Walk(work, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chtimes(p, old, old)
	}))
	must(t, mount.UnmountAll(work, 0))
	must(t, sn.Commit(ctx, "lower", "lower-active"))

	stepMounts, err := sn.Prepare(ctx, "step", "lower")
	if err != nil {
		t.Fatal(err)
	}
	step := mountAt(t, base, stepMounts)
	in := func(p string) string { return filepath.Join(step, p) }
	must(t, os.WriteFile(in("etc/new"), []byte("new"), 0o644))
	must(t, os.WriteFile(in("etc/keep"), []byte("changed"), 0o644))
	must(t, os.Remove(in("etc/hosts")))
	must(t, os.RemoveAll(in("var/lib/gone")))
	must(t, os.MkdirAll(in("var/lib/gone/again"), 0o755)) // deleted, then made anew: opaque
	must(t, os.RemoveAll(in("var/opaque")))
	must(t, os.Mkdir(in("var/opaque"), 0o755))
	must(t, os.Chmod(in("usr/bin/tool"), 0o700))
	must(t, unix.Lsetxattr(in("meta/file"), "user.step", []byte("1"), 0))
	if out, err := exec.Command("mv", in("mv/src"), in("mv/dst")).CombinedOutput(); err != nil {
		t.Fatalf("mv: %v: %s", err, out)
	}
	// Something made and removed again, and its parent's times put back:
	// the parent is in upper (copied up) but unchanged.
	must(t, os.WriteFile(in("quiet/dir/tmp"), nil, 0o644))
	must(t, os.Remove(in("quiet/dir/tmp")))
	must(t, os.Chtimes(in("quiet/dir"), old, old))

	upper, err := sn.UpperDir(ctx, "step")
	if err != nil {
		t.Fatal(err)
	}
	viewMounts, err := sn.View(ctx, "view", "lower")
	if err != nil {
		t.Fatal(err)
	}
	view := mountAt(t, base, viewMounts)
	var got []string
	err = snapshotter.UpperChanges(ctx, view, upper, func(c snapshotter.Change) error {
		s := c.Kind.String() + " " + c.Path
		if c.Opaque {
			s += " (opaque)"
		}
		if (c.Kind == snapshotter.ChangeDelete) != (c.Info == nil) {
			return fmt.Errorf("%s: Info %v", s, c.Info)
		}
		got = append(got, s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"C /etc",
		"D /etc/hosts",
		"C /etc/keep",
		"A /etc/new",
		"C /meta/file",
		"C /mv",
		"A /mv/dst",
		"A /mv/dst/deep",
		"A /mv/dst/deep/f",
		"D /mv/src",
		"C /usr/bin/tool",
		"C /var",
		"C /var/lib",
		"C /var/lib/gone (opaque)",
		"A /var/lib/gone/again",
		"C /var/opaque (opaque)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("changes:\n got %q\nwant %q", got, want)
	}

	// As docker diff lists them: what a directory made anew holds that the
	// lower layers held too is changed, what they held and it lacks is
	// deleted (a deleted tree by its top), and every directory above a
	// change is changed, its own attributes unchanged or not.
	diff, err := snapshotter.DiffChanges(ctx, view, upper)
	if err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for _, c := range diff {
		got = append(got, c.Kind.String()+" "+c.Path)
	}
	want = []string{
		"C /etc",
		"D /etc/hosts",
		"C /etc/keep",
		"A /etc/new",
		"C /meta",
		"C /meta/file",
		"C /mv",
		"A /mv/dst",
		"A /mv/dst/deep",
		"A /mv/dst/deep/f",
		"D /mv/src",
		"C /usr",
		"C /usr/bin",
		"C /usr/bin/tool",
		"C /var",
		"C /var/lib",
		"C /var/lib/gone",
		"D /var/lib/gone/a",
		"A /var/lib/gone/again",
		"D /var/lib/gone/sub",
		"C /var/opaque",
		"D /var/opaque/old",
		"D /var/opaque/sub",
	}
	if !slices.Equal(got, want) {
		t.Errorf("docker diff's changes:\n got %q\nwant %q", got, want)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestUpperFingerprint: what a run leaves behind when it changes nothing
// (an entry made in a directory and removed, the directory's times put
// back) keeps the fingerprint; every change a commit would carry moves it.
func TestUpperFingerprint(t *testing.T) {
	requireRoot(t) // trusted.* xattrs
	upper := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(upper, "etc/sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(upper, "etc/hosts"), []byte("abc"), 0o644))
	old := time.Unix(1700000000, 0)
	must(t, os.Chtimes(filepath.Join(upper, "etc"), old, old))
	must(t, os.Chtimes(filepath.Join(upper, "etc/hosts"), old, old))
	fp := func() string {
		t.Helper()
		f, err := snapshotter.UpperFingerprint(upper)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	want := fp()
	same := func(what string) {
		t.Helper()
		if got := fp(); got != want {
			t.Errorf("%s changed the fingerprint", what)
		}
	}
	moved := func(what string) {
		t.Helper()
		got := fp()
		if got == want {
			t.Errorf("%s left the fingerprint as it was", what)
		}
		want = got
	}
	etc := filepath.Join(upper, "etc")

	time.Sleep(10 * time.Millisecond) // a later ctime, on coarse clocks too
	must(t, os.WriteFile(filepath.Join(etc, "resolv.conf"), nil, 0o644))
	must(t, os.Remove(filepath.Join(etc, "resolv.conf")))
	must(t, os.Chtimes(etc, old, old))
	same("a mount target made in a directory and taken away")
	must(t, os.Chmod(etc, 0o755))
	same("a chmod to the same mode")
	must(t, unix.Lsetxattr(etc, "trusted.overlay.impure", []byte("y"), 0))
	same("overlayfs' impure mark")

	must(t, unix.Lsetxattr(etc, "trusted.overlay.opaque", []byte("y"), 0))
	moved("the opaque mark")
	must(t, unix.Lsetxattr(etc, "user.note", []byte("1"), 0))
	moved("a directory's xattr")
	must(t, unix.Lsetxattr(etc, "user.note", []byte("2"), 0))
	moved("a directory's xattr's new value")
	must(t, os.Chmod(etc, 0o700))
	moved("a directory's mode")
	must(t, os.Chown(etc, 1, 1))
	moved("a directory's owner")
	must(t, os.Chtimes(etc, old.Add(time.Second), old.Add(time.Second)))
	moved("a directory's mtime")
	must(t, os.Mkdir(filepath.Join(etc, "new"), 0o755))
	must(t, os.Chtimes(etc, old, old))
	moved("a new directory")
	must(t, os.Remove(filepath.Join(etc, "sub")))
	must(t, os.Chtimes(etc, old, old))
	moved("a removed directory")
	time.Sleep(10 * time.Millisecond)
	must(t, os.WriteFile(filepath.Join(etc, "hosts"), []byte("xyz"), 0o644))
	must(t, os.Chtimes(filepath.Join(etc, "hosts"), old, old))
	moved("a file rewritten with its size and times kept")

	// overlayfs (5.8 and later) makes each whiteout a link of one inode in
	// its work directory, and a mount of the same upper empties that
	// directory: the whiteout's link count and change time move, and
	// nothing it stands for did.
	wh := filepath.Join(etc, "gone")
	must(t, unix.Mknod(wh, unix.S_IFCHR, 0))
	shared := filepath.Join(t.TempDir(), "whiteout")
	must(t, os.Link(wh, shared))
	want = fp()
	time.Sleep(10 * time.Millisecond)
	must(t, os.Remove(shared))
	same("the shared whiteout inode's other link going")
	must(t, os.Remove(wh))
	must(t, os.WriteFile(wh, nil, 0o644))
	moved("a whiteout replaced by a file")
}
