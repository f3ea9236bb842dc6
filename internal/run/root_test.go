package run

import (
	"errors"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostile is a rootfs whose /etc is an absolute symlink to a host
// directory holding a passwd file, and whose /var/passwd climbs out with
// "..". Nothing in the host directory may be read or written.
func hostile(t *testing.T) (rootfs, host string) {
	t.Helper()
	base := t.TempDir()
	rootfs, host = filepath.Join(base, "rootfs"), filepath.Join(base, "host")
	must(t, os.MkdirAll(filepath.Join(rootfs, "var"), 0o755))
	must(t, os.MkdirAll(host, 0o755))
	writeFile(t, filepath.Join(host, "passwd"), "evil:x:666:666::/:/bin/sh\n")
	must(t, os.Symlink(host, filepath.Join(rootfs, "etc")))
	must(t, os.Symlink("../../../../../../../../"+host+"/passwd", filepath.Join(rootfs, "var/passwd")))
	return rootfs, host
}

func TestUserConfinedToRoot(t *testing.T) {
	rootfs, _ := hostile(t)
	r, err := openRoot(rootfs)
	must(t, err)
	defer r.close()
	if _, err := resolveUser(r, "evil"); !errors.Is(err, ErrUserNotFound) {
		t.Fatalf("user from the host's file: %v, want ErrUserNotFound", err)
	}
	if _, err := r.readFile("/var/passwd"); err == nil {
		t.Fatal("read a host file through a .. symlink")
	}
	u, err := resolveUser(r, "1234:99")
	if err != nil || u.uid != 1234 || u.gid != 99 || u.home != "" {
		t.Fatalf("numeric user without passwd: %+v, %v", u, err)
	}
}

// TestTargetsConfinedToRoot: making /etc/resolv.conf where /etc points at
// a host directory creates it inside the rootfs (as the runtime resolves
// it), never in the host directory, and cleanup takes it all away.
func TestTargetsConfinedToRoot(t *testing.T) {
	rootfs, host := hostile(t)
	r, err := openRoot(rootfs)
	must(t, err)
	defer r.close()
	tg := newTargets(r)
	got, err := tg.ensure("/etc/resolv.conf", true)
	must(t, err)
	if want := host + "/resolv.conf"; got != want {
		t.Errorf("resolved to %q, want %q (inside the root)", got, want)
	}
	if _, err := os.Stat(filepath.Join(host, "resolv.conf")); err == nil {
		t.Fatal("created a file in the host directory")
	}
	if _, err := os.Stat(filepath.Join(rootfs, host, "resolv.conf")); err != nil {
		t.Fatalf("not created inside the root: %v", err)
	}
	tg.seal()
	must(t, tg.cleanup())
	entries, _ := os.ReadDir(rootfs)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"etc", "var"}) {
		t.Errorf("rootfs holds %v after cleanup, want [etc var]", names)
	}
}

// TestTargetsCleanup: created entries go, deepest first; a directory the
// "command" wrote into stays, with its parent's times; untouched parents
// get their times back.
func TestTargetsCleanup(t *testing.T) {
	rootfs := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755))
	must(t, os.Symlink("../real", filepath.Join(rootfs, "etc/link.conf"))) // dangling
	old := time.Unix(1600000000, 0)
	for _, d := range []string{"etc", "."} {
		must(t, os.Chtimes(filepath.Join(rootfs, d), old, old))
	}
	r, err := openRoot(rootfs)
	must(t, err)
	defer r.close()
	tg := newTargets(r)
	for _, tc := range []struct {
		dest string
		file bool
		want string
	}{
		{"/etc/hosts", true, "/etc/hosts"},
		{"/etc/link.conf", true, "/real"},
		{"/a/b/c", false, "/a/b/c"},
		{"/keep/x", false, "/keep/x"},
		{"/etc", false, "/etc"},
	} {
		got, err := tg.ensure(tc.dest, tc.file)
		if err != nil || got != tc.want {
			t.Fatalf("ensure %s: %q, %v; want %q", tc.dest, got, err, tc.want)
		}
	}
	if _, err := tg.ensure("/etc/hosts/x", false); err == nil {
		t.Error("ensure under a file succeeded")
	}
	if _, err := tg.ensure("/etc", true); err == nil {
		t.Error("ensure of a file where a directory is succeeded")
	}
	tg.seal()
	writeFile(t, filepath.Join(rootfs, "keep/mine"), "the command's\n")
	must(t, tg.cleanup())

	var left []string
	must(t, filepath.Walk(rootfs, func(p string, _ os.FileInfo, err error) error {
		rel, _ := filepath.Rel(rootfs, p)
		left = append(left, rel)
		return err
	}))
	want := []string{".", "etc", "etc/link.conf", "keep", "keep/mine"}
	if !slices.Equal(left, want) {
		t.Errorf("left %v, want %v", left, want)
	}
	if st, _ := os.Stat(filepath.Join(rootfs, "etc")); !st.ModTime().Equal(old) {
		t.Errorf("/etc mtime %v, want %v restored", st.ModTime(), old)
	}
	if st, _ := os.Stat(rootfs); st.ModTime().Equal(old) {
		t.Error("root mtime restored although /keep stayed")
	}
}

// TestTargetsCleanupUnsealed: a run that fails before its command runs
// (no seal) gives the parents it touched their times back: nothing but
// the run changed them.
func TestTargetsCleanupUnsealed(t *testing.T) {
	rootfs := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755))
	old := time.Unix(1600000000, 0)
	must(t, os.Chtimes(filepath.Join(rootfs, "etc"), old, old))
	r, err := openRoot(rootfs)
	must(t, err)
	defer r.close()
	tg := newTargets(r)
	if _, err := tg.ensure("/etc/hosts", true); err != nil {
		t.Fatal(err)
	}
	must(t, tg.cleanup())
	if st, _ := os.Stat(filepath.Join(rootfs, "etc")); !st.ModTime().Equal(old) {
		t.Errorf("/etc mtime %v after a run that never started, want %v restored", st.ModTime(), old)
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "etc/hosts")); !os.IsNotExist(err) {
		t.Errorf("/etc/hosts left: %v", err)
	}
}

func TestLookPath(t *testing.T) {
	rootfs := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(rootfs, "usr/bin"), 0o755))
	must(t, os.MkdirAll(filepath.Join(rootfs, "sbin"), 0o755))
	must(t, os.Symlink("/usr/bin", filepath.Join(rootfs, "bin"))) // absolute, inside the root
	must(t, os.WriteFile(filepath.Join(rootfs, "usr/bin/tool"), []byte("#!"), 0o755))
	must(t, os.WriteFile(filepath.Join(rootfs, "sbin/tool"), []byte("#!"), 0o644))
	must(t, os.WriteFile(filepath.Join(rootfs, "usr/bin/noexec"), []byte("#!"), 0o644))
	r, err := openRoot(rootfs)
	must(t, err)
	defer r.close()
	for _, tc := range []struct {
		name, path string
		ok         bool
	}{
		{"tool", "/sbin:/bin", true}, // a non-executable match is skipped
		{"tool", "/sbin", false},
		{"/bin/tool", "", true},
		{"bin/tool", "", true}, // relative to the working directory /
		{"noexec", "/usr/bin", false},
		{"missing", "/usr/bin:relative", false},
	} {
		err := lookPath(r, tc.name, tc.path, "/")
		if (err == nil) != tc.ok {
			t.Errorf("lookPath(%q, PATH=%q): %v, want ok=%v", tc.name, tc.path, err, tc.ok)
		}
		if tc.name == "missing" && !errors.Is(err, ErrCommandNotFound) {
			t.Errorf("missing: %v, want ErrCommandNotFound", err)
		}
	}
	// A path that names what cannot be run is no missing command: 126
	// for strata run, as docker run gives.
	for _, p := range []string{"/usr/bin/noexec", "/usr/bin"} {
		if err := lookPath(r, p, "", "/"); !errors.Is(err, ErrCommandNotExecutable) || errors.Is(err, ErrCommandNotFound) {
			t.Errorf("%s: %v, want ErrCommandNotExecutable", p, err)
		}
	}
}

func TestEnvironment(t *testing.T) {
	o := Options{Config: imageConfig(), Env: []string{"FOO=1", "NEW=2"}, TTY: true}
	o.Config.Env = []string{"FOO=0", "HOME=/h"}
	env, err := environment(o, execUser{home: "/home/x"}, "hn")
	must(t, err)
	want := []string{"HOME=/h", "FOO=1", "NEW=2", "PATH=" + DefaultPath, "HOSTNAME=hn", "TERM=xterm"}
	if !slices.Equal(env, want) {
		t.Errorf("env %q, want %q", env, want)
	}
	if _, err := environment(Options{Env: []string{"NOVALUE"}}, execUser{}, "hn"); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("entry without =: %v", err)
	}
}

func TestCapabilities(t *testing.T) {
	caps, err := capabilities([]string{"NET_ADMIN", "cap_sys_ptrace", "CAP_CHOWN"})
	must(t, err)
	if len(caps) != len(defaultCaps)+2 || !slices.Contains(caps, "CAP_NET_ADMIN") || !slices.Contains(caps, "CAP_SYS_PTRACE") {
		t.Errorf("caps %v", caps)
	}
	// ALL: what the kernel has and this process may give.
	all, err := capabilities([]string{"ALL"})
	want := bits.OnesCount64(boundingSet() & (1<<(lastCap()+1) - 1))
	if err != nil || !slices.Contains(all, "CAP_SYS_ADMIN") || len(all) != want {
		t.Errorf("ALL: %d caps, %v; want %d", len(all), err, want)
	}
	if _, err := capabilities([]string{"NET_FLY"}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("unknown capability: %v", err)
	}
}

// TestTargetsRemovedAfterCacheDrop: overlayfs over a lower layer on
// another filesystem (a FUSE layer, here a tmpfs) numbers a directory
// anew when its inode is read back after eviction; the directories made
// for a run are still known as ours and taken away.
func TestTargetsRemovedAfterCacheDrop(t *testing.T) {
	requireRoot(t)
	lower := t.TempDir()
	if err := unix.Mount("tmpfs", lower, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(lower, unix.MNT_DETACH) })
	must(t, os.MkdirAll(filepath.Join(lower, "etc"), 0o755))
	ov := mountOverlay(t, lower)
	r, err := openRoot(ov.merged)
	must(t, err)
	defer r.close()
	tg := newTargets(r)
	for _, p := range []string{"/dev", "/proc", "/sys", "/new/deep"} {
		_, err := tg.ensure(p, false)
		must(t, err)
	}
	_, err = tg.ensure("/etc/resolv.conf", true)
	must(t, err)
	tg.seal()
	before, err := r.lstat("/dev")
	must(t, err)
	unix.Sync()
	must(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0))
	after, err := r.lstat("/dev")
	must(t, err)
	t.Logf("/dev inode %d, %d after the drop", before.Ino, after.Ino)
	must(t, tg.cleanup())
	ov.expectChanges(t)
}
