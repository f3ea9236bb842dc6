package build

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stratafs/strata/internal/kmount"
)

// TestWritableViewLeavesItsSourceAlone writes, creates and deletes in the
// views writableView gives of a directory and of a file: by overlayfs on
// a plain directory, by a copy where overlayfs refuses (the build's
// directory on overlayfs, which cannot hold an upper layer), and by a
// copy for a file. The source stays as it was, owners are kept, and
// cleanup leaves no mount.
func TestWritableViewLeavesItsSourceAlone(t *testing.T) {
	requireRootForCopy(t)
	for _, onOverlay := range []bool{false, true} {
		name := "overlay"
		if onOverlay {
			name = "copy"
		}
		t.Run(name, func(t *testing.T) {
			tmp := t.TempDir()
			t.Cleanup(func() { kmount.ClearStale(tmp, nil) })
			src := filepath.Join(tmp, "src")
			writeTestFile(t, src, "a.txt", "a\n", 0o640)
			writeTestFile(t, src, "sub/b.txt", "b\n", 0o600)
			if err := os.Chown(filepath.Join(src, "a.txt"), 1234, 5678); err != nil {
				t.Fatal(err)
			}
			work := filepath.Join(tmp, "work")
			if onOverlay {
				for _, d := range []string{"lower", "upper", "ovwork", "work"} {
					if err := os.Mkdir(filepath.Join(tmp, d), 0o700); err != nil {
						t.Fatal(err)
					}
				}
				if err := kmount.Overlay(work, []string{filepath.Join(tmp, "lower")}, filepath.Join(tmp, "upper"), filepath.Join(tmp, "ovwork")); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { kmount.Unmount(work) })
			} else if err := os.Mkdir(work, 0o700); err != nil {
				t.Fatal(err)
			}
			b := &builder{work: work}
			view, err := b.writableView(src)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(b.kmounts); got != map[bool]int{false: 1, true: 0}[onOverlay] {
				t.Errorf("%d overlays made, want one only where overlayfs can mount", got)
			}
			st, err := os.Stat(filepath.Join(view, "a.txt"))
			if err != nil {
				t.Fatal(err)
			}
			if o := st.Sys().(*syscall.Stat_t); o.Uid != 1234 || o.Gid != 5678 || st.Mode().Perm() != 0o640 {
				t.Errorf("a.txt in the view: %d:%d %v, want 1234:5678 -rw-r-----", o.Uid, o.Gid, st.Mode())
			}
			must(t, os.WriteFile(filepath.Join(view, "a.txt"), []byte("changed\n"), 0o644))
			must(t, os.WriteFile(filepath.Join(view, "new.txt"), []byte("new\n"), 0o644))
			must(t, os.RemoveAll(filepath.Join(view, "sub")))

			fileView, err := b.writableView(filepath.Join(src, "a.txt"))
			if err != nil {
				t.Fatal(err)
			}
			must(t, os.WriteFile(fileView, []byte("file changed\n"), 0o644))
			if st, err := os.Stat(fileView); err != nil || st.Mode().Perm() != 0o640 {
				t.Errorf("a file's view: %v, %v", st, err)
			}

			if got, _ := os.ReadFile(filepath.Join(src, "a.txt")); string(got) != "a\n" {
				t.Errorf("the source's a.txt holds %q", got)
			}
			if got, _ := os.ReadFile(filepath.Join(src, "sub", "b.txt")); string(got) != "b\n" {
				t.Errorf("the source's sub/b.txt holds %q", got)
			}
			if _, err := os.Stat(filepath.Join(src, "new.txt")); err == nil {
				t.Error("new.txt reached the source")
			}
			if onOverlay {
				return // the copy made no mount; work is the test's own
			}
			must(t, b.cleanup(t.Context()))
			if m, _ := kmount.Under(tmp); len(m) > 0 {
				t.Errorf("mounts left: %v", m)
			}
			if _, err := os.Stat(work); !os.IsNotExist(err) {
				t.Errorf("the build's directory after cleanup: %v", err)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
