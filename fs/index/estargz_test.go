package index

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/opencontainers/go-digest"
)

var fixtureTime = time.Date(2023, 5, 6, 7, 8, 9, 0, time.UTC)

// fixtureEntries is a layer with every entry type and the awkward cases:
// special mode bits, big ids, xattrs, long and non-ASCII names, hardlinks,
// whiteouts, an opaque directory, implicit parents, multi-chunk files.
func fixtureEntries() []tarEntry {
	capability := []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	dir := func(name string, mode int64) tarEntry {
		return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: fixtureTime}}
	}
	reg := func(name string, mode int64, body []byte) tarEntry {
		return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, ModTime: fixtureTime}, body: body}
	}
	long := "long/" + strings.Repeat("d", 120) + "/" + strings.Repeat("f", 200)
	e := []tarEntry{
		dir("./", 0o755),
		dir("etc/", 0o755),
		reg("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")),
		reg("etc/.wh.shadow", 0, nil),
		dir("bin/", 0o755),
		reg("bin/su", 0o4755, randomBytes(1, 3000)),
		reg("bin/wall", 0o2755, randomBytes(2, 100)),
		dir("tmp/", 0o1777),
		reg("empty", 0o600, nil),
		reg("big", 0o644, randomBytes(3, 3*4096+123)),
		reg("compressible", 0o644, bytes.Repeat([]byte("strata "), 5000)),
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "lnk", Linkname: "etc/passwd", ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "hl", Linkname: "etc/passwd", ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "hl2", Linkname: "hl", ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Devmajor: 8, Devminor: 0, ModTime: fixtureTime}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "fifo", Mode: 0o644, ModTime: fixtureTime}},
		dir("opq/", 0o750),
		reg("opq/.wh..wh..opq", 0, nil),
		reg("opq/keep", 0o644, []byte("kept")),
		reg(long, 0o644, []byte("long name")),
		reg("données/日本語.txt", 0o644, []byte("non-ASCII")),
		reg("implicit/a/b.txt", 0o644, []byte("implicit parents")),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "ids", Mode: 0o640, Uid: 100000, Gid: 4294967294, ModTime: fixtureTime}, body: []byte("ids")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/ping", Mode: 0o755, ModTime: fixtureTime, PAXRecords: map[string]string{
			"SCHILY.xattr.security.capability": string(capability),
			"SCHILY.xattr.user.note":           "hello",
		}}, body: randomBytes(4, 500)},
	}
	for i := range 40 { // small files, so MinChunkSize packs several into one stream
		e = append(e, reg(path.Join("small", string(rune('a'+i%26))+strings.Repeat("x", i)), 0o644, randomBytes(uint64(10+i), 100+i*37)))
	}
	return e
}

func TestReadEStargzBuild(t *testing.T) {
	tarBytes := writeTar(t, fixtureEntries())
	cases := []struct {
		name       string
		opts       []estargz.Option
		wantMulti  bool // some file has more than one chunk
		wantShared bool // some chunk starts inside a shared stream
	}{
		{name: "default"},
		{name: "chunk4k", opts: []estargz.Option{estargz.WithChunkSize(4096)}, wantMulti: true},
		{name: "minchunk", opts: []estargz.Option{estargz.WithChunkSize(4096), estargz.WithMinChunkSize(64 << 10)}, wantMulti: true, wantShared: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			blob, tocDigest := buildEStargz(t, tarBytes, tc.opts...)
			r := &countingReaderAt{r: bytes.NewReader(blob)}
			idx, err := ReadEStargz(context.Background(), r, int64(len(blob)), tocDigest)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.reads) != 1 {
				t.Errorf("%d ReadAt calls for a small layer, want 1: %v", len(r.reads), r.reads)
			}
			if idx.Format != FormatEStargz {
				t.Errorf("Format = %q", idx.Format)
			}
			checkAgainstTar(t, idx, blob, fixtureEntries())
			multi, shared := chunkShapes(idx)
			if multi != tc.wantMulti || shared != tc.wantShared {
				t.Errorf("multi-chunk files %v (want %v), shared streams %v (want %v)", multi, tc.wantMulti, shared, tc.wantShared)
			}
		})
	}
}

func chunkShapes(idx *Index) (multi, shared bool) {
	for _, cs := range idx.Chunks {
		multi = multi || len(cs) > 1
		for _, c := range cs {
			shared = shared || c.Inner > 0
		}
	}
	return multi, shared
}

// checkAgainstTar compares every tar entry with what the index serves.
func checkAgainstTar(t *testing.T, idx *Index, blob []byte, entries []tarEntry) {
	t.Helper()
	byName := map[string]*Entry{}
	for _, te := range entries {
		h := te.hdr
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		dir, base := path.Split(name)
		switch {
		case base == ".wh..wh..opq":
			d := lookupPath(idx, strings.TrimSuffix(dir, "/"))
			if d == nil || string(d.Xattrs[XattrOverlayOpaque]) != "y" {
				t.Errorf("%s: directory not opaque: %+v", name, d)
			}
			if lookupPath(idx, name) != nil {
				t.Errorf("%s: opaque marker is listed", name)
			}
			continue
		case strings.HasPrefix(base, ".wh."):
			w := lookupPath(idx, dir+strings.TrimPrefix(base, ".wh."))
			if w == nil || w.Type != TypeChar || w.DevMajor != 0 || w.DevMinor != 0 || w.Mode != 0 {
				t.Errorf("%s: whiteout = %+v", name, w)
			}
			continue
		}
		e := lookupPath(idx, name)
		if e == nil {
			t.Errorf("%q missing from the index", name)
			continue
		}
		byName[name] = e
		if h.Typeflag == tar.TypeLink {
			target := byName[h.Linkname]
			if target == nil || e.Ino != target.Ino {
				t.Errorf("hardlink %s: inode %d, target %s is %+v", name, e.Ino, h.Linkname, target)
			}
			continue
		}
		checkEntryMeta(t, name, e, h)
		if h.Typeflag == tar.TypeReg {
			if got := fileContent(t, idx, blob, e.Ino); !bytes.Equal(got, te.body) {
				t.Errorf("%s: content differs (%d bytes, want %d)", name, len(got), len(te.body))
			}
		}
	}
	if p := lookupPath(idx, "etc/passwd"); p == nil || p.Nlink != 3 {
		t.Errorf("etc/passwd with two hardlinks: %+v", p)
	}
	for _, hidden := range []string{estargz.NoPrefetchLandmark, estargz.PrefetchLandmark, estargz.TOCTarName} {
		if lookupPath(idx, hidden) != nil {
			t.Errorf("bookkeeping entry %s is listed", hidden)
		}
	}
	for _, implicit := range []string{"implicit", "implicit/a", "dev", "long", "small"} {
		if d := lookupPath(idx, implicit); d == nil || d.Type != TypeDir || d.Mode != 0o755 || !d.ModTime.IsZero() || d.UID != 0 {
			t.Errorf("implicit directory %s = %+v", implicit, d)
		}
	}
}

func checkEntryMeta(t *testing.T, name string, e *Entry, h tar.Header) {
	t.Helper()
	wantType := map[byte]Type{tar.TypeDir: TypeDir, tar.TypeReg: TypeReg, tar.TypeSymlink: TypeSymlink,
		tar.TypeChar: TypeChar, tar.TypeBlock: TypeBlock, tar.TypeFifo: TypeFifo}[h.Typeflag]
	if e.Type != wantType || e.Mode != uint32(h.Mode) || e.UID != uint32(h.Uid) || e.GID != uint32(h.Gid) {
		t.Errorf("%s: type %v mode %#o uid %d gid %d; want %v %#o %d %d", name, e.Type, e.Mode, e.UID, e.GID,
			wantType, h.Mode, h.Uid, h.Gid)
	}
	if !e.ModTime.Equal(h.ModTime) {
		t.Errorf("%s: mtime %v, want %v", name, e.ModTime, h.ModTime)
	}
	if e.LinkTarget != h.Linkname || e.DevMajor != uint32(h.Devmajor) || e.DevMinor != uint32(h.Devminor) {
		t.Errorf("%s: link %q dev %d:%d", name, e.LinkTarget, e.DevMajor, e.DevMinor)
	}
	for k, v := range h.PAXRecords {
		if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && string(e.Xattrs[x]) != v {
			t.Errorf("%s: xattr %s = %q, want %q", name, x, e.Xattrs[x], v)
		}
	}
}

func TestReadEStargzLargeTOCTwoReads(t *testing.T) {
	const dataLen = 4096
	blob := jtocBlob(t, make([]byte, dataLen), manyEntriesTOC(8000, dataLen))
	tocOff := int64(dataLen)
	if tocLen := int64(len(blob)) - tocOff - estargz.FooterSize; tocLen <= estargzTailSize {
		t.Fatalf("TOC of %d bytes fits in the first read; the test needs a bigger one", tocLen)
	}
	r := &countingReaderAt{r: bytes.NewReader(blob)}
	idx, err := ReadEStargz(context.Background(), r, int64(len(blob)), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Entries) < 8000 {
		t.Errorf("%d entries", len(idx.Entries))
	}
	size := int64(len(blob))
	// The second read fetches only what the first did not: from the TOC's
	// start to where the tail began.
	want := [][2]int64{{size - estargzTailSize, estargzTailSize}, {tocOff, size - estargzTailSize - tocOff}}
	if len(r.reads) != 2 || r.reads[0] != want[0] || r.reads[1] != want[1] {
		t.Errorf("reads %v, want %v", r.reads, want)
	}
}

func TestReadEStargzTOCDigest(t *testing.T) {
	blob, tocDigest := buildEStargz(t, writeTar(t, fixtureEntries()[:5]))
	ctx := context.Background()
	if _, err := ReadEStargz(ctx, bytes.NewReader(blob), int64(len(blob)), tocDigest); err != nil {
		t.Fatalf("right digest: %v", err)
	}
	wrong := digest.FromString("another TOC")
	_, err := ReadEStargz(ctx, bytes.NewReader(blob), int64(len(blob)), wrong)
	if !errors.Is(err, ErrDigestMismatch) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), wrong.String()) {
		t.Errorf("wrong digest: %v", err)
	}
	_, err = ReadEStargz(ctx, bytes.NewReader(blob), int64(len(blob)), "sha256:nothex")
	if err == nil || !strings.Contains(err.Error(), "annotation") {
		t.Errorf("malformed digest: %v", err)
	}
}

func TestReadEStargzLegacyFooter(t *testing.T) {
	modern := jtocBlob(t, []byte("data"), []*estargz.TOCEntry{{Name: "a", Type: "dir"}})
	legacy := append(bytes.Clone(modern[:len(modern)-estargz.FooterSize]), legacyFooter(4)...)
	idx, err := ReadEStargz(context.Background(), bytes.NewReader(legacy), int64(len(legacy)), "")
	if err != nil {
		t.Fatal(err)
	}
	if d := lookupPath(idx, "a"); d == nil || d.Type != TypeDir {
		t.Errorf("a = %+v", d)
	}
}

func TestReadEStargzNotEStargz(t *testing.T) {
	ctx := context.Background()
	cases := map[string][]byte{
		"tiny":       []byte("hello"),
		"plain gzip": gzipBytes(t, randomBytes(5, 1000)),
		"zeros":      make([]byte, 4096),
	}
	for name, blob := range cases {
		_, err := ReadEStargz(ctx, bytes.NewReader(blob), int64(len(blob)), "")
		if !errors.Is(err, ErrNotEStargz) || errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestReadEStargzReadErrors(t *testing.T) {
	blob := jtocBlob(t, nil, []*estargz.TOCEntry{{Name: "a", Type: "dir"}})
	// The blob claims to be longer than the bytes behind it.
	_, err := ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob))+10, "")
	if err == nil {
		t.Fatal("no error for a short blob")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ReadEStargz(ctx, bytes.NewReader(blob), int64(len(blob)), ""); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled context: %v", err)
	}
}

func TestReadEStargzRandomTOCs(t *testing.T) {
	// Whatever shape a writer picks, a TOC the reader accepts validates
	// and every chunk lies inside the blob before the TOC.
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 10 {
		entries := manyEntriesTOC(50+r.IntN(300), 1000)
		blob := jtocBlob(t, make([]byte, 1000), entries)
		idx, err := ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob)), "")
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		for _, cs := range idx.Chunks {
			for _, c := range cs {
				if c.BlobOffset+c.BlobLength > 1000 {
					t.Fatalf("case %d: chunk %+v reaches past the data into the TOC", i, c)
				}
			}
		}
	}
}

// A layer whose descriptor says where its TOC starts (Strata's eStargz
// annotation, zstd:chunked's manifest position) is indexed from one read
// of exactly its TOC and footer, large TOC or small; a hint that is wrong
// costs a read or bytes, never the index; one that is absurd is ignored.
func TestReadTailHint(t *testing.T) {
	ctx := context.Background()
	const dataLen = 4096
	gzipType := "application/vnd.oci.image.layer.v1.tar+gzip"
	large := jtocBlob(t, make([]byte, dataLen), manyEntriesTOC(8000, dataLen))
	small := jtocBlob(t, make([]byte, dataLen), manyEntriesTOC(10, dataLen))
	js, err := json.Marshal(&estargz.JTOC{Version: 1, Entries: manyEntriesTOC(30000, dataLen)})
	if err != nil {
		t.Fatal(err)
	}
	zstdBlob := zstdTOCBlob(t, make([]byte, dataLen), js)
	_, footer, err := readZstdChunkedTOCBytes(ctx, bytes.NewReader(zstdBlob), int64(len(zstdBlob)), defaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	position := fmt.Sprintf("%d:%d:%d:1", footer.tocOff, footer.tocLen, footer.jsonLen)
	hint := func(off int64) map[string]string {
		return map[string]string{AnnotationEStargzTOCOffset: strconv.FormatInt(off, 10)}
	}
	zstdType := "application/vnd.oci.image.layer.v1.tar+zstd"
	for _, tc := range []struct {
		name        string
		blob        []byte
		mediaType   string
		annotations map[string]string
		reads       func(size int64) [][2]int64
	}{
		{"large TOC, hinted", large, gzipType, hint(dataLen), func(size int64) [][2]int64 {
			return [][2]int64{{dataLen, size - dataLen}}
		}},
		{"small TOC, hinted", small, gzipType, hint(dataLen), func(size int64) [][2]int64 {
			return [][2]int64{{dataLen, size - dataLen}}
		}},
		{"zstd:chunked, manifest position", zstdBlob, zstdType,
			map[string]string{AnnotationZstdChunkedPosition: position},
			func(size int64) [][2]int64 { return [][2]int64{{dataLen, size - dataLen}} }},
		{"hint after the TOC's start: a second read", large, gzipType, hint(dataLen + 100_000), func(size int64) [][2]int64 {
			return [][2]int64{{dataLen + 100_000, size - dataLen - 100_000}, {dataLen, 100_000}}
		}},
		{"hint before the TOC's start: more bytes", large, gzipType, hint(100), func(size int64) [][2]int64 {
			return [][2]int64{{100, size - 100}}
		}},
		{"no hint", large, gzipType, nil, func(size int64) [][2]int64 {
			return [][2]int64{{size - estargzTailSize, estargzTailSize}, {dataLen, size - estargzTailSize - dataLen}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size := int64(len(tc.blob))
			r := &countingReaderAt{r: bytes.NewReader(tc.blob)}
			idx, err := Read(ctx, r, Descriptor{Size: size, MediaType: tc.mediaType, Annotations: tc.annotations})
			if err != nil {
				t.Fatal(err)
			}
			if len(idx.Entries) < 10 {
				t.Errorf("%d entries", len(idx.Entries))
			}
			if want := tc.reads(size); !slices.Equal(r.reads, want) {
				t.Errorf("reads %v, want %v", r.reads, want)
			}
		})
	}

	size := int64(len(large))
	for _, v := range []string{"", "x", "-1", strconv.FormatInt(size, 10), "99999999999999999999", "0x10"} {
		if got := tailHint(Descriptor{Size: size, Annotations: map[string]string{AnnotationEStargzTOCOffset: v}}); got != 0 {
			t.Errorf("hint %q: first read of %d bytes, want the default", v, got)
		}
	}
	huge := Descriptor{Size: 1 << 40, Annotations: hint(0)}
	if got := tailHint(huge); got != 0 {
		t.Errorf("a hint of the whole 1 TiB blob: first read of %d bytes, want the default", got)
	}
	if got := tailHint(Descriptor{Size: 1 << 40, Annotations: hint(1<<40 - maxTailHint)}); got != maxTailHint {
		t.Errorf("a hint of %d bytes: first read of %d", int64(maxTailHint), got)
	}
	if got := tailHint(Descriptor{Size: size, Annotations: map[string]string{AnnotationZstdChunkedPosition: "junk"}}); got != 0 {
		t.Errorf("a junk manifest position: first read of %d bytes, want the default", got)
	}
}
