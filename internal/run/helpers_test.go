package run

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

const busybox = "/bin/busybox"

// applets are the busybox commands the test image links.
var applets = []string{"sh", "cat", "echo", "id", "pwd", "env", "tty", "ip", "sleep", "true", "false",
	"kill", "ls", "mkdir", "touch", "grep", "test", "["}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts overlayfs and runs runc/crun (run the tests as root)")
	}
	if _, err := os.Stat(busybox); err != nil {
		t.Skip("needs a static busybox at /bin/busybox (apt-get install busybox-static)")
	}
}

// imageConfig is the test image's config: Env, User, WorkingDir.
func imageConfig() ocispec.ImageConfig {
	return ocispec.ImageConfig{
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "FOO=from-image", "BAR=image-bar"},
		User:       "builder",
		WorkingDir: "/work",
		Cmd:        []string{"echo", "from-cmd"},
	}
}

// makeLower writes the test image's single layer into a directory:
// busybox and its applets, /etc/passwd and /etc/group with user builder
// (1000:1000, also in group staff), /root, /home/builder, /work and /tmp.
// No /proc, /sys, /dev, /etc/resolv.conf, /etc/hosts or /etc/hostname.
func makeLower(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "lower")
	for _, d := range []string{"bin", "etc", "root", "home/builder", "work", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.Chmod(filepath.Join(dir, "tmp"), 0o1777))
	must(t, os.Chown(filepath.Join(dir, "home/builder"), 1000, 1000))
	must(t, os.Chown(filepath.Join(dir, "work"), 1000, 1000))
	b, err := os.ReadFile(busybox)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "bin/busybox"), b, 0o755))
	for _, a := range applets {
		must(t, os.Symlink("busybox", filepath.Join(dir, "bin", a)))
	}
	writeFile(t, filepath.Join(dir, "etc/passwd"),
		"root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000:builder:/home/builder:/bin/sh\n")
	writeFile(t, filepath.Join(dir, "etc/group"), "root:x:0:\nstaff:x:50:builder\nbuilder:x:1000:\n")
	// Old times, so a copied-up directory whose times we failed to restore
	// stands out.
	old := time.Unix(1700000000, 0)
	for _, d := range []string{"etc", "bin", "root", "home/builder", "home", "work", "tmp", "."} {
		must(t, os.Chtimes(filepath.Join(dir, d), old, old))
	}
	return dir
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	must(t, os.WriteFile(name, []byte(content), 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// overlay is a real overlayfs over lower, as `strata mount --rw` makes it.
type overlay struct {
	lower, upper, merged string
}

func mountOverlay(t *testing.T, lower string) overlay {
	t.Helper()
	base := t.TempDir()
	o := overlay{lower: lower, upper: filepath.Join(base, "upper"), merged: filepath.Join(base, "merged")}
	work := filepath.Join(base, "work")
	for _, d := range []string{o.upper, o.merged, work} {
		must(t, os.Mkdir(d, 0o755))
	}
	opts := "lowerdir=" + lower + ",upperdir=" + o.upper + ",workdir=" + work + ",redirect_dir=off,metacopy=off"
	if err := unix.Mount("overlay", o.merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(o.merged, 0); err != nil {
			t.Logf("unmount %s: %v; detaching", o.merged, err)
			_ = unix.Unmount(o.merged, unix.MNT_DETACH)
		}
	})
	return o
}

// changes lists what the upper directory holds beyond directories an
// overlay copied up and left looking as in the lower layer (same mode,
// owner and mtime: a differ comparing metadata skips them).
func (o overlay) changes(t *testing.T) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(o.upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == o.upper {
			return err
		}
		rel, _ := filepath.Rel(o.upper, p)
		if d.IsDir() && sameDir(p, filepath.Join(o.lower, rel)) {
			return nil
		}
		out = append(out, rel)
		return nil
	})
	must(t, err)
	slices.Sort(out)
	return out
}

func sameDir(upper, lower string) bool {
	var u, l unix.Stat_t
	if unix.Lstat(upper, &u) != nil || unix.Lstat(lower, &l) != nil {
		return false
	}
	return u.Mode == l.Mode && u.Uid == l.Uid && u.Gid == l.Gid && u.Mtim == l.Mtim
}

// expectChanges fails unless the upper directory holds exactly want.
func (o overlay) expectChanges(t *testing.T, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := o.changes(t); !slices.Equal(got, want) {
		t.Errorf("upper dir holds %q, want %q", got, want)
	}
}

// runtimes are the runtimes to test: runc, and crun when installed.
func runtimes(t *testing.T) []string {
	t.Helper()
	var out []string
	if _, err := exec.LookPath("runc"); err == nil {
		out = append(out, "runc")
	}
	if p, err := exec.LookPath("crun"); err == nil {
		out = append(out, p)
	}
	if len(out) == 0 {
		t.Skip("neither runc nor crun installed (apt-get install runc crun)")
	}
	return out
}

func runtimeName(rt string) string { return filepath.Base(rt) }

// buffer is a goroutine-safe output sink that a test can wait on.
type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitFor waits until the output contains s.
func (b *buffer) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in output %q", s, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run runs o with a test timeout; stdout and stderr are returned.
func run(t *testing.T, o Options) (code int, stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut buffer
	if o.Stdout == nil {
		o.Stdout = &out
	}
	if o.Stderr == nil {
		o.Stderr = &errOut
	}
	if o.StateDir == "" {
		o.StateDir = t.TempDir()
	}
	code, err = Run(ctx, o)
	checkStateDirEmpty(t, o.StateDir)
	return code, out.String(), errOut.String(), err
}

// checkStateDirEmpty: the bundle and the runtime's state are gone.
func checkStateDirEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("state dir %s still holds %v", dir, entries)
	}
}
