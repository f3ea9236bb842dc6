package kmount

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounts tmpfs and overlayfs: run as root (make test does)")
	}
}

func tmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

// TestUnderAndClearStale stacks mounts under a root, one of them twice
// and one with a space in its name (mountinfo escapes it), and clears
// them all, deepest first.
func TestUnderAndClearStale(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	a, b, spaced := filepath.Join(root, "a"), filepath.Join(root, "a", "b"), filepath.Join(root, "with space")
	tmpfs(t, a)
	tmpfs(t, b)
	tmpfs(t, spaced)
	tmpfs(t, spaced) // stacked
	if !IsMountpoint(a) || !IsMountpoint(spaced) || IsMountpoint(root) {
		t.Fatal("IsMountpoint is wrong")
	}
	if IsMountpoint(filepath.Join(root, "missing")) {
		t.Error("a missing directory is a mountpoint")
	}
	ms, err := Under(root)
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, m := range ms {
		targets = append(targets, m.Target)
		if m.FSType != "tmpfs" {
			t.Errorf("%s: type %q", m.Target, m.FSType)
		}
	}
	slices.Sort(targets)
	if want := []string{a, b, spaced, spaced}; !slices.Equal(targets, want) {
		t.Fatalf("Under: %q, want %q", targets, want)
	}
	cleared, err := ClearStale(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cleared) != 4 || cleared[0] != b {
		t.Errorf("cleared %q; want 4, deepest (%s) first", cleared, b)
	}
	if ms, _ := Under(root); len(ms) != 0 {
		t.Errorf("still mounted: %+v", ms)
	}
}

func TestOverlayReadOnlyAndWritable(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	lower, upper, work, merged := filepath.Join(base, "lower"), filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	for _, d := range []string{lower, upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "f"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Overlay(merged, []string{lower}, upper, work, "index=off"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Unmount(merged) })
	if err := os.WriteFile(filepath.Join(merged, "f"), []byte("upper"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(upper, "f")); string(b) != "upper" {
		t.Errorf("upper has %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(lower, "f")); string(b) != "lower" {
		t.Errorf("lower has %q", b)
	}
	if err := Unmount(merged); err != nil {
		t.Fatal(err)
	}
	if err := Overlay(merged, []string{upper, lower}, "", ""); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(merged, "g"), nil, 0o644); err == nil {
		t.Error("wrote into a read-only overlay")
	}
	if err := Unmount(merged); err != nil {
		t.Fatal(err)
	}
	if err := Unmount(merged); err != nil {
		t.Errorf("unmounting what is not mounted: %v", err)
	}
	if err := Overlay(merged, nil, "", ""); err == nil {
		t.Error("an overlay without layers was mounted")
	}
}

// TestOverlayPathsWithSeparators: a path holding overlayfs's separators
// (":" between lower directories, "," between options, "\\" their escape)
// is that one directory, never others (a relative "y" the working
// directory resolves), for lower, upper and work directories alike.
func TestOverlayPathsWithSeparators(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	t.Chdir(base)
	for _, name := range []string{"x:y", "x", "y", "c,d", `e\f`, "lo", "up:p,x", "wo:k,x", "merged"} {
		if err := os.Mkdir(filepath.Join(base, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(base, name, "in-"+name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	merged := filepath.Join(base, "merged")
	list := func() []string {
		t.Helper()
		ents, err := os.ReadDir(merged)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	for _, lower := range []string{"x:y", "c,d", `e\f`} {
		if err := Overlay(merged, []string{filepath.Join(base, lower), filepath.Join(base, "lo")}, "", ""); err != nil {
			t.Fatalf("%s: %v", lower, err)
		}
		want := []string{"in-" + lower, "in-lo"}
		slices.Sort(want) // as ReadDir lists them
		if got := list(); !slices.Equal(got, want) {
			t.Errorf("lower %q: the overlay shows %q, want %q", lower, got, want)
		}
		if err := Unmount(merged); err != nil {
			t.Fatal(err)
		}
	}
	os.Remove(filepath.Join(base, "wo:k,x", "in-wo:k,x")) // a work directory must be empty
	if err := Overlay(merged, []string{filepath.Join(base, "x:y")}, filepath.Join(base, "up:p,x"), filepath.Join(base, "wo:k,x")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Unmount(merged) })
	if got, want := list(), []string{"in-up:p,x", "in-x:y"}; !slices.Equal(got, want) {
		t.Errorf("writable: the overlay shows %q, want %q", got, want)
	}
}

// TestOverlayManyLayers: more layers than one page of mount options holds
// are stacked one by one (on kernels that take "lowerdir+"; elsewhere the
// mount is refused with a clear error), read-only and writable, the top
// layer first; more than overlayfs stacks are refused.
func TestOverlayManyLayers(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	var lowers []string
	for i := range 300 {
		// Long names: 300 of them fill the page several times over.
		d := filepath.Join(base, fmt.Sprintf("layer-with-a-long-name-%03d", i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, body := range map[string]string{fmt.Sprintf("f%03d", i): "x", "top": fmt.Sprint(i)} {
			if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		lowers = append(lowers, d)
	}
	merged, upper, work := filepath.Join(base, "merged"), filepath.Join(base, "upper"), filepath.Join(base, "work")
	for _, d := range []string{merged, upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	err := Overlay(merged, lowers, "", "")
	if err != nil && strings.Contains(err.Error(), "Linux 6.8 or later") {
		t.Logf("this kernel takes no lowerdir+: %v", err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Unmount(merged) })
	entries, err := os.ReadDir(merged)
	if err != nil || len(entries) != 301 {
		t.Errorf("the merged tree has %d entries (%v), want 301", len(entries), err)
	}
	if b, _ := os.ReadFile(filepath.Join(merged, "top")); string(b) != "0" {
		t.Errorf("top reads %q, want the first layer's 0", b)
	}
	if err := os.WriteFile(filepath.Join(merged, "g"), nil, 0o644); err == nil {
		t.Error("wrote into a read-only overlay")
	}
	if err := Unmount(merged); err != nil {
		t.Fatal(err)
	}

	if err := Overlay(merged, lowers, upper, work, "index=off", "metacopy=off"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(merged, "f299"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(upper, "f299")); string(b) != "changed" {
		t.Errorf("upper has %q", b)
	}
	if err := Unmount(merged); err != nil {
		t.Fatal(err)
	}

	tooMany := make([]string, MaxOverlayLayers+1)
	for i := range tooMany {
		tooMany[i] = lowers[0]
	}
	if err := Overlay(merged, tooMany, "", ""); err == nil || !strings.Contains(err.Error(), "more than the 500 overlayfs stacks") {
		Unmount(merged)
		t.Errorf("501 layers: %v, want them refused", err)
	}
}

// TestBindSetsExactlyTheFlags: a bind takes the flags given, not its
// source's (a tmpfs mounted nosuid and nodev here), and FSType names the
// source's filesystem.
func TestBindSetsExactlyTheFlags(t *testing.T) {
	requireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	if err := unix.Mount("tmpfs", src, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Detach(src) })
	if got := FSType(dst); got != "" {
		t.Errorf("FSType of a plain directory: %q", got)
	}
	if err := Bind(src, dst, unix.MS_RDONLY); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Detach(dst) })
	if got := FSType(dst); got != "tmpfs" {
		t.Errorf("FSType of the bind: %q, want tmpfs", got)
	}
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dst))
	if err != nil || len(infos) != 1 {
		t.Fatalf("mountinfo of %s: %v, %v", dst, infos, err)
	}
	opts := strings.Split(infos[0].Options, ",")
	if !slices.Contains(opts, "ro") || slices.Contains(opts, "nosuid") || slices.Contains(opts, "nodev") {
		t.Errorf("bind mounted with %q, want ro without nosuid or nodev", infos[0].Options)
	}
}

func TestBindReadOnly(t *testing.T) {
	requireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	if err := BindReadOnly(src, dst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Detach(dst) })
	if err := os.WriteFile(filepath.Join(dst, "x"), nil, 0o644); err == nil {
		t.Error("wrote through a read-only bind")
	}
	if err := Unmount(dst); err != nil {
		t.Fatal(err)
	}
	if IsMountpoint(dst) {
		t.Error("still mounted")
	}
}
