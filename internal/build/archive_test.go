package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	digest "github.com/opencontainers/go-digest"
	"hash/crc32"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// A tar of hello.txt ("hi\n", mode 0640, owner 4321:4321, modified
// 2020-01-02 03:04:05 UTC) made by GNU tar, compressed by bzip2 and by xz:
// the standard library writes neither.
const (
	helloTarBzip2 = "QlpoOTFBWSZTWXdgRVoAAHN7gMEQAADAAX+AAIBiZJ5ABAggAFQ0p5GpkNDCDTagkqek9JoNABoH3crIIQRdCEWp54NWgRVw0qNSGcRbODGt4PRQYenCuJTcMlolYP3ggn5Vj9uL4ZsNrsREB+LuSKcKEg7sCKtA"
	helloTarXz    = "/Td6WFoAAATm1rRGAgAhARYAAAB0L+Wj4Cf/AGldADQZSe6N8LrI/5v/8gxprxHnTwmPtYn2VAoz7qKW9EDQchNjdVkFHPbYlob+L9G+ndk14YLRBrrveNA5elZT/pSNDRHApTHEjkE81JVWRovGDC9nWzsi66Aj1S030VxlN7PnuMGu/VmDAAAAAADlWobHUijBiQABhQGAUAAAjeCtMbHEZ/sCAAAAAARZWg=="
)

var helloTime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

// tarEntry is one entry of a test archive; mode 0 means 0644 (0755 for a
// directory).
type tarEntry struct {
	name, linkname string
	typ            byte
	body           string
	mode           int64
	uid, gid       int
	mtime          time.Time
	pax            map[string]string
}

func makeTestTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Linkname: e.linkname, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: e.mtime, PAXRecords: e.pax}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
			if hdr.Typeflag == tar.TypeDir {
				hdr.Mode = 0o755
			}
		}
		if hdr.ModTime.IsZero() {
			hdr.ModTime = oldTime
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if len(hdr.PAXRecords) > 0 {
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipTestBytes(t testing.TB, data []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdTestBytes(t testing.TB, data []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil)
}

func decodeFixture(t testing.TB, b64 string) []byte {
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// addContext writes data as file "blob" of a new build context.
func addContext(t *testing.T, data []byte) string {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "blob"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return src
}

func TestAddUnpacksArchives(t *testing.T) {
	requireRootForCopy(t)
	hello := makeTestTar(t, tarEntry{name: "hello.txt", body: "hi\n", mode: 0o640, uid: 4321, gid: 4321, mtime: helloTime})
	for format, data := range map[string][]byte{
		"plain": hello,
		"gzip":  gzipTestBytes(t, hello),
		"zstd":  zstdTestBytes(t, hello),
		"bzip2": decodeFixture(t, helloTarBzip2),
	} {
		t.Run(format, func(t *testing.T) {
			root := t.TempDir()
			n := mustCopy(t, CopySpec{SrcRoot: addContext(t, data), Sources: []string{"blob"}, DestRoot: root, Dest: "/dest", Add: true})
			if n != 2 {
				t.Errorf("ADD wrote %d entries, want 2 (dest, hello.txt)", n)
			}
			p := filepath.Join(root, "dest/hello.txt")
			wantFile(t, p, "hi\n", 0o640)
			wantOwner(t, p, 4321, 4321)
			wantMtime(t, p, helloTime)
			wantMissing(t, filepath.Join(root, "dest/blob"))
		})
	}
}

func TestAddArchiveOwners(t *testing.T) {
	requireRootForCopy(t)
	data := makeTestTar(t, tarEntry{name: "d/", typ: tar.TypeDir, uid: 7, gid: 8}, tarEntry{name: "d/f", uid: 7, gid: 8}, tarEntry{name: "p/q/l", typ: tar.TypeSymlink, linkname: "x", uid: 7, gid: 8})
	src := addContext(t, data)
	for _, tt := range []struct {
		uid, gid           int
		chown              bool
		wantUID, wantGID   int
		parentUID, parentG int
	}{
		// Parents without an entry (o/p/q) are root's whoever owns the
		// rest, as BuildKit makes them.
		{wantUID: 7, wantGID: 8},
		{uid: 1000, gid: 1001, wantUID: 1000, wantGID: 1001},
		{chown: true, wantUID: 0, wantGID: 0},
	} {
		root := t.TempDir()
		mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"blob"}, DestRoot: root, Dest: "/o/", Add: true, UID: tt.uid, GID: tt.gid, Chown: tt.chown})
		for _, p := range []string{"o/d", "o/d/f", "o/p/q/l"} {
			wantOwner(t, filepath.Join(root, p), tt.wantUID, tt.wantGID)
		}
		wantOwner(t, filepath.Join(root, "o/p/q"), tt.parentUID, tt.parentG)
	}
}

func TestAddArchiveEntryKinds(t *testing.T) {
	requireRootForCopy(t)
	data := makeTestTar(t,
		tarEntry{name: "./", typ: tar.TypeDir, mode: 0o700},
		tarEntry{name: "dir/", typ: tar.TypeDir, mode: 0o750, mtime: helloTime},
		tarEntry{name: "dir/f", body: "content", mode: 0o4755, pax: map[string]string{"SCHILY.xattr.user.strata": "x", "SCHILY.xattr.security.selinux": "label"}},
		tarEntry{name: "dir/hard", typ: tar.TypeLink, linkname: "dir/f", mode: 0o4755},
		tarEntry{name: "dir/g", body: "g", mode: 0o600, uid: 5, gid: 5},
		tarEntry{name: "dir/g-link", typ: tar.TypeLink, linkname: "dir/g", mode: 0o640, uid: 6, gid: 7, mtime: helloTime},
		tarEntry{name: "dir/sym", typ: tar.TypeSymlink, linkname: "../elsewhere"},
		tarEntry{name: "dir/fifo", typ: tar.TypeFifo, mode: 0o600},
		tarEntry{name: ".wh.gone", body: "a whiteout is a file here"},
		tarEntry{name: "old", body: "replaces"},
	)
	root := t.TempDir()
	mkdirTest(t, root, "dest", 0o711)
	writeTestFile(t, root, "dest/old", "was here", 0o644)
	mustCopy(t, CopySpec{SrcRoot: addContext(t, data), Sources: []string{"blob"}, DestRoot: root, Dest: "/dest/", Add: true})
	if fi, _ := os.Stat(filepath.Join(root, "dest")); fi.Mode() != os.ModeDir|0o711 {
		t.Errorf("/dest has mode %v, want its own drwx--x--x kept despite the ./ entry", fi.Mode())
	}
	fi, _ := os.Stat(filepath.Join(root, "dest/dir"))
	if fi.Mode() != os.ModeDir|0o750 {
		t.Errorf("dir has mode %v, want drwxr-x---", fi.Mode())
	}
	wantMtime(t, filepath.Join(root, "dest/dir"), helloTime)
	f := wantFile(t, filepath.Join(root, "dest/dir/f"), "content", os.ModeSetuid|0o755)
	hard, err := os.Lstat(filepath.Join(root, "dest/dir/hard"))
	if err != nil || !os.SameFile(f, hard) {
		t.Errorf("dir/hard: %v; want a hard link to dir/f", err)
	}
	// A link entry's own owner, mode and time go to the file.
	wantFile(t, filepath.Join(root, "dest/dir/g"), "g", 0o640)
	wantOwner(t, filepath.Join(root, "dest/dir/g"), 6, 7)
	wantMtime(t, filepath.Join(root, "dest/dir/g"), helloTime)
	if target, err := os.Readlink(filepath.Join(root, "dest/dir/sym")); err != nil || target != "../elsewhere" {
		t.Errorf("dir/sym: %q, %v; want a symlink to ../elsewhere", target, err)
	}
	if fi, err := os.Lstat(filepath.Join(root, "dest/dir/fifo")); err != nil || fi.Mode() != os.ModeNamedPipe|0o600 {
		t.Errorf("dir/fifo: %v, %v; want a fifo", fi, err)
	}
	wantFile(t, filepath.Join(root, "dest/.wh.gone"), "a whiteout is a file here", 0o644)
	wantFile(t, filepath.Join(root, "dest/old"), "replaces", 0o644)
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(filepath.Join(root, "dest/dir/f"), "user.strata", buf); err != nil && err != unix.ENOTSUP || err == nil && string(buf[:n]) != "x" {
		t.Errorf("user.strata: %q, %v; want x", buf[:n], err)
	}
	if _, err := unix.Getxattr(filepath.Join(root, "dest/dir/f"), "security.selinux", buf); err == nil {
		t.Errorf("security.selinux was set from the archive; only capabilities and user.* are")
	}
}

// TestAddArchiveReplacesDirectories expects a non-directory entry over a
// directory to replace it and all in it, as Docker's and BuildKit's
// unpacking do, and the removal to follow no symlink out of it.
func TestAddArchiveReplacesDirectories(t *testing.T) {
	requireRootForCopy(t)
	outside := t.TempDir()
	writeTestFile(t, outside, "keep", "outside", 0o644)
	data := makeTestTar(t,
		tarEntry{name: "lib", typ: tar.TypeSymlink, linkname: "usr/lib"},
		tarEntry{name: "full", body: "a file now"},
		tarEntry{name: "empty", typ: tar.TypeFifo, mode: 0o600},
		tarEntry{name: "linked", typ: tar.TypeLink, linkname: "full"},
	)
	root := t.TempDir()
	mkdirTest(t, root, "dest", 0o755)
	for _, d := range []string{"dest/lib", "dest/lib/sub", "dest/full", "dest/empty", "dest/linked"} {
		mkdirTest(t, root, d, 0o755)
	}
	writeTestFile(t, root, "dest/lib/sub/f", "in the base", 0o644)
	must(t, os.Symlink(outside, filepath.Join(root, "dest/full/out")))
	must(t, os.Symlink(outside+"/keep", filepath.Join(root, "dest/lib/keep")))
	mustCopy(t, CopySpec{SrcRoot: addContext(t, data), Sources: []string{"blob"}, DestRoot: root, Dest: "/dest/", Add: true})
	if target, err := os.Readlink(filepath.Join(root, "dest/lib")); err != nil || target != "usr/lib" {
		t.Errorf("lib: %q, %v; want the symlink to usr/lib in place of the directory", target, err)
	}
	f := wantFile(t, filepath.Join(root, "dest/full"), "a file now", 0o644)
	if fi, err := os.Lstat(filepath.Join(root, "dest/empty")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("empty: %v, %v; want a fifo", fi, err)
	}
	if hard, err := os.Lstat(filepath.Join(root, "dest/linked")); err != nil || !os.SameFile(f, hard) {
		t.Errorf("linked: %v; want a hard link to full", err)
	}
	wantFile(t, filepath.Join(outside, "keep"), "outside", 0o644)
}

// TestAddXz unpacks an xz archive through the xz command, copies as a
// plain file one whose stream asks the decoder for more memory than the
// limit, and says what is missing when the command is.
func TestAddXz(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Fatalf("xz is missing: make test installs it (test/install-deps.sh): %v", err)
	}
	root := t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: addContext(t, decodeFixture(t, helloTarXz)), Sources: []string{"blob"}, DestRoot: root, Dest: "/d/", Add: true})
	wantFile(t, filepath.Join(root, "d/hello.txt"), "hi\n", 0o640)
	wantMtime(t, filepath.Join(root, "d/hello.txt"), helloTime)

	// A stream whose LZMA2 dictionary is 4 GiB - 1: the dictionary byte of
	// its first block header (after the 12-byte stream header: size, flags,
	// filter ID 0x21, properties size 1, dictionary) set to 40.
	hostile := decodeFixture(t, helloTarXz)
	if hostile[12+2] != 0x21 || hostile[12+3] != 1 {
		t.Fatalf("fixture: the first block's filter is not LZMA2 where expected: % x", hostile[12:24])
	}
	hostile[12+4] = 40
	fixHeaderCRC(hostile[12:], int(hostile[12]+1)*4)
	// xz refuses it (the limit), so it is no archive ADD reads: copied as
	// the file it is, as anything else that is no archive.
	root = t.TempDir()
	mustCopy(t, CopySpec{SrcRoot: addContext(t, hostile), Sources: []string{"blob"}, DestRoot: root, Dest: "/d/", Add: true})
	wantFile(t, filepath.Join(root, "d/blob"), string(hostile), 0o644)

	t.Setenv("PATH", t.TempDir())
	root = t.TempDir()
	_, err := Copy(context.Background(), CopySpec{SrcRoot: addContext(t, decodeFixture(t, helloTarXz)), Sources: []string{"blob"}, DestRoot: root, Dest: "/d/", Add: true})
	if !errors.Is(err, ErrUnsupportedArchive) || !strings.Contains(err.Error(), "xz-utils") {
		t.Errorf("without the xz command: err = %v, want ErrUnsupportedArchive naming xz-utils", err)
	}
	wantEmptyDir(t, root)
}

// fixHeaderCRC recomputes the CRC32 in the last 4 of an xz block header's n
// bytes.
func fixHeaderCRC(h []byte, n int) {
	binary.LittleEndian.PutUint32(h[n-4:n], crc32.ChecksumIEEE(h[:n-4]))
}

func TestAddCopiesWhatIsNoArchive(t *testing.T) {
	notTar := gzipTestBytes(t, []byte("just text, compressed"))
	tarball := makeTestTar(t, tarEntry{name: "inner"})
	for _, tt := range []struct {
		name string
		data []byte
		add  bool
	}{
		{"gzip of text", notTar, true},
		{"text", []byte("plain text"), true},
		{"empty", nil, true},
		{"tar by COPY", tarball, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			mustCopy(t, CopySpec{SrcRoot: addContext(t, tt.data), Sources: []string{"blob"}, DestRoot: root, Dest: "/d/", Add: tt.add})
			wantFile(t, filepath.Join(root, "d/blob"), string(tt.data), 0o644)
		})
	}
}

// TestAddHostileArchives unpacks archives made to write outside Dest: each
// must stay inside it, or be refused.
func TestAddHostileArchives(t *testing.T) {
	evil := fmt.Sprintf("strata-unpack-test-%d", os.Getpid())
	for _, tt := range []struct {
		name    string
		entries func(victim string) []tarEntry
		refused bool
		want    func(victim string) string // a file the archive writes, below Dest
	}{
		// ".." at the top stays there, as Dest were the root (BuildKit's
		// and docker's chroot, buildah's unpack).
		{name: "dot-dot", entries: func(string) []tarEntry { return []tarEntry{{name: "../../../" + evil}} },
			want: func(string) string { return evil }},
		{name: "dot-dot inside", entries: func(string) []tarEntry { return []tarEntry{{name: "a/../../" + evil}} },
			want: func(string) string { return evil }},
		{name: "hard link out", refused: true, entries: func(string) []tarEntry {
			return []tarEntry{{name: "h", typ: tar.TypeLink, linkname: "../victim/canary"}}
		}},
		{name: "absolute", entries: func(string) []tarEntry { return []tarEntry{{name: "/abs/" + evil}} },
			want: func(string) string { return "abs/" + evil }},
		{name: "symlink to root", entries: func(string) []tarEntry {
			return []tarEntry{{name: "l", typ: tar.TypeSymlink, linkname: "/"}, {name: "l/etc/" + evil}}
		}, want: func(string) string { return "etc/" + evil }},
		{name: "symlink up", entries: func(string) []tarEntry {
			return []tarEntry{{name: "l", typ: tar.TypeSymlink, linkname: "../../../../../.."}, {name: "l/" + evil}}
		}, want: func(string) string { return evil }},
		// A symlink to nothing inside the destination (the host's path
		// is not there): the entry through it fails, as in BuildKit's
		// and buildah's unpacks, and nothing is made where it points.
		{name: "symlink to the host", entries: func(victim string) []tarEntry {
			return []tarEntry{{name: "l", typ: tar.TypeSymlink, linkname: victim}, {name: "l/" + evil}}
		}, refused: true},
		{name: "symlink dir then hard link through it", entries: func(victim string) []tarEntry {
			return []tarEntry{{name: "l", typ: tar.TypeSymlink, linkname: victim}, {name: evil, typ: tar.TypeLink, linkname: "l/canary"}}
		}, refused: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			outer := t.TempDir()
			victim := mkdirTest(t, outer, "victim", 0o755)
			writeTestFile(t, victim, "canary", "canary", 0o644)
			root := mkdirTest(t, outer, "root", 0o755)
			src := addContext(t, makeTestTar(t, tt.entries(victim)...))
			_, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"blob"}, DestRoot: root, Dest: "/dest/", Add: true})
			if tt.refused && err == nil {
				t.Errorf("ADD succeeded, want it refused")
			}
			if !tt.refused {
				if err != nil {
					t.Fatal(err)
				}
				wantFile(t, filepath.Join(root, "dest", tt.want(victim)), "", 0o644)
			}
			entries, _ := os.ReadDir(outer)
			if len(entries) != 2 {
				t.Errorf("%s holds %v, want only root and victim", outer, entries)
			}
			wantFile(t, filepath.Join(victim, "canary"), "canary", 0o644)
			wantMissing(t, filepath.Join("/", evil))
			wantMissing(t, filepath.Join("/etc", evil))
			if entries, _ := os.ReadDir(victim); len(entries) != 1 {
				t.Errorf("victim holds %v, want only its canary", entries)
			}
		})
	}
}

func mustRoot(t testing.TB, dir string) *fsRoot {
	t.Helper()
	r, err := openFsRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.close)
	return r
}

// TestAddArchiveThroughDanglingSymlink: an archive entry under a symlink
// of the destination that leads nowhere (the image's /app/lib ->
// /usr/lib, which the image lacks) fails the ADD, as BuildKit's and
// buildah's unpacks fail, rather than making what the link points to
// (relative to the destination, where it never leads once the image
// runs); one that leads somewhere is written through.
func TestAddArchiveThroughDanglingSymlink(t *testing.T) {
	root := t.TempDir()
	mkdirTest(t, root, "app", 0o755)
	symlinkTest(t, "/usr/lib", root, "app/lib")
	src := addContext(t, makeTestTar(t, tarEntry{name: "lib/x", body: "x"}))
	if _, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"blob"}, DestRoot: root, Dest: "/app/", Add: true}); err == nil {
		t.Error("ADD through a dangling symlink succeeded")
	}
	wantMissing(t, filepath.Join(root, "app/usr"))
	wantMissing(t, filepath.Join(root, "usr"))
	mkdirTest(t, root, "app/usr/lib", 0o755) // the link leads, inside the destination, somewhere now
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"blob"}, DestRoot: root, Dest: "/app/", Add: true})
	wantFile(t, filepath.Join(root, "app/usr/lib/x"), "x", 0o644)
}

func TestAddArchiveIntoHostileDest(t *testing.T) {
	outer := t.TempDir()
	root := mkdirTest(t, outer, "a/b/root", 0o755)
	symlinkTest(t, "../../../..", root, "usr/local")
	src := addContext(t, makeTestTar(t, tarEntry{name: "bin/tool", body: "tool"}))
	mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"blob"}, DestRoot: root, Dest: "/usr/local", Add: true})
	wantFile(t, filepath.Join(root, "bin/tool"), "tool", 0o644)
	wantMissing(t, filepath.Join(outer, "bin"))
	wantMissing(t, filepath.Join(outer, "a/bin"))
}

func TestUnpackCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	n, err := unpackTar(ctx, bytes.NewReader(makeTestTar(t, tarEntry{name: "a"}, tarEntry{name: "b"})), mustRoot(t, dir), nil)
	if !errors.Is(err, context.Canceled) || n != 0 {
		t.Errorf("unpackTar = %d, %v; want 0, context.Canceled", n, err)
	}
	wantEmptyDir(t, dir)
}

// urlServer serves what TestAddURL downloads, on 127.0.0.1.
type urlServer struct {
	mu   sync.Mutex
	tool string
}

func (s *urlServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/files/tool.sh":
		s.mu.Lock()
		body := s.tool
		s.mu.Unlock()
		w.Header().Set("Last-Modified", helloTime.Format(http.TimeFormat))
		w.Write([]byte(body))
	case "/files/archive.tar":
		w.Write(makeTestTar(&testing.T{}, tarEntry{name: "inner"}))
	case "/nolm/data", "/":
		w.Write([]byte("data"))
	case "/redirect":
		http.Redirect(w, r, "/files/tool.sh", http.StatusFound)
	default:
		http.NotFound(w, r)
	}
}

func TestAddURL(t *testing.T) {
	handler := &urlServer{tool: "#!/bin/sh\necho hi\n"}
	srv := httptest.NewServer(handler)
	defer srv.Close()
	root := t.TempDir()
	add := func(dest string, urls ...string) (int, error) {
		return Copy(context.Background(), CopySpec{Sources: urls, DestRoot: root, Dest: dest, Add: true})
	}

	if _, err := add("/opt/", srv.URL+"/files/tool.sh"); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "opt/tool.sh")
	wantFile(t, p, handler.tool, 0o600)
	wantMtime(t, p, helloTime)

	if _, err := add("/opt/r", srv.URL+"/redirect"); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(root, "opt/r"), handler.tool, 0o600)

	if _, err := add("/t/", srv.URL+"/files/archive.tar"); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(root, "t/archive.tar"), string(makeTestTar(t, tarEntry{name: "inner"})), 0o600)

	if _, err := add("/n/", srv.URL+"/nolm/data", srv.URL+"/"); err != nil {
		t.Fatal(err)
	}
	wantMtime(t, filepath.Join(root, "n/data"), time.Unix(0, 0))
	wantFile(t, filepath.Join(root, "n/__unnamed__"), "data", 0o600)

	_, err := add("/m/", srv.URL+"/missing")
	if !errors.Is(err, ErrDownload) || !strings.Contains(err.Error(), srv.URL+"/missing") || !strings.Contains(err.Error(), "404") {
		t.Errorf("err = %v, want ErrDownload naming the URL and its 404", err)
	}
	wantMissing(t, filepath.Join(root, "m"))

	mode := os.FileMode(0o755)
	spec := CopySpec{Sources: []string{srv.URL + "/files/tool.sh"}, DestRoot: root, Dest: "/c/x", Add: true, Chmod: &mode}
	if os.Geteuid() == 0 {
		spec.UID, spec.GID = 55, 66
	}
	if _, err := Copy(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(root, "c/x"), handler.tool, 0o755)
	wantOwner(t, filepath.Join(root, "c/x"), spec.UID, spec.GID)

	sum := func() string {
		d, err := Checksum(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		return d.String()
	}
	before := sum()
	if again := sum(); again != before {
		t.Errorf("the checksum of one URL changed between two calls")
	}
	handler.mu.Lock()
	handler.tool = "#!/bin/sh\necho changed\n"
	handler.mu.Unlock()
	if after := sum(); after == before {
		t.Errorf("the checksum of a URL did not change with its content")
	}
}

func TestAddLocalAndURL(t *testing.T) {
	srv := httptest.NewServer(&urlServer{})
	defer srv.Close()
	src := t.TempDir()
	writeTestFile(t, src, "local", "local", 0o644)
	root := t.TempDir()
	n := mustCopy(t, CopySpec{SrcRoot: src, Sources: []string{"local", srv.URL + "/nolm/data"}, DestRoot: root, Dest: "/both/", Add: true})
	if n != 3 {
		t.Errorf("ADD wrote %d entries, want 3", n)
	}
	wantFile(t, filepath.Join(root, "both/local"), "local", 0o644)
	wantFile(t, filepath.Join(root, "both/data"), "data", 0o600)
	st, _ := os.Stat(filepath.Join(root, "both/data"))
	if st.Sys().(*syscall.Stat_t).Uid != 0 && os.Geteuid() == 0 {
		t.Errorf("downloaded file not owned by root")
	}
}

// TestAddURLChecksum: ADD --checksum keeps a download whose content has
// the digest, refuses one that has not (leaving nothing), refuses a local
// source, and keys the cache on the checksum without a download.
func TestAddURLChecksum(t *testing.T) {
	handler := &urlServer{tool: "#!/bin/sh\necho hi\n"}
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		handler.ServeHTTP(w, r)
	}))
	defer srv.Close()
	good := digest.FromString(handler.tool)
	root := t.TempDir()
	spec := CopySpec{Sources: []string{srv.URL + "/files/tool.sh"}, DestRoot: root, Dest: "/opt/", Add: true, Checksum: good}
	mustCopy(t, spec)
	wantFile(t, filepath.Join(root, "opt/tool.sh"), handler.tool, 0o600)

	bad := spec
	bad.Dest, bad.Checksum = "/bad/", digest.FromString("something else")
	if _, err := Copy(context.Background(), bad); !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), good.String()) {
		t.Errorf("a download of other content: err = %v, want ErrChecksum naming its digest", err)
	}
	wantMissing(t, filepath.Join(root, "bad/tool.sh"))

	src := addContext(t, []byte("local"))
	if _, err := Copy(context.Background(), CopySpec{SrcRoot: src, Sources: []string{"blob"}, DestRoot: root, Dest: "/l/", Add: true, Checksum: good}); err == nil || !strings.Contains(err.Error(), "--checksum") {
		t.Errorf("--checksum of a local file: err = %v, want an error naming --checksum", err)
	}

	before := gets.Load()
	k1, err := Checksum(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if n := gets.Load() - before; n != 0 {
		t.Errorf("the cache key of an ADD --checksum made %d requests, want none", n)
	}
	other := spec
	other.Checksum = digest.FromString("v2")
	if k2, _ := Checksum(context.Background(), other); k2 == k1 {
		t.Error("another checksum gave the same cache key")
	}
}

// TestAddURLKeyIsWhatIsCopied: the cache key of an ADD URL is made of the
// bytes and the time (Last-Modified) Copy then writes, from one download
// (a server answering each request otherwise must not give a layer other
// than its key says); a change of Last-Modified alone is another key.
func TestAddURLKeyIsWhatIsCopied(t *testing.T) {
	var gets atomic.Int64
	lastModified := "Mon, 01 Jan 2001 00:00:00 GMT"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := gets.Add(1)
		w.Header().Set("Last-Modified", lastModified)
		fmt.Fprintf(w, "answer %d\n", n)
	}))
	defer srv.Close()
	root := t.TempDir()
	spec := CopySpec{Sources: []string{srv.URL + "/f"}, DestRoot: root, Dest: "/f", Add: true, Downloads: &Downloads{Dir: t.TempDir()}}
	k1, err := Checksum(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	mustCopy(t, spec)
	wantFile(t, filepath.Join(root, "f"), "answer 1\n", 0o600)
	if n := gets.Load(); n != 1 {
		t.Errorf("%d requests, want the key's one", n)
	}
	if st, err := os.Stat(filepath.Join(root, "f")); err != nil || st.ModTime().Year() != 2001 {
		t.Errorf("time %v (%v), want Last-Modified's", st.ModTime(), err)
	}
	spec.Downloads.Remove()
	if left, _ := os.ReadDir(spec.Downloads.Dir); len(left) != 0 {
		t.Errorf("Remove left %d files", len(left))
	}

	// Same bytes, another Last-Modified: another key.
	srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", lastModified)
		fmt.Fprint(w, "same\n")
	}))
	defer srv2.Close()
	spec2 := CopySpec{Sources: []string{srv2.URL + "/f"}, Dest: "/f", Add: true}
	a, err := Checksum(context.Background(), spec2)
	if err != nil {
		t.Fatal(err)
	}
	lastModified = "Thu, 05 May 2005 00:00:00 GMT"
	b, err := Checksum(context.Background(), spec2)
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a == k1 {
		t.Error("a new Last-Modified of the same bytes gave the same cache key")
	}
}

// TestAddArchiveIgnoresChmod: --chmod leaves an archive's entries and the
// directory it is unpacked into alone, as BuildKit and buildah do.
func TestAddArchiveIgnoresChmod(t *testing.T) {
	data := makeTestTar(t, tarEntry{name: "f", body: "f", mode: 0o640})
	root := t.TempDir()
	mode := os.FileMode(0o600)
	mustCopy(t, CopySpec{SrcRoot: addContext(t, data), Sources: []string{"blob"}, DestRoot: root, Dest: "/made/", Add: true, Chmod: &mode})
	if fi, err := os.Stat(filepath.Join(root, "made")); err != nil || fi.Mode() != os.ModeDir|0o755 {
		t.Errorf("/made: %v, %v; want drwxr-xr-x", fi, err)
	}
	wantFile(t, filepath.Join(root, "made/f"), "f", 0o640)
}
