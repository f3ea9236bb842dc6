package e2e

import (
	"encoding/binary"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/test/fixture"
)

// TestMountInodesAsOneFilesystem: a multi-layer mount is one filesystem to
// what walks it, as the unpacked tree is: one device for every entry (du -x,
// find -xdev and tar's hardlink detection go by it), readdir's d_ino equal
// to stat's st_ino, and a directory's inode number the same after the
// kernel drops its dentries (overlayfs without xino numbered it anew each
// time, and gave each layer's entries that layer's device).
func TestMountInodesAsOneFilesystem(t *testing.T) {
	requireRoot(t)
	ref := push(t, shared.reg, uniqueRepo("inodes"), "estargz", fixture.Standard(), fixture.FormEStargz)
	d := startDaemon(t, nil)
	dir, _ := d.mount(t, ref)
	var root syscall.Stat_t
	must(t, syscall.Lstat(dir, &root))
	dirInodes := map[string]uint64{}
	entries := 0
	must(t, filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		entries++
		if st.Dev != root.Dev {
			t.Errorf("%s: device %d, the mount's is %d", p, st.Dev, root.Dev)
		}
		if !e.IsDir() {
			return nil
		}
		dirInodes[p] = st.Ino
		for name, ino := range direntInodes(t, p) {
			var cst syscall.Stat_t
			if err := syscall.Lstat(filepath.Join(p, name), &cst); err != nil {
				return err
			}
			if cst.Ino != ino {
				t.Errorf("%s: readdir says inode %d, stat %d", filepath.Join(p, name), ino, cst.Ino)
			}
		}
		return nil
	}))
	if entries < 20 {
		t.Fatalf("walked %d entries of the standard image", entries)
	}
	// The kernel forgets the dentries and inodes: the numbers stay.
	must(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0))
	for p, ino := range dirInodes {
		var st syscall.Stat_t
		must(t, syscall.Lstat(p, &st))
		if st.Ino != ino {
			t.Errorf("%s: inode %d, %d before the kernel dropped its dentries", p, st.Ino, ino)
		}
	}
}

// direntInodes reads directory dir's entries as readdir returns them:
// name → d_ino, "." and ".." left out.
func direntInodes(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	out := map[string]uint64{}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.ReadDirent(fd, buf)
		must(t, err)
		if n <= 0 {
			return out
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				t.Fatalf("%s: a dirent of %d bytes", dir, reclen)
			}
			name := b[19:reclen]
			for i, c := range name {
				if c == 0 {
					name = name[:i]
					break
				}
			}
			if s := string(name); s != "." && s != ".." {
				out[s] = binary.NativeEndian.Uint64(b[0:8])
			}
			b = b[reclen:]
		}
	}
}

// TestMountDirectoryLinkCounts: a directory's link count is 2 and one per
// subdirectory, as on the filesystem an unpack writes (find's leaf
// optimisation and du go by it), in a one-layer image (the layer's own
// mount) and in a directory only one layer of a multi-layer image holds
// (overlayfs passes its count through; one several layers merge counts 1,
// overlayfs' "not counted").
func TestMountDirectoryLinkCounts(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, nil)
	for _, tc := range []struct {
		name   string
		layers []fixture.LayerSpec
	}{
		{"one layer", fixture.Standard()[:1]},
		{"layers", fixture.Standard()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := push(t, shared.reg, uniqueRepo("nlink"), "estargz", tc.layers, fixture.FormEStargz)
			dir, _ := d.mount(t, ref)
			checked := 0
			must(t, filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
				if err != nil || !e.IsDir() {
					return err
				}
				var st syscall.Stat_t
				if err := syscall.Lstat(p, &st); err != nil {
					return err
				}
				if st.Nlink == 1 {
					return nil // merged by overlayfs: not counted
				}
				ents, err := os.ReadDir(p)
				if err != nil {
					return err
				}
				want := uint64(2)
				for _, c := range ents {
					if c.IsDir() {
						want++
					}
				}
				if st.Nlink != want {
					t.Errorf("%s: %d links, want %d (2 and one per subdirectory)", p, st.Nlink, want)
				}
				checked++
				return nil
			}))
			if checked < 3 {
				t.Fatalf("checked %d directories", checked)
			}
		})
	}
}
