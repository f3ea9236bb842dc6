package index

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

// tarDesc describes an uncompressed tar blob as a registry would.
func tarDesc(blob []byte) Descriptor {
	return Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob)), MediaType: mtOCITar}
}

// tarFixture is fixtureEntries plus what only a tar carries: a file of
// several chunks and sub-second mtimes (PAX).
func tarFixture() []tarEntry {
	e := fixtureEntries()
	precise := time.Date(2024, 1, 2, 3, 4, 5, 123456789, time.UTC)
	return append(e,
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "multi", Mode: 0o644, ModTime: fixtureTime},
			body: randomBytes(20, 2*tarChunkSize+12345)},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "precise", Mode: 0o644, ModTime: precise, Format: tar.FormatPAX},
			body: []byte("nanoseconds")},
	)
}

func TestReadTar(t *testing.T) {
	entries := tarFixture()
	blob := writeTar(t, entries)
	r := &countingReaderAt{r: bytes.NewReader(blob)}
	idx, err := Read(context.Background(), r, tarDesc(blob))
	if err != nil {
		t.Fatal(err)
	}
	if idx.Format != FormatTar {
		t.Errorf("Format = %q", idx.Format)
	}
	checkAgainstTar(t, idx, blob, entries)
	for ino, chunks := range idx.Chunks {
		for _, c := range chunks {
			if c.Encoding != EncodingRaw || c.BlobLength != c.Length || c.Inner != 0 || c.Length > tarChunkSize {
				t.Errorf("inode %d: chunk %+v is not a raw span of at most %d bytes", ino, c, tarChunkSize)
			}
		}
	}
	if m := lookupPath(idx, "multi"); m == nil || len(idx.Chunks[m.Ino]) != 3 {
		t.Errorf("multi: %+v, %d chunks, want 3", m, len(idx.Chunks[m.Ino]))
	}
	// The head Detect reads, then the rest of the blob in order, in ranges
	// of blobStreamRead bytes: no byte twice.
	var next int64
	for i, rd := range r.reads {
		if rd[0] != next || rd[1] > blobStreamRead {
			t.Errorf("read %d is %v, want one at %d of at most %d bytes", i, rd, next, blobStreamRead)
		}
		next = rd[0] + rd[1]
	}
	if next != int64(len(blob)) || len(r.reads) != 2 {
		t.Errorf("reads %v: want the head, then the rest of the %d-byte blob in one read", r.reads, len(blob))
	}
}

// TestReadTarInRanges reads a blob bigger than one ranged read: every byte
// is read once, in order.
func TestReadTarInRanges(t *testing.T) {
	blob := writeTar(t, []tarEntry{
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "a", Mode: 0o644}, body: randomBytes(1, blobStreamRead+100)},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "b", Mode: 0o644}, body: randomBytes(2, blobStreamRead/2)},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "c", Mode: 0o644}, body: []byte("c")},
	})
	r := &countingReaderAt{r: bytes.NewReader(blob)}
	idx, err := ReadTar(context.Background(), r, int64(len(blob)), digest.FromBytes(blob))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, rd := range r.reads {
		if rd[0] != total {
			t.Fatalf("reads %v are not in order", r.reads)
		}
		total += rd[1]
	}
	if total != int64(len(blob)) || len(r.reads) != 2 {
		t.Errorf("reads %v for a blob of %d bytes", r.reads, len(blob))
	}
	for _, name := range []string{"a", "b", "c"} {
		e := lookupPath(idx, name)
		if got := fileContent(t, idx, blob, e.Ino); int64(len(got)) != e.Size {
			t.Errorf("%s: %d bytes, want %d", name, len(got), e.Size)
		}
	}
}

// TestReadTarReplaced: the replaced-entry cases of testdata/replace.txtar,
// written as tars, give the same trees as their eStargz TOCs: one builder
// serves every format.
func TestReadTarReplaced(t *testing.T) {
	data := regexp.MustCompile(` data=@\d+/\d+`)
	for _, tc := range replaceCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			blob := tocToTar(t, tc.toc)
			idx, err := Read(context.Background(), bytes.NewReader(blob), tarDesc(blob))
			if err != nil {
				t.Fatal(err)
			}
			// Blob offsets differ between the formats; the rest may not.
			got, want := data.ReplaceAllString(dumpTree(idx), ""), data.ReplaceAllString(tc.tree, "")
			if got != want {
				t.Errorf("index lists\n%s\nwant\n%s", got, want)
			}
		})
	}
}

// tocToTar writes the entries of an eStargz TOC JSON as a tar, in order,
// regular files with Size zero bytes.
func tocToTar(t testing.TB, toc []byte) []byte {
	t.Helper()
	var jtoc estargz.JTOC
	if err := json.Unmarshal(toc, &jtoc); err != nil {
		t.Fatal(err)
	}
	types := map[string]byte{"dir": tar.TypeDir, "reg": tar.TypeReg, "symlink": tar.TypeSymlink, "hardlink": tar.TypeLink,
		"char": tar.TypeChar, "block": tar.TypeBlock, "fifo": tar.TypeFifo}
	var entries []tarEntry
	for _, e := range jtoc.Entries {
		typ, ok := types[e.Type]
		if !ok {
			continue // chunks
		}
		h := tar.Header{Typeflag: typ, Name: e.Name, Mode: e.Mode, Uid: e.UID, Gid: e.GID, Linkname: e.LinkName,
			Devmajor: int64(e.DevMajor), Devminor: int64(e.DevMinor), ModTime: time.Unix(0, 0)}
		if e.ModTime3339 != "" {
			h.ModTime, _ = time.Parse(time.RFC3339, e.ModTime3339)
		}
		for k, v := range e.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = string(v)
		}
		entries = append(entries, tarEntry{hdr: h, body: make([]byte, e.Size)})
	}
	return writeTar(t, entries)
}

// rawTar writes headers as given (names, sizes, types no well-behaved
// writer would produce) with body bytes after each.
func rawTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatalf("tar body %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestHostileTars(t *testing.T) {
	reg := func(name string, body string) tarEntry {
		return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}, body: []byte(body)}
	}
	hdr := func(typ byte, name, link string) tarEntry {
		return tarEntry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: link, Mode: 0o644}}
	}
	cases := []struct {
		name    string
		entries []tarEntry
		want    string
	}{
		{"dotdot", []tarEntry{reg("a/../../etc/passwd", "x")}, `".." component`},
		{"absolute", []tarEntry{reg("/etc/passwd", "x")}, "absolute name"},
		{"long-component", []tarEntry{reg(strings.Repeat("n", MaxNameLen+1), "x")}, "more than 255"},
		{"long-whiteout", []tarEntry{reg(".wh."+strings.Repeat("n", MaxNameLen+1), "")}, "more than 255"},
		{"hardlink-traversal", []tarEntry{reg("a", "x"), hdr(tar.TypeLink, "b", "../a")}, `".." component`},
		{"hardlink-missing", []tarEntry{hdr(tar.TypeLink, "b", "nowhere")}, "not an earlier entry"},
		{"hardlink-to-dir", []tarEntry{hdr(tar.TypeDir, "d", ""), hdr(tar.TypeLink, "b", "d")}, "is a directory"},
		{"under-a-file", []tarEntry{reg("f", "x"), reg("f/g", "y")}, "not a directory"},
		{"whiteout-dir", []tarEntry{hdr(tar.TypeDir, "d/.wh.x", "")}, "whiteout"},
		{"empty-symlink", []tarEntry{hdr(tar.TypeSymlink, "l", "")}, "empty target"},
		{"unknown-type", []tarEntry{hdr('V', "volume", "")}, "unknown entry type"},
		{"root-not-dir", []tarEntry{hdr(tar.TypeSymlink, "./", "x")}, "not a directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			blob := rawTar(t, tc.entries)
			_, err := Read(context.Background(), bytes.NewReader(blob), tarDesc(blob))
			assertInvalid(t, err, tc.want)
		})
	}
}

// TestReadTarLongWhiteout: the whiteout of a name of NAME_MAX bytes is
// longer than NAME_MAX (".wh." comes on top); it is the only way an image
// can delete that name, and it hides it.
func TestReadTarLongWhiteout(t *testing.T) {
	long := strings.Repeat("n", MaxNameLen)
	blob := rawTar(t, []tarEntry{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/.wh." + long, Mode: 0o644}},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/.wh." + long[:MaxNameLen-4] + "/", Mode: 0o755}},
	})
	_, err := Read(context.Background(), bytes.NewReader(blob), tarDesc(blob))
	assertInvalid(t, err, "whiteout") // a directory named .wh.*: still refused
	blob = rawTar(t, []tarEntry{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/.wh." + long, Mode: 0o644}},
	})
	idx, err := Read(context.Background(), bytes.NewReader(blob), tarDesc(blob))
	if err != nil {
		t.Fatalf("whiteout of a %d-byte name: %v", MaxNameLen, err)
	}
	if tree := dumpTree(idx); !strings.Contains(tree, long) {
		t.Fatalf("index lists\n%s\nwant a whiteout of the long name", tree)
	}
}

// TestHostileTarBlobs: damage to the blob itself.
func TestHostileTarBlobs(t *testing.T) {
	good := writeTar(t, tarFixture())
	ctx := context.Background()
	t.Run("truncated", func(t *testing.T) {
		// In a header, in a file's data, in the last file's data. (A tar
		// cut in the padding after its last file's data is one archive/tar
		// reads whole, as does every unpacker built on it.)
		for _, n := range []int{512 + 100, len(good) / 2, len(good) - 1024 - 512 + 5} {
			blob := good[:n]
			_, err := ReadTar(ctx, bytes.NewReader(blob), int64(len(blob)), digest.FromBytes(blob))
			assertInvalid(t, err, "")
		}
	})
	t.Run("digest-mismatch", func(t *testing.T) {
		blob := bytes.Clone(good)
		blob[len(blob)/2] ^= 1 // inside "multi"'s data: the tar still parses
		_, err := ReadTar(ctx, bytes.NewReader(blob), int64(len(blob)), digest.FromBytes(good))
		if !errors.Is(err, ErrDigestMismatch) || !errors.Is(err, ErrInvalid) {
			t.Fatalf("ReadTar of changed bytes = %v, want ErrDigestMismatch", err)
		}
	})
	t.Run("trailing-bytes-count", func(t *testing.T) {
		blob := append(bytes.Clone(good), "trailing"...)
		_, err := ReadTar(ctx, bytes.NewReader(blob), int64(len(blob)), digest.FromBytes(good))
		if !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("ReadTar of a blob with bytes after the tar = %v, want ErrDigestMismatch", err)
		}
		if _, err := ReadTar(ctx, bytes.NewReader(blob), int64(len(blob)), digest.FromBytes(blob)); err != nil {
			t.Fatalf("the same blob with its own digest: %v", err)
		}
	})
	t.Run("size-past-end", func(t *testing.T) {
		// A header that claims a terabyte of data, and no data.
		var buf bytes.Buffer
		if err := tar.NewWriter(&buf).WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "f", Size: 1 << 40}); err != nil {
			t.Fatal(err)
		}
		blob := append(buf.Bytes(), make([]byte, 1024)...)
		_, err := ReadTar(ctx, bytes.NewReader(blob), int64(len(blob)), digest.FromBytes(blob))
		assertInvalid(t, err, "runs past the end")
	})
	t.Run("no-digest", func(t *testing.T) {
		if _, err := ReadTar(ctx, bytes.NewReader(good), int64(len(good)), ""); err == nil {
			t.Fatal("ReadTar without a digest to check accepted the layer")
		}
	})
	t.Run("sparse", func(t *testing.T) {
		// An old GNU sparse file with an empty sparse map: archive/tar's
		// writer writes none, so its header is patched.
		blob := rawTar(t, []tarEntry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "s", Format: tar.FormatGNU}}})
		blob[156] = tar.TypeGNUSparse
		setTarChecksum(blob[:512])
		_, err := Read(ctx, bytes.NewReader(blob), tarDesc(blob))
		if !errors.Is(err, ErrNotLazy) {
			t.Fatalf("sparse file: %v, want ErrNotLazy", err)
		}
	})
}

func TestHostileTarLimits(t *testing.T) {
	var files []tarEntry
	for i := range 10 {
		files = append(files, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("f%d", i)}})
	}
	read := func(blob []byte, lim limits) error {
		_, err := readTar(context.Background(), bytes.NewReader(blob), int64(len(blob)), digest.FromBytes(blob), lim, nil)
		return err
	}
	small := limits{entries: 10, chunks: 10}
	assertInvalid(t, read(writeTar(t, files), small), "more than 10 entries")
	if err := read(writeTar(t, files[:9]), small); err != nil {
		t.Errorf("9 files + root at a limit of 10: %v", err)
	}
	deep := writeTar(t, []tarEntry{{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "a/b/c/d/e/f/g/h/i/j/k"}}})
	assertInvalid(t, read(deep, small), "more than 10 entries")
	big := writeTar(t, []tarEntry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big"}, body: make([]byte, 11*tarChunkSize)}})
	assertInvalid(t, read(big, small), "more than 10 chunks")
	repeats := writeTar(t, func() (e []tarEntry) {
		for range 30 {
			e = append(e, tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/"}})
		}
		return e
	}())
	assertInvalid(t, read(repeats, small), "more than 20 tar entries")
}

// failingReaderAt fails every read from off on.
type failingReaderAt struct {
	r   io.ReaderAt
	off int64
}

var errNetwork = errors.New("connection reset")

func (f failingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.off {
		return 0, errNetwork
	}
	return f.r.ReadAt(p, off)
}

// TestReadTarBlobErrors: a blob that cannot be read is the reader's error,
// not a bad layer.
func TestReadTarBlobErrors(t *testing.T) {
	blob := writeTar(t, []tarEntry{
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "a"}, body: randomBytes(1, blobStreamRead+100)},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "b"}, body: []byte("b")},
	})
	r := failingReaderAt{r: bytes.NewReader(blob), off: blobStreamRead + 1}
	_, err := ReadTar(context.Background(), r, int64(len(blob)), digest.FromBytes(blob))
	if !errors.Is(err, errNetwork) || errors.Is(err, ErrInvalid) {
		t.Fatalf("ReadTar = %v, want the reader's error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ReadTar(ctx, bytes.NewReader(blob), int64(len(blob)), digest.FromBytes(blob)); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadTar with a cancelled context = %v", err)
	}
}

func FuzzReadTar(f *testing.F) {
	// Small seeds: the fuzzer minimizes every input that finds new
	// coverage, which takes long for large ones.
	var small []tarEntry
	for _, e := range fixtureEntries() {
		if len(e.body) <= 512 {
			small = append(small, e)
		}
	}
	f.Add(writeTar(f, small[:24]))
	for _, tc := range replaceCases(f) {
		f.Add(tocToTar(f, tc.toc))
	}
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, blob []byte) {
		idx, err := ReadTar(context.Background(), bytes.NewReader(blob), int64(len(blob)), digest.FromBytes(blob))
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotLazy) {
				t.Fatalf("error is neither ErrInvalid nor ErrNotLazy: %v", err)
			}
			return
		}
		checkParsed(t, idx, blob)
		// Round trip: a name whose last entry is a regular file serves
		// that entry's bytes, as archive/tar reads them.
		for name, body := range lastRegular(blob) {
			if e := lookupPath(idx, name); e != nil && e.Type == TypeReg && e.Size > 0 && e.Size == int64(len(body)) {
				if got := fileContent(t, idx, blob, e.Ino); !bytes.Equal(got, body) {
					t.Fatalf("%s: the index serves other bytes than the tar holds", name)
				}
			}
		}
	})
}

// lastRegular returns the content of each (clean) name whose last entry
// in the tar is a small regular file.
func lastRegular(blob []byte) map[string][]byte {
	last := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(blob))
	for {
		h, err := tr.Next()
		if err != nil {
			return last
		}
		name, err := cleanName(h.Name)
		if err != nil || isWhiteoutName(name) {
			continue
		}
		delete(last, name)
		if h.Typeflag == tar.TypeReg && h.Size <= 1<<16 {
			if body, err := io.ReadAll(tr); err == nil {
				last[name] = body
			}
		}
	}
}

// TestReadTarKeepsChunks reads a tar with WithKeep: every chunk of the
// index is handed on once, with bytes that hash to its digest, and
// nothing else is (no whiteout's or hidden file's data); an eStargz
// layer hands nothing on, since its indexing reads no file data.
func TestReadTarKeepsChunks(t *testing.T) {
	entries := append(tarFixture(), tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: ".wh.gone", Mode: 0o644, ModTime: fixtureTime},
		body: []byte("a whiteout's data is dropped")})
	blob := writeTar(t, entries)
	kept := map[digest.Digest][]byte{}
	calls := 0
	idx, err := Read(context.Background(), bytes.NewReader(blob), tarDesc(blob), WithKeep(func(d digest.Digest, data []byte) {
		calls++
		kept[d] = bytes.Clone(data)
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for ino, chunks := range idx.Chunks {
		for _, c := range chunks {
			want++
			data, ok := kept[c.Digest]
			if !ok {
				t.Errorf("inode %d: chunk at %d was not kept", ino, c.FileOffset)
				continue
			}
			if digest.FromBytes(data) != c.Digest || int64(len(data)) != c.Length {
				t.Errorf("inode %d: chunk at %d kept as %d bytes hashing to %s, want %d bytes of %s",
					ino, c.FileOffset, len(data), digest.FromBytes(data), c.Length, c.Digest)
			}
		}
	}
	if calls != want {
		t.Errorf("keep called %d times for %d chunks", calls, want)
	}
	if _, ok := kept[digest.FromString("a whiteout's data is dropped")]; ok {
		t.Error("a whiteout's data was kept")
	}

	calls = 0
	esgz, tocDigest := buildEStargz(t, writeTar(t, fixtureEntries()))
	if _, err := Read(context.Background(), bytes.NewReader(esgz), Descriptor{Digest: digest.FromBytes(esgz), Size: int64(len(esgz)),
		Annotations: map[string]string{AnnotationTOCDigest: tocDigest.String()}}, WithKeep(func(digest.Digest, []byte) { calls++ })); err != nil {
		t.Fatal(err)
	}
	if calls != 0 {
		t.Errorf("indexing an eStargz layer kept %d chunks", calls)
	}
}
