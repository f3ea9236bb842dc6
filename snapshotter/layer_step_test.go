package snapshotter_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/kmount"
)

// Times of the step's test tree: the lower layer is dated lowerTime, one
// file is touched to touchTime, and layers are written with
// SOURCE_DATE_EPOCH = epochTime, after both but before the test runs.
var (
	lowerTime = time.Unix(1_600_000_000, 500_000_000)
	touchTime = time.Unix(1_650_000_000, 0)
	epochTime = time.Unix(1_700_000_000, 0)
)

// Names that stress tar: over 100 bytes (the ustar name field), a path over
// 255 bytes, and non-ASCII.
var (
	longName    = strings.Repeat("l", 200)
	deepDir     = strings.Repeat("d", 100) + "/" + strings.Repeat("e", 100)
	unicodeName = "ünïcødé-名前"
)

const sparseSize = 50 << 20

// capability is a security.capability value (VFS_CAP_REVISION_2,
// effective, cap_net_bind_service permitted), as setcap writes it.
var capability = []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// step is a build step's overlay after its changes were made.
type step struct {
	lower, upper string
	merged       string // the overlay, what the step sees
}

// makeStep writes a lower layer under base, mounts a writable overlay on it
// (with its upper and work directories on a fresh tmpfs when onTmpfs), and
// makes every kind of change through it. Callers set the umask to 0.
func makeStep(t *testing.T, base string, onTmpfs bool) step {
	t.Helper()
	lower := filepath.Join(base, "lower")
	for _, d := range []string{"etc", "usr/bin", "var/lib/gone/sub", "dir2file", "quiet/deep"} {
		must(t, os.MkdirAll(filepath.Join(lower, d), 0o755))
	}
	for p, content := range map[string]string{
		"etc/hosts": "hosts", "etc/keep": "keep", "etc/passwd": "root", "etc/touched": "t",
		"etc/xattr": "x", "usr/bin/tool": "tool", "var/lib/gone/a": "a", "var/lib/gone/sub/b": "b",
		"dir2file/c": "c", "file2dir": "file", "quiet/deep/file": "quiet",
	} {
		must(t, os.WriteFile(filepath.Join(lower, p), []byte(content), 0o644))
	}
	must(t, os.Chmod(filepath.Join(lower, "usr/bin/tool"), 0o755))
	must(t, filepath.Walk(lower, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chtimes(p, lowerTime, lowerTime)
	}))

	upperBase := filepath.Join(base, "upperfs")
	must(t, os.Mkdir(upperBase, 0o700))
	if onTmpfs {
		must(t, unix.Mount("tmpfs", upperBase, "tmpfs", 0, "size=256m,mode=0700"))
		t.Cleanup(func() { unmount(t, upperBase) })
	}
	s := step{lower: lower, upper: filepath.Join(upperBase, "upper")}
	work := filepath.Join(upperBase, "work")
	merged := filepath.Join(base, "merged")
	for _, d := range []string{s.upper, work, merged} {
		must(t, os.Mkdir(d, 0o755))
	}
	must(t, kmount.Overlay(merged, []string{lower}, s.upper, work, "index=off", "redirect_dir=off", "metacopy=off"))
	t.Cleanup(func() { unmount(t, merged) })
	changeThrough(t, merged)
	s.merged = merged
	return s
}

func unmount(t *testing.T, dir string) {
	if err := kmount.Unmount(dir); err != nil { // detaches lazily if busy
		t.Errorf("unmount %s: %v", dir, err)
	}
}

// changeThrough makes the step's changes in the merged directory m.
func changeThrough(t *testing.T, m string) {
	t.Helper()
	in := func(p string) string { return filepath.Join(m, p) }
	write := func(p, content string, mode os.FileMode) {
		t.Helper()
		must(t, os.WriteFile(in(p), []byte(content), mode))
	}
	// Edits of lower files: deleted, rewritten, metadata only.
	must(t, os.Remove(in("etc/hosts")))
	write("etc/keep", "changed", 0o644)
	must(t, os.Chmod(in("etc/passwd"), 0o600))
	must(t, os.Lchown(in("etc/passwd"), 1000, 1000))
	must(t, os.Chtimes(in("etc/touched"), touchTime, touchTime))
	must(t, unix.Lsetxattr(in("etc/xattr"), "user.note", []byte("1"), 0))
	must(t, unix.Lsetxattr(in("etc/xattr"), "security.capability", capability, 0))
	must(t, os.Link(in("usr/bin/tool"), in("usr/bin/tool2")))
	write("quiet/deep/file", "quieter", 0o644) // its parents are copied up unchanged

	// Replacements: a directory anew (opaque), a directory by a file, a
	// file by a directory.
	must(t, os.RemoveAll(in("var/lib/gone")))
	must(t, os.Mkdir(in("var/lib/gone"), 0o755))
	write("var/lib/gone/new", "new", 0o644)
	must(t, os.RemoveAll(in("dir2file")))
	write("dir2file", "was a dir", 0o644)
	must(t, os.Remove(in("file2dir")))
	must(t, os.Mkdir(in("file2dir"), 0o755))
	write("file2dir/inner", "inner", 0o644)

	// New files of every kind.
	must(t, os.Mkdir(in("new"), 0o755))
	write("new/empty", "", 0o644)
	write("new/pair1", "pair", 0o644)
	must(t, os.Link(in("new/pair1"), in("new/pair2")))
	must(t, os.Symlink("../etc/keep", in("new/link")))
	must(t, unix.Mkfifo(in("new/fifo"), 0o644))
	must(t, unix.Mknod(in("new/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, unix.Mknod(in("new/sock"), unix.S_IFSOCK|0o755, 0))
	write("new/owned", "owned", 0o644)
	must(t, os.Lchown(in("new/owned"), 1234, 5678))
	write("new/setuid", "#!/bin/sh\n", 0o755)
	must(t, os.Chmod(in("new/setuid"), os.ModeSetuid|0o755))
	must(t, os.Mkdir(in("new/sticky"), 0o755))
	must(t, os.Chmod(in("new/sticky"), os.ModeSticky|0o777))
	write("new/"+longName, "long", 0o644)
	write("new/"+unicodeName, "utf-8", 0o644)
	must(t, os.MkdirAll(in("new/"+deepDir), 0o755))
	write("new/"+deepDir+"/file", "deep", 0o644)

	// A sparse file: 50 MiB, almost all hole.
	f, err := os.OpenFile(in("new/sparse"), os.O_CREATE|os.O_WRONLY, 0o644)
	must(t, err)
	_, err = f.WriteAt([]byte("data"), 1<<20)
	must(t, err)
	_, err = f.WriteAt([]byte("end"), sparseSize-3)
	must(t, err)
	must(t, f.Close())
	var st syscall.Stat_t
	must(t, syscall.Stat(in("new/sparse"), &st))
	if st.Blocks*512 >= sparseSize/2 {
		t.Fatalf("new/sparse is not sparse: %d blocks", st.Blocks)
	}
}

// wantEntries is the tar of the step's changes: name, type, mode, owner,
// then link target or device numbers. Parents come before children, in
// byte order; quiet/, quiet/deep/, usr/ and var/ are parents that
// UpperChanges leaves out (unchanged copies), included with their lower
// metadata; new/sock is left out.
var wantEntries = []string{
	"dir2file 0 644 0:0",
	"etc/ 5 755 0:0",
	"etc/.wh.hosts 0 0 0:0",
	"etc/keep 0 644 0:0",
	"etc/passwd 0 600 1000:1000",
	"etc/touched 0 644 0:0",
	"etc/xattr 0 644 0:0",
	"file2dir/ 5 755 0:0",
	"file2dir/.wh..wh..opq 0 0 0:0",
	"file2dir/inner 0 644 0:0",
	"new/ 5 755 0:0",
	"new/" + strings.Repeat("d", 100) + "/ 5 755 0:0",
	"new/" + deepDir + "/ 5 755 0:0",
	"new/" + deepDir + "/file 0 644 0:0",
	"new/empty 0 644 0:0",
	"new/fifo 6 644 0:0",
	"new/link 2 777 0:0 -> ../etc/keep",
	"new/" + longName + " 0 644 0:0",
	"new/null 3 666 0:0 1:3",
	"new/owned 0 644 1234:5678",
	"new/pair1 0 644 0:0",
	"new/pair2 1 644 0:0 -> new/pair1",
	"new/setuid 0 4755 0:0",
	"new/sparse 0 644 0:0",
	"new/sticky/ 5 1777 0:0",
	"new/" + unicodeName + " 0 644 0:0",
	"quiet/ 5 755 0:0",
	"quiet/deep/ 5 755 0:0",
	"quiet/deep/file 0 644 0:0",
	"usr/ 5 755 0:0",
	"usr/bin/ 5 755 0:0",
	"usr/bin/tool 0 755 0:0",
	"usr/bin/tool2 1 755 0:0 -> usr/bin/tool",
	"var/ 5 755 0:0",
	"var/lib/ 5 755 0:0",
	"var/lib/gone/ 5 755 0:0",
	"var/lib/gone/.wh..wh..opq 0 0 0:0",
	"var/lib/gone/new 0 644 0:0",
}

// wantXattrs are the only extended attributes in the layer.
var wantXattrs = map[string]map[string]string{
	"etc/xattr": {"security.capability": string(capability), "user.note": "1"},
}

// wantTimes are the mtimes of entries that do not take SOURCE_DATE_EPOCH:
// older ones, whole seconds, and the markers' 1970.
var wantTimes = map[string]time.Time{
	"etc/.wh.hosts":             time.Unix(0, 0),
	"file2dir/.wh..wh..opq":     time.Unix(0, 0),
	"var/lib/gone/.wh..wh..opq": time.Unix(0, 0),
	"etc/touched":               touchTime,
	"etc/passwd":                lowerTime.Truncate(time.Second), // chmod and chown keep the mtime
	"etc/xattr":                 lowerTime.Truncate(time.Second),
	"usr/bin/tool":              lowerTime.Truncate(time.Second),
	"usr/bin/tool2":             lowerTime.Truncate(time.Second),
	"quiet/":                    lowerTime.Truncate(time.Second),
	"quiet/deep/":               lowerTime.Truncate(time.Second),
	"usr/":                      lowerTime.Truncate(time.Second),
	"var/":                      lowerTime.Truncate(time.Second),
}
