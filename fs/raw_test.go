package fs

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/fs/index"
)

// TestListingWithoutOpendir lists directories too big for one READDIRPLUS
// reply, from the start, in small batches and after rewinding, and checks
// that a kernel offering FUSE_NO_OPENDIR_SUPPORT stopped sending OPENDIR
// after the first one.
func TestListingWithoutOpendir(t *testing.T) {
	requireRoot(t)
	var names []string
	var sizes []int
	for d := range 3 {
		for i := range 700 { // ~100 KB of READDIRPLUS replies a directory
			names = append(names, fmt.Sprintf("d%d/a-rather-long-file-name-to-fill-replies-%04d", d, i))
			sizes = append(sizes, 1)
		}
		names = append(names, fmt.Sprintf("d%d/sub/x", d))
		sizes = append(sizes, 1)
	}
	bl := buildEStargz(t, names, sizes, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)

	want := func(d int) []string {
		var out []string
		for i := range 700 {
			out = append(out, fmt.Sprintf("a-rather-long-file-name-to-fill-replies-%04d", i))
		}
		return append(out, "sub")
	}
	for round := range 2 { // the second round is served from the kernel's cache
		for d := range 3 {
			dir := filepath.Join(ml.dir, fmt.Sprintf("d%d", d))
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
				if e.Name() == "sub" != e.IsDir() {
					t.Fatalf("round %d: %s/%s: IsDir %v", round, dir, e.Name(), e.IsDir())
				}
			}
			if !slices.Equal(got, want(d)) {
				t.Fatalf("round %d: %s lists %d names, want %d", round, dir, len(got), len(want(d)))
			}
			if b, err := os.ReadFile(filepath.Join(dir, "sub", "x")); err != nil || string(b) != string(bl.files[fmt.Sprintf("d%d/sub/x", d)]) {
				t.Fatalf("d%d/sub/x: %q %v", d, b, err)
			}
		}
	}

	// Small batches, then a rewind: every reply at an offset of its own.
	f, err := os.Open(filepath.Join(ml.dir, "d1"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []string
	for {
		batch, err := f.Readdirnames(7)
		got = append(got, batch...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	again, err := f.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	slices.Sort(again)
	if !slices.Equal(got, want(1)) || !slices.Equal(again, want(1)) {
		t.Fatalf("batched listing %d names, after rewind %d, want %d", len(got), len(again), len(want(1)))
	}

	opendirs := ml.mount.lfs.opendirs.Load()
	if !ml.mount.lfs.noOpendir.Load() {
		t.Logf("kernel without FUSE_NO_OPENDIR_SUPPORT: %d OPENDIR requests", opendirs)
		return
	}
	if opendirs != 1 {
		t.Fatalf("%d OPENDIR requests reached the daemon, want 1 (answered ENOSYS, then none)", opendirs)
	}
}

// TestListingHasDots checks that a directory's listing starts with "."
// and "..", directories both, as on a disk file system: overlayfs takes a
// merged directory's dots from its lowest layer.
func TestListingHasDots(t *testing.T) {
	requireRoot(t)
	bl := buildEStargz(t, []string{"d/a", "d/sub/b"}, []int{1, 1}, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	for _, dir := range []string{ml.dir, filepath.Join(ml.dir, "d")} {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		n, err := unix.Getdents(fd, buf)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		var types []uint8
		for b := buf[:n]; len(b) > 0; {
			d := (*unix.Dirent)(unsafe.Pointer(&b[0]))
			name := unix.ByteSliceToString((*[256]byte)(unsafe.Pointer(&d.Name[0]))[:])
			names, types = append(names, name), append(types, d.Type)
			if d.Ino == 0 {
				t.Errorf("%s: entry %q has inode number 0 (libc skips those)", dir, name)
			}
			b = b[d.Reclen:]
		}
		if len(names) < 3 || names[0] != "." || names[1] != ".." || types[0] != unix.DT_DIR || types[1] != unix.DT_DIR {
			t.Errorf("%s lists %q (types %v), want \".\" and \"..\", directories, first", dir, names, types)
		}
	}
}

// TestCloseWithoutFlush reads files and checks that their closes sent no
// FLUSH (FOPEN_NOFLUSH), or one at most where the kernel ignores that flag
// (answered ENOSYS, after which it sends none).
func TestCloseWithoutFlush(t *testing.T) {
	requireRoot(t)
	names := []string{"a", "b", "c", "d"}
	bl := buildEStargz(t, names, []int{10, 20, 30, 40}, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	for _, name := range names {
		for range 2 {
			b, err := os.ReadFile(filepath.Join(ml.dir, name))
			if err != nil || string(b) != string(bl.files[name]) {
				t.Fatalf("%s: %q %v", name, b, err)
			}
		}
	}
	if n := ml.mount.lfs.flushes.Load(); n > 1 {
		t.Fatalf("%d FLUSH requests for 8 closes, want at most 1", n)
	}
}

// TestXattrsOfALayerWithout asks a layer that has no xattrs at all for
// one: the answer is "no such attribute" (ENODATA) and an empty list, as
// from any filesystem with xattrs, never EOPNOTSUPP, which containerd's
// differ takes as an error (a diff over the layer, such as BuildKit's
// export of a build step, would fail on security.capability).
func TestXattrsOfALayerWithout(t *testing.T) {
	requireRoot(t)
	bl := buildEStargz(t, []string{"dir/file"}, []int{10}, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	for _, p := range []string{"dir", "dir/file"} {
		path := filepath.Join(ml.dir, p)
		for range 2 { // the second time too: the kernel must not have stopped asking
			if _, err := unix.Lgetxattr(path, "security.capability", make([]byte, 64)); err != unix.ENODATA {
				t.Errorf("%s: getxattr security.capability: %v, want ENODATA", p, err)
			}
			if n, err := unix.Llistxattr(path, make([]byte, 64)); err != nil || n != 0 {
				t.Errorf("%s: listxattr: %d, %v; want an empty list", p, n, err)
			}
		}
	}
}

// TestSmallFilesOpenWithoutTheDaemon reads a layer of small files: the
// kernel opens them itself after the first OPEN (answered ENOSYS, then
// none), sends no RELEASE, and every read returns the files' bytes.
func TestSmallFilesOpenWithoutTheDaemon(t *testing.T) {
	requireRoot(t)
	var names []string
	var sizes []int
	for i := range 40 {
		names = append(names, fmt.Sprintf("d%d/f%02d", i%4, i))
		sizes = append(sizes, 100+i*50)
	}
	bl := buildEStargz(t, names, sizes, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	if !ml.mount.lfs.openless.Load() {
		t.Fatal("a layer of small files keeps its opens")
	}
	for round := range 2 {
		for _, name := range names {
			b, err := os.ReadFile(filepath.Join(ml.dir, name))
			if err != nil || string(b) != string(bl.files[name]) {
				t.Fatalf("round %d: %s: %d bytes, %v", round, name, len(b), err)
			}
		}
	}
	if n := ml.mount.lfs.opensRefused.Load(); n != 1 {
		t.Fatalf("%d OPEN requests for %d opens, want 1 (answered ENOSYS, then none)", n, 2*len(names))
	}
	if n := ml.mount.lfs.releases.Load(); n != 0 {
		t.Fatalf("%d RELEASE requests, want none", n)
	}
}

// TestOpenlessChoice: a layer goes without opens unless passthrough works
// and its large files weigh more than what its opens cost.
func TestOpenlessChoice(t *testing.T) {
	for _, c := range []struct {
		info        index.Info
		passthrough bool
		want        bool
	}{
		{index.Info{Files: 50000, LargeBytes: 100 << 20}, true, true},
		{index.Info{Files: 3, LargeBytes: 1 << 30}, true, false},
		{index.Info{Files: 3, LargeBytes: 1 << 30}, false, true},
		{index.Info{Files: 10, LargeBytes: 10 * openCostBytes}, true, true},
		{index.Info{Files: 10, LargeBytes: 10*openCostBytes + 1}, true, false},
		{index.Info{Entries: 500}, true, false}, // indexed before files were counted
		{index.Info{}, false, true},
	} {
		if got := openless(c.info, c.passthrough); got != c.want {
			t.Errorf("openless(%+v, passthrough %v) = %v, want %v", c.info, c.passthrough, got, c.want)
		}
	}
}

// TestReadWaitingForTheNetworkHoldsUpNothing: while a read waits for its
// fetch, reads from the cache, lookups and listings of the same layer are
// answered (only reads that may wait leave the request loop).
func TestReadWaitingForTheNetworkHoldsUpNothing(t *testing.T) {
	requireRoot(t)
	// 8 MiB between the files, so that no fetch of the first takes the last.
	names := []string{"a/cached", "a/other", "pad/big", "b/fetched"}
	bl := buildEStargz(t, names, []int{3000, 10, 8 << 20, 5000}, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, func(c *Content) { c.ahead.bytes = 0 })
	read := func(name string) error {
		b, err := os.ReadFile(filepath.Join(ml.dir, name))
		if err == nil && string(b) != string(bl.files[name]) {
			err = fmt.Errorf("%s: wrong bytes", name)
		}
		return err
	}
	if err := read("a/cached"); err != nil {
		t.Fatal(err)
	}
	blob := ml.content.blob.(*memBlob)
	blob.mu.Lock()
	blob.hold, blob.free, blob.held = make(chan struct{}), -1, make(chan struct{}, 8)
	blob.mu.Unlock()
	released := false
	release := func() {
		if !released {
			released = true
			close(blob.hold)
		}
	}
	t.Cleanup(release)
	waiting := make(chan error, 1)
	go func() { waiting <- read("b/fetched") }()
	select {
	case <-blob.held: // the read waits in its fetch
	case err := <-waiting:
		t.Fatalf("b/fetched was read without a fetch (%v): the test needs it uncached", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the read of b/fetched never reached its fetch")
	}

	others := make(chan error, 1)
	go func() {
		others <- func() error {
			// Out of the kernel's page cache, so the read reaches the daemon.
			f, err := os.Open(filepath.Join(ml.dir, "a/cached"))
			if err != nil {
				return err
			}
			err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
			f.Close()
			if err != nil {
				return err
			}
			if err := read("a/cached"); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(ml.dir, "a/other")); err != nil {
				return err
			}
			_, err = os.ReadDir(filepath.Join(ml.dir, "b"))
			return err
		}()
	}()
	select {
	case err := <-others:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a cached read, a lookup and a listing waited for a read held in its fetch")
	}
	select {
	case err := <-waiting:
		t.Fatalf("the held read ended before its fetch was let go: %v", err)
	default:
	}
	release()
	if err := <-waiting; err != nil {
		t.Fatal(err)
	}
}

// TestInlineReadsParseTheRequest checks which requests the loop answers
// itself, and that a READ's node ID, offset and size reach the check of
// whether it is local.
func TestInlineReadsParseTheRequest(t *testing.T) {
	var got [3]uint64
	local := true
	c := &conn{local: func(ino, off uint64, size uint32) bool {
		got = [3]uint64{ino, off, uint64(size)}
		return local
	}}
	req := func(op uint32) []byte {
		in := make([]byte, inHeaderSize+40)
		binary.LittleEndian.PutUint32(in[0:4], uint32(len(in)))
		binary.LittleEndian.PutUint32(in[4:8], op)
		binary.LittleEndian.PutUint64(in[16:24], 4242)             // node ID
		binary.LittleEndian.PutUint64(in[inHeaderSize+8:], 1<<33)  // offset
		binary.LittleEndian.PutUint32(in[inHeaderSize+16:], 65536) // size
		return in
	}
	if !c.inline(req(1)) || !c.inline(req(opGetxattr)) || !c.inline(req(opReaddirplus)) {
		t.Fatal("a request answered from the index left the loop")
	}
	if !c.inline(req(opRead)) || got != [3]uint64{4242, 1 << 33, 65536} {
		t.Fatalf("local READ: inline false or parsed as %v", got)
	}
	local = false
	if c.inline(req(opRead)) {
		t.Fatal("a READ that may wait for the network stayed in the loop")
	}
	if c.inline(req(opRead)[:inHeaderSize+10]) {
		t.Fatal("a short READ request stayed in the loop")
	}
	if (&conn{}).inline(req(opRead)) {
		t.Fatal("a READ stayed in the loop of a connection that cannot tell local reads")
	}
}

// TestSmallFilesPushedWhenOverlayfsLooksThemUp asks for a file's
// trusted.overlay.metacopy xattr right after its first lookup, as
// overlayfs does of every lower file it looks up: a small file whose
// content is cached is then in the kernel's page cache, read with no READ
// request; a large one, any while a recording watches the layer, and one
// the kernel knew already (it may be being read: see push) are not.
func TestSmallFilesPushedWhenOverlayfsLooksThemUp(t *testing.T) {
	requireRoot(t)
	names := []string{"small", "large", "watched", "overlaid"}
	bl := buildEStargz(t, names, []int{1000, maxPush + 1, 500, 3000}, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	path := func(name string) string { return filepath.Join(ml.dir, name) }
	readCounting := func(name string) int64 {
		t.Helper()
		before := ml.mount.lfs.reads.Load()
		b, err := os.ReadFile(path(name))
		if err != nil || string(b) != string(bl.files[name]) {
			t.Fatalf("%s: %d bytes, %v", name, len(b), err)
		}
		return ml.mount.lfs.reads.Load() - before
	}
	lookUp := func(name string) {
		t.Helper()
		if _, err := unix.Lgetxattr(path(name), metacopyXattr, make([]byte, 64)); err != unix.ENODATA {
			t.Fatalf("%s: getxattr %s: %v, want ENODATA", name, metacopyXattr, err)
		}
	}
	for _, name := range names {
		cacheInDaemon(t, ml, name) // the kernel has not looked it up
	}
	lookUp("small")
	if n := readCounting("small"); n != 0 {
		t.Fatalf("a small cached file looked up by overlayfs: %d READ requests, want none", n)
	}
	dropPages(t, path("small"))
	lookUp("small") // no LOOKUP: the kernel holds it
	if n := readCounting("small"); n == 0 {
		t.Fatal("a file the kernel held was pushed again: it may have been being read")
	}
	lookUp("large")
	if n := readCounting("large"); n == 0 {
		t.Fatal("a file over the push limit was read without READ requests: was it pushed?")
	}
	r := &Recorder{layers: []digest.Digest{"sha256:test"}, seen: map[recordKey]int{}}
	ml.content.recording.add(r)
	lookUp("watched")
	if n := readCounting("watched"); n == 0 {
		t.Fatal("a file was pushed while a recording watched the layer: the recording cannot see its read")
	}
	ml.content.recording.remove(r)
	if l := r.List(testImage, []digest.Digest{ml.content.digest}); len(l.Files) != 1 || l.Files[0].Path != "watched" {
		t.Fatalf("recorded %+v, want the watched file", l.Files)
	}

	// The same through a real overlayfs: its LOOKUP and GETXATTR come
	// one after the other.
	ovl := t.TempDir()
	if err := unix.Mount("overlay", ovl, "overlay", unix.MS_RDONLY, "lowerdir="+ml.dir+":"+t.TempDir()); err != nil {
		t.Fatalf("mounting overlayfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(ovl, unix.MNT_DETACH) })
	before := ml.mount.lfs.reads.Load()
	if b, err := os.ReadFile(filepath.Join(ovl, "overlaid")); err != nil || !bytes.Equal(b, bl.files["overlaid"]) {
		t.Fatalf("overlaid: %d bytes, %v", len(b), err)
	}
	if n := ml.mount.lfs.reads.Load() - before; n != 0 {
		t.Fatalf("a small cached file read through overlayfs: %d READ requests, want none (pushed at its lookup)", n)
	}
}

// TestPushWaitsForNoRead: overlayfs looking up a file (its metacopy
// xattr) while a READ of the same file waits behind it in the queue must
// not hang the loop. The kernel stores pushed data page by page, each
// locked, and a page being read is locked until its READ is answered: a
// push there, from the loop that must read that READ, waited for ever (a
// container reading a file whose pages were dropped, while another
// overlayfs over the same layer looked it up, hung, and with it every
// request to the layer). The loop is held while the two requests queue.
func TestPushWaitsForNoRead(t *testing.T) {
	requireRoot(t)
	names := []string{"file", "gate"}
	bl := buildEStargz(t, names, []int{20000, 100}, 1<<20)
	ml := mountTestLayer(t, t.TempDir(), bl, nil)
	path := filepath.Join(ml.dir, "file")
	cacheInDaemon(t, ml, "file")
	// The kernel looks the file up and reads it, then drops its pages:
	// its next read sends a READ.
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, bl.files["file"]) {
		t.Fatalf("read: %d bytes, %v", len(b), err)
	}
	dropPages(t, path)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(op uint32) {
		once.Do(func() {
			close(held)
			<-release
		})
	}
	ml.mount.conn.beforeHandle.Store(&hook)
	defer ml.mount.conn.beforeHandle.Store(nil)
	var released sync.Once
	defer released.Do(func() { close(release) })

	go os.Stat(filepath.Join(ml.dir, "gate")) // a LOOKUP the loop is held at
	<-held
	xattrDone := make(chan error, 1)
	go func() {
		_, err := unix.Lgetxattr(path, metacopyXattr, make([]byte, 64))
		xattrDone <- err
	}()
	time.Sleep(50 * time.Millisecond) // the GETXATTR queues first
	readDone := make(chan error, 1)
	go func() {
		got := make([]byte, len(bl.files["file"]))
		_, err := f.ReadAt(got, 0) // locks the pages, queues a READ
		if err == nil && !bytes.Equal(got, bl.files["file"]) {
			err = errors.New("read the wrong bytes")
		}
		readDone <- err
	}()
	time.Sleep(50 * time.Millisecond)
	released.Do(func() { close(release) })
	for what, ch := range map[string]chan error{"getxattr": xattrDone, "read": readDone} {
		select {
		case err := <-ch:
			if err != nil && !errors.Is(err, unix.ENODATA) {
				t.Errorf("%s: %v", what, err)
			}
		case <-time.After(10 * time.Second):
			abortConn(t, ml.dir)
			t.Fatalf("the %s did not return within 10s: the loop hangs in a push", what)
		}
	}
}

// cacheInDaemon reads name through the layer's Content, as a read of
// another mount of the layer would: its chunks are cached, and this
// mount's kernel has not looked it up.
func cacheInDaemon(t *testing.T, ml *mountedLayer, name string) {
	t.Helper()
	e, found, err := ml.content.idx.Lookup(index.RootIno, name)
	if err != nil || !found {
		t.Fatalf("%s: not in the index: %v", name, err)
	}
	buf := make([]byte, e.Size)
	if n, err := ml.content.ReadAt(context.Background(), e, buf, 0); err != nil || int64(n) != e.Size {
		t.Fatalf("%s: read %d bytes: %v", name, n, err)
	}
}

// dropPages drops the file's pages from the kernel's page cache.
func dropPages(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// abortConn aborts the FUSE connection of the mount at dir, so that
// whatever waits on it fails and the mount can be undone.
func abortConn(t *testing.T, dir string) {
	t.Helper()
	// Not stat: on a hung mount it would hang too. The mount table says
	// the device.
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Log(err)
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 || fields[4] != dir {
			continue
		}
		var major, minor uint32
		if _, err := fmt.Sscanf(fields[2], "%d:%d", &major, &minor); err != nil {
			t.Log(err)
			continue
		}
		if err := abortConnection(unix.Mkdev(major, minor)); err != nil {
			t.Logf("aborting the connection: %v", err)
		}
	}
}
