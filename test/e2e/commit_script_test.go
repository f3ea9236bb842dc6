package e2e

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/treecmp"
)

// The commit tests apply one script of changes twice: through a writable
// Strata mount of fixture.Standard (where they land in the overlay's upper
// directory and become the committed layer) and to umoci's full unpack of
// the same image (the reference). A commit is right when umoci's unpack of
// the pushed image equals the reference, entry by entry.
//
// What the script leaves alone, on purpose: the members of the lower
// hardlink groups (hl/a, hl/b, hl/c and hl/x, hl/y, hl/m1, hl/m2). Changing
// one name of a lower group copies that name up alone and breaks the group
// (overlayfs without index=on), which no layer can express; the reference,
// an ordinary directory, would keep the group. The top directory is left
// alone too: a layer has no entry for the root (as docker and buildah
// commit, its attributes stay the base's).

// scriptHuge is the > 100 MiB file the script writes: sparse, with a
// distinct 64 KiB block every 8 MiB, so that it spans many eStargz and
// zstd:chunked chunks, any misplaced chunk shows, and it stays cheap to
// compress.
const (
	scriptHuge     = "usr/share/huge.bin"
	scriptHugeSize = 105<<20 + 4321
)

// scriptLongName is a 200-byte name in Standard's deepest directory: the
// path is over 400 bytes.
var scriptLongName = strings.Repeat("L", 100) + "-ñ-" + strings.Repeat("é", 48)

// scriptTime is the mtime the script gives each entry it creates or whose
// mtime its changes move (parents of created, deleted and renamed entries),
// so that both trees agree; each gets its own second.
func scriptTime(i int) time.Time { return time.Unix(1600000000+int64(i)*61, 987654321) }

// applyScript makes every kind of change under root (a writable mount or
// a directory umoci unpacked). Renames go through mv(1): in the mount a
// lower directory cannot be renamed (EXDEV, redirect_dir is off), and mv
// then copies and deletes, as it would in a container.
func applyScript(t *testing.T, root string, big bool) {
	t.Helper()
	p := func(rel string) string { return filepath.Join(root, rel) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("applying the change script to %s: %v", root, err)
		}
	}
	sh := func(args ...string) {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("applying the change script to %s: %v: %v\n%s", root, args, err, out)
		}
	}

	// New, modified and deleted files in lower layers (of every layer).
	must(os.WriteFile(p("etc/new.conf"), []byte("new in the commit\n"), 0o644))
	must(os.WriteFile(p("etc/keep.conf"), []byte("modified by the commit\n"), 0o644))
	f, err := os.OpenFile(p(fixture.ChunkPlus1), os.O_WRONLY, 0)
	must(err)
	_, err = f.WriteAt([]byte(strings.Repeat("patched in the middle ", 200)), 1<<20)
	must(err)
	must(f.Close())
	must(os.Remove(p("etc/hosts")))        // from the top layer
	must(os.Remove(p(fixture.SetuidPath))) // from the bottom layer

	// Deleted directories: an empty one with an xattr, and one the top
	// layer re-created over a whiteout.
	must(os.Remove(p("home/big-ids/dir")))
	must(os.RemoveAll(p(fixture.RecreateDir)))
	// rm -rf of a lower directory (opaque in layer 1, with children from
	// two layers) and a new one of the same name: an opaque directory.
	must(os.RemoveAll(p(fixture.OpaqueDir)))
	must(os.Mkdir(p(fixture.OpaqueDir), 0o700))
	must(os.WriteFile(p(fixture.OpaqueDir+"/fresh"), []byte("after rm -rf\n"), 0o600))

	// A directory replaced by a file, a file by a directory.
	must(os.RemoveAll(p(fixture.FileToDir)))
	must(os.WriteFile(p(fixture.FileToDir), []byte("a file again\n"), 0o644))
	must(os.Remove(p(fixture.DirToFile)))
	must(os.Mkdir(p(fixture.DirToFile), 0o751))
	must(os.WriteFile(p(fixture.DirToFile+"/child"), []byte("a dir again\n"), 0o644))

	// Metadata-only changes: chmod of a file (dropping setgid) and of a
	// directory, chown, touch, xattrs set and removed on a file and a
	// directory.
	must(os.Chmod(p(fixture.SetgidPath), 0o755))
	must(os.Chmod(p("unicode"), 0o750))
	must(os.Lchown(p(fixture.OwnedPath), 123, 456))
	must(os.Chtimes(p("etc/no-perms"), time.Time{}, scriptTime(0)))
	must(unix.Lsetxattr(p("usr/bin/user-xattrs"), "user.added", []byte("by the commit"), 0))
	must(unix.Lremovexattr(p("usr/bin/user-xattrs"), "user.a"))
	must(unix.Lsetxattr(p("links"), "user.dir-xattr", []byte{0, 1, 2, 0xff}, 0))

	// A hardlink to a lower file (with a capability xattr); a new pair and
	// a new group across directories; symlinks, a fifo, devices.
	must(os.Link(p(fixture.CapsPath), p("hl/ping-hardlink")))
	must(os.Mkdir(p("etc/newdir"), 0o755))
	must(os.WriteFile(p("etc/newdir/pair-1"), []byte("a new hardlink pair\n"), 0o640))
	must(os.Link(p("etc/newdir/pair-1"), p("etc/newdir/pair-2")))
	must(os.WriteFile(p("etc/newdir/group-1"), []byte("a new group across dirs\n"), 0o644))
	must(os.Link(p("etc/newdir/group-1"), p("usr/bin/group-2")))
	must(os.Link(p("etc/newdir/group-1"), p("etc/group-3")))
	must(os.Symlink("../hosts", p("etc/newdir/dangling"))) // etc/hosts is deleted above
	must(os.Symlink("/usr/bin/ping", p("etc/newdir/absolute")))
	must(unix.Mkfifo(p("etc/newdir/fifo"), 0o620))
	must(unix.Mknod(p("etc/newdir/char"), unix.S_IFCHR|0o600, int(unix.Mkdev(10, 200))))
	must(unix.Mknod(p("etc/newdir/block"), unix.S_IFBLK|0o660, int(unix.Mkdev(259, 70000))))
	must(os.Lchown(p("etc/newdir/block"), 0, 6))

	// Sparse files: holes only, and data then a hole to the end; and the
	// > 100 MiB file.
	must(os.Mkdir(p("usr/share"), 0o755))
	if big {
		must(os.Truncate(createFile(t, p("etc/newdir/holes")), 32<<20))
		sparse := createFile(t, p("etc/newdir/sparse"))
		writeAt(t, sparse, []byte("data before a hole\n"), 0)
		must(os.Truncate(sparse, 20<<20+3))
		huge := createFile(t, p(scriptHuge))
		for off := int64(0); off < scriptHugeSize; off += 8 << 20 {
			writeAt(t, huge, readAll(t, fixture.Content(64<<10, uint64(off))), off)
		}
		must(os.Truncate(huge, scriptHugeSize))
	}

	// Long and non-ASCII names.
	deep := "long/" + strings.Split(fixture.LongPath, "/")[1] + "/" + strings.Split(fixture.LongPath, "/")[2] + "/" + strings.Split(fixture.LongPath, "/")[3]
	must(os.WriteFile(p(deep+"/"+scriptLongName), []byte("a long name\n"), 0o644))
	must(os.WriteFile(p("unicode/新しい-ファイル-ñ-😀.txt"), []byte("非ASCII\n"), 0o644))

	// Renames of lower files (one with a non-ASCII name, a symlink, a
	// 4 MiB file) and of a lower directory tree with long names.
	sh("mv", fixture.CJKPath, "unicode/名前を変えた.txt")
	sh("mv", "links/relative", "links/renamed-relative")
	sh("mv", fixture.ExactChunk, "chunks/exact-renamed")
	sh("mv", "long/"+strings.Split(fixture.LongPath, "/")[1], "long/renamed-ä")

	// The mtimes the changes above set to "now": the new entries and the
	// parents of every entry created, deleted or renamed.
	stamped := []string{
		"etc/new.conf", "etc/keep.conf", fixture.ChunkPlus1, "etc", "usr/bin", "home/big-ids",
		fixture.OpaqueDir + "/fresh", fixture.OpaqueDir, "var/lib", "opt",
		fixture.FileToDir, fixture.DirToFile + "/child", fixture.DirToFile, "swap",
		"hl/ping-hardlink", "hl", "etc/newdir/pair-1", "etc/newdir/group-1",
		"etc/newdir/dangling", "etc/newdir/absolute", "etc/newdir/fifo", "etc/newdir/char",
		"etc/newdir/block", "etc/newdir/holes", "etc/newdir/sparse", "etc/newdir", scriptHuge, "usr/share", "usr",
		"long/renamed-ä/" + strings.TrimPrefix(deep, "long/"+strings.Split(fixture.LongPath, "/")[1]+"/") + "/" + scriptLongName,
		"long/renamed-ä/" + strings.TrimPrefix(deep, "long/"+strings.Split(fixture.LongPath, "/")[1]+"/"),
		"unicode/新しい-ファイル-ñ-😀.txt", "unicode", "links", "chunks", "long",
	}
	for i, rel := range stamped {
		if !big && (rel == scriptHuge || rel == "etc/newdir/holes" || rel == "etc/newdir/sparse") {
			continue
		}
		ts := unix.NsecToTimespec(scriptTime(i + 1).UnixNano())
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p(rel), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
}

func createFile(t *testing.T, path string) string {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

func writeAt(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mountRW mounts ref writable; at the test's end it is unmounted with its
// changes discarded.
func (d *testDaemon) mountRW(t *testing.T, ref string) (string, *daemon.Mount) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := d.client.Mount(ctx, daemon.MountRequest{Ref: ref, Dir: dir, Writable: true})
	if err != nil {
		t.Fatalf("mount --rw %s: %v", ref, err)
	}
	t.Cleanup(func() {
		if err := d.client.Unmount(context.Background(), dir, true); err != nil && !strings.Contains(err.Error(), "no image mounted") {
			t.Errorf("unmount --discard %s: %v", dir, err)
		}
		unix.Unmount(dir, unix.MNT_DETACH)
	})
	return dir, m
}

// commit commits the writable mount at req.Dir, logging its progress.
func (d *testDaemon) commit(t *testing.T, req daemon.CommitRequest) (*daemon.CommitResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	res, err := d.client.Commit(ctx, req, func(line string) { t.Logf("commit: %s", line) })
	if err == nil {
		t.Logf("commit to %s took %s", req.Ref, time.Since(start).Round(time.Millisecond))
	}
	return res, err
}

// commitFormats are the layer formats of `strata commit --format`.
var commitFormats = []string{"estargz", "gzip", "zstd", "zstd:chunked", "uncompressed"}

// formatTag is a tag naming format ("zstd:chunked" has a colon).
func formatTag(format string) string { return strings.ReplaceAll(format, ":", "-") }

// epoch is the SOURCE_DATE_EPOCH of the commits: it fixes the config's and
// history's times; it is later than every mtime of fixture.Standard and of
// the script (2030), so it clamps none.
func epoch() *int64 { e := int64(1900000000); return &e }

// normalized is a walked tree as the commit comparisons see it: mtimes in
// whole seconds (eStargz lower layers serve only seconds, and the layer
// writer, like containerd, writes only seconds).
func normalized(t *testing.T, dir string) []treecmp.Record {
	t.Helper()
	recs, err := treecmp.Walk(dir)
	if err != nil {
		t.Fatal(err)
	}
	return wholeSeconds(recs)
}

// unpackPushed is umoci's full unpack of the pushed image ref, walked and
// normalized; zstd images are recompressed to gzip on the way, since
// umoci 0.4.7 reads no zstd.
func unpackPushed(t *testing.T, ref, format string) []treecmp.Record {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rootfs")
	unpack := treecmp.ReferenceUnpack
	if strings.HasPrefix(format, "zstd") {
		unpack = treecmp.ReferenceUnpackGzip
	}
	if err := unpack(context.Background(), t, ref, dir); err != nil {
		t.Fatal(err)
	}
	return normalized(t, dir)
}

// reportDiffs fails t with the differences, at most 40 of them.
func reportDiffs(t *testing.T, what string, diffs []string) {
	t.Helper()
	for i, d := range diffs {
		if i == 40 {
			t.Errorf("%s: %d more differences", what, len(diffs)-i)
			break
		}
		t.Errorf("%s: %s", what, d)
	}
}

func tagged(ref, tag string) string {
	return ref[:strings.LastIndex(ref, ":")] + ":" + tag
}

// mountView normalizes a walk of a mount for comparison with umoci's
// unpacks: it keeps xattrs with empty values, which umoci drops
// (treecmp.DropEmptyXattrs), and the root's mtime is not the image's (see
// undefinedRoot).
func mountView(recs []treecmp.Record) []treecmp.Record {
	return undefinedRoot(treecmp.DropEmptyXattrs(recs))
}

// undefinedRoot zeroes the root's mtime. A committed layer has no entry
// for the root directory (as containerd's and buildah's commits), so an
// overlay of the image takes the root's attributes from a layer that does
// not say them: Strata's layer mount serves mtime 0 (mode 0755, owner 0:0,
// which are compared), containerd's unpack the time of the unpack, umoci
// the base's. A writable mount's root is its upper directory, made at
// mount time.
func undefinedRoot(recs []treecmp.Record) []treecmp.Record {
	return undefinedMTimes(recs, []string{"."})
}

// unlinkedInMount clears the hardlink group of paths: in a writable mount,
// overlayfs (index=off, lower layers on another filesystem) reports the
// names of a hardlink made to a lower file with distinct inode numbers,
// though they are one inode in the upper directory, which is what the
// layer is written from (the pushed image is checked with the group).
func unlinkedInMount(recs []treecmp.Record, paths ...string) []treecmp.Record {
	out := slices.Clone(recs)
	for i := range out {
		if slices.Contains(paths, out[i].Path) {
			out[i].Hardlinks = nil
		}
	}
	return out
}
