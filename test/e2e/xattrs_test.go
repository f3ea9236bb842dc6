package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/test/fixture"
)

// TestUserXattrsOnlyWhereLinuxHasThem: a layer that gives a symlink, fifo
// or device a user.* xattr (which Linux allows only on regular files and
// directories) is mounted without it: not listed (overlayfs's copy-up would
// fail on it: chmod of the fifo in a writable mount, "No data available"),
// the entry's other xattrs and the files' own kept.
func TestUserXattrsOnlyWhereLinuxHasThem(t *testing.T) {
	requireRoot(t)
	layers := []fixture.LayerSpec{
		{
			{Path: "fifo", Type: fixture.TypeFifo, Mode: 0o644, Xattrs: map[string]string{"user.f": "uf"}},
			{Path: "lnk", Type: fixture.TypeSymlink, Mode: 0o777, Link: "file", Xattrs: map[string]string{"user.l": "ul", "trusted.t": "tl"}},
			{Path: "file", Type: fixture.TypeReg, Mode: 0o644, Data: []byte("f\n"), Xattrs: map[string]string{"user.r": "ur"}},
		},
		{fixture.Text("other", "o\n")},
	}
	ref := push(t, shared.reg, uniqueRepo("userxattrs"), "v1", layers, fixture.FormGzip)
	d := startDaemon(t, nil)
	list := func(p string) []string {
		t.Helper()
		buf := make([]byte, 1024)
		n, err := unix.Llistxattr(p, buf)
		if err != nil {
			t.Fatalf("listxattr %s: %v", p, err)
		}
		names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
		return slices.DeleteFunc(names, func(s string) bool { return s == "" })
	}
	for _, writable := range []bool{false, true} {
		var dir string
		if writable {
			dir, _ = d.mountRW(t, ref)
		} else {
			dir, _ = d.mount(t, ref)
		}
		if got := list(filepath.Join(dir, "fifo")); len(got) != 0 {
			t.Errorf("fifo lists %q, want none", got)
		}
		if got := list(filepath.Join(dir, "lnk")); !slices.Equal(got, []string{"trusted.t"}) {
			t.Errorf("symlink lists %q, want [trusted.t]", got)
		}
		if got := list(filepath.Join(dir, "file")); !slices.Equal(got, []string{"user.r"}) {
			t.Errorf("file lists %q, want [user.r]", got)
		}
		if !writable {
			continue
		}
		if err := os.Chmod(filepath.Join(dir, "fifo"), 0o600); err != nil {
			t.Errorf("chmod of the fifo: %v", err)
		}
		if err := os.Lchown(filepath.Join(dir, "lnk"), 5, 5); err != nil {
			t.Errorf("chown of the symlink: %v", err)
		}
	}
}
