package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// buildZstdChunked converts a tar to zstd:chunked with the real writer
// (estargz.Build with stargz-snapshotter's zstdchunked compressor) and
// returns the blob with the annotations Strata's commit puts on its
// descriptor: the writer's own and the TOC JSON digest.
func buildZstdChunked(t testing.TB, tarBytes []byte, opts ...estargz.Option) ([]byte, map[string]string) {
	t.Helper()
	ann := map[string]string{}
	c := zstdChunkedCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedFastest, Metadata: ann}, &zstdchunked.Decompressor{}}
	blob, tocDigest := buildEStargz(t, tarBytes, append(opts, estargz.WithCompression(c))...)
	ann[AnnotationTOCDigest] = tocDigest.String()
	return blob, ann
}

// zstdTOCBlob writes a zstd:chunked blob by hand: data followed by
// tocJSON, zstd-compressed, in a skippable frame, and the footer in
// another; it lets tests feed the reader TOCs no writer would produce.
func zstdTOCBlob(t testing.TB, data, tocJSON []byte) []byte {
	t.Helper()
	return zstdTOCBlobFooter(t, data, tocJSON, func([]byte) {})
}

// zstdTOCBlobFooter is zstdTOCBlob with the footer edited before it is
// written.
func zstdTOCBlobFooter(t testing.TB, data, tocJSON []byte, edit func(footer []byte)) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	return zstdTOCBlobOf(data, enc.EncodeAll(tocJSON, nil), len(tocJSON), edit)
}

// zstdTOCBlobOf is data, then the TOC compressed (jsonLen bytes of JSON)
// and the footer (edited first), each in a skippable frame.
func zstdTOCBlobOf(data, compressed []byte, jsonLen int, edit func(footer []byte)) []byte {
	var buf bytes.Buffer
	buf.Write(data)
	buf.Write(skippableFrame(compressed))
	footer := make([]byte, zstdchunked.FooterSize)
	binary.LittleEndian.PutUint64(footer, uint64(len(data)+skippableFrameHeaderSize))
	binary.LittleEndian.PutUint64(footer[8:], uint64(len(compressed)))
	binary.LittleEndian.PutUint64(footer[16:], uint64(jsonLen))
	binary.LittleEndian.PutUint64(footer[24:], zstdChunkedManifestJSON)
	copy(footer[32:], zstdChunkedMagic)
	edit(footer)
	buf.Write(skippableFrame(footer))
	return buf.Bytes()
}

func skippableFrame(b []byte) []byte {
	h := append([]byte(nil), skippableFrameMagic...)
	h = binary.LittleEndian.AppendUint32(h, uint32(len(b)))
	return append(h, b...)
}

func jzstdTOCBlob(t testing.TB, data []byte, entries []*estargz.TOCEntry) []byte {
	t.Helper()
	js, err := json.Marshal(&estargz.JTOC{Version: 1, Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	return zstdTOCBlob(t, data, js)
}

func TestReadZstdChunkedBuild(t *testing.T) {
	tarBytes := writeTar(t, fixtureEntries())
	cases := []struct {
		name       string
		opts       []estargz.Option
		wantMulti  bool
		wantShared bool
	}{
		{name: "default"},
		{name: "chunk4k", opts: []estargz.Option{estargz.WithChunkSize(4096)}, wantMulti: true},
		{name: "minchunk", opts: []estargz.Option{estargz.WithChunkSize(4096), estargz.WithMinChunkSize(64 << 10)}, wantMulti: true, wantShared: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			blob, ann := buildZstdChunked(t, tarBytes, tc.opts...)
			r := &countingReaderAt{r: bytes.NewReader(blob)}
			idx, err := ReadZstdChunked(context.Background(), r, int64(len(blob)), ann)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.reads) != 1 {
				t.Errorf("%d ReadAt calls for a small layer, want 1: %v", len(r.reads), r.reads)
			}
			if idx.Format != FormatZstdChunked {
				t.Errorf("Format = %q", idx.Format)
			}
			for _, cs := range idx.Chunks {
				for _, c := range cs {
					if c.Encoding != EncodingZstd {
						t.Fatalf("chunk %+v is not EncodingZstd", c)
					}
				}
			}
			checkAgainstTar(t, idx, blob, fixtureEntries())
			multi, shared := chunkShapes(idx)
			if multi != tc.wantMulti || shared != tc.wantShared {
				t.Errorf("multi-chunk files %v (want %v), shared streams %v (want %v)", multi, tc.wantMulti, shared, tc.wantShared)
			}
		})
	}
}

// TestReadZstdChunkedThroughTheSeam: Read detects the layer and indexes it
// with the one read ReadZstdChunked makes alone, annotated or not.
func TestReadZstdChunkedThroughTheSeam(t *testing.T) {
	blob, ann := buildZstdChunked(t, writeTar(t, fixtureEntries()))
	for name, a := range map[string]map[string]string{"annotated": ann, "bare": nil} {
		t.Run(name, func(t *testing.T) {
			r := &countingReaderAt{r: bytes.NewReader(blob)}
			d := Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob)), MediaType: mtOCIZstd, Annotations: a}
			idx, err := Read(context.Background(), r, d)
			if err != nil {
				t.Fatal(err)
			}
			if idx.Format != FormatZstdChunked || len(r.reads) != 1 {
				t.Errorf("Format %q, reads %v", idx.Format, r.reads)
			}
			checkAgainstTar(t, idx, blob, fixtureEntries())
		})
	}
}

func TestReadZstdChunkedAnnotations(t *testing.T) {
	blob, ann := buildZstdChunked(t, writeTar(t, fixtureEntries()[:5]))
	read := func(edit map[string]string) error {
		a := maps.Clone(ann)
		maps.Copy(a, edit)
		_, err := ReadZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), a)
		return err
	}
	if err := read(nil); err != nil {
		t.Fatalf("right annotations: %v", err)
	}
	wrong := digest.FromString("another TOC").String()
	for _, name := range []string{AnnotationZstdChunkedChecksum, AnnotationTOCDigest} {
		err := read(map[string]string{name: wrong})
		if !errors.Is(err, ErrDigestMismatch) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), wrong) {
			t.Errorf("wrong %s: %v", name, err)
		}
		if err := read(map[string]string{name: "sha256:nothex"}); err == nil || !strings.Contains(err.Error(), "annotation") {
			t.Errorf("malformed %s: %v", name, err)
		}
	}
	pos := ann[AnnotationZstdChunkedPosition]
	assertInvalid(t, read(map[string]string{AnnotationZstdChunkedPosition: "1" + pos}), "footer says")
	assertInvalid(t, read(map[string]string{AnnotationZstdChunkedPosition: "1:2"}), "not offset:length")
}

// TestReadZstdChunkedTampered: a changed byte in the compressed TOC is
// caught by the checksum annotation, or else by zstd's own checksum or
// the decoder; never served.
func TestReadZstdChunkedTampered(t *testing.T) {
	blob, ann := buildZstdChunked(t, writeTar(t, fixtureEntries()))
	var pos [4]int64
	if _, err := fmt.Sscanf(ann[AnnotationZstdChunkedPosition], "%d:%d:%d:%d", &pos[0], &pos[1], &pos[2], &pos[3]); err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(blob)
	tampered[pos[0]+pos[1]/2] ^= 0x55
	_, err := ReadZstdChunked(context.Background(), bytes.NewReader(tampered), int64(len(tampered)), ann)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("tampered TOC, annotated: %v", err)
	}
	_, err = ReadZstdChunked(context.Background(), bytes.NewReader(tampered), int64(len(tampered)), nil)
	assertInvalid(t, err, "TOC")

	// A changed byte in a chunk's frame is never served either.
	idx, err := ReadZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), ann)
	if err != nil {
		t.Fatal(err)
	}
	c := idx.Chunks[lookupPath(idx, "big").Ino][0]
	stored := bytes.Clone(blob[c.BlobOffset : c.BlobOffset+c.BlobLength])
	stored[len(stored)/2] ^= 0x55
	if out, err := DecodeChunk(c, stored, nil); err == nil || out != nil {
		t.Errorf("tampered chunk decoded: %v", err)
	}
}

func TestReadZstdChunkedHostileFooter(t *testing.T) {
	data := []byte("0123456789")
	toc := []byte(`{"version":1,"entries":[{"name":"a","type":"dir"}]}`)
	good, _ := buildZstdChunked(t, writeTar(t, fixtureEntries()[:5]))
	edited := func(edit func([]byte)) []byte { return zstdTOCBlobFooter(t, data, toc, edit) }
	put := func(at int, v uint64) func([]byte) {
		return func(f []byte) { binary.LittleEndian.PutUint64(f[at:], v) }
	}
	cases := []struct {
		name string
		blob []byte
		want string
	}{
		{"truncated-end", good[:len(good)-10], "no zstd:chunked footer"},
		{"truncated-start", good[100:], "not just before the footer"},
		{"tiny", []byte("GnUlInUx"), "smaller than a footer"},
		{"toc-offset-past-end", edited(put(0, 1<<40)), "not just before the footer"},
		{"toc-offset-zero", edited(put(0, 0)), "not just before the footer"},
		{"toc-length-wrong", edited(put(8, 3)), "not just before the footer"},
		{"toc-length-absurd", edited(put(8, 1<<63)), "footer field 1"},
		{"json-length-absurd", edited(put(16, 1<<40)), "more than"},
		{"json-length-short", edited(put(16, 10)), "footer says 10"},
		{"json-length-long", edited(put(16, uint64(len(toc)+1))), fmt.Sprintf("footer says %d", len(toc)+1)},
		{"manifest-type", edited(put(24, 2)), "manifest type 2"},
		{"toc-not-zstd", func() []byte {
			b := zstdTOCBlob(t, data, toc)
			b[len(data)+skippableFrameHeaderSize] ^= 0xff // the TOC frame's magic
			return b
		}(), "TOC"},
		{"toc-frame-header", func() []byte {
			b := zstdTOCBlob(t, data, toc)
			b[len(data)+4]++ // the TOC's skippable frame announces another size
			return b
		}(), "skippable frame"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadZstdChunked(context.Background(), bytes.NewReader(tc.blob), int64(len(tc.blob)), nil)
			assertInvalid(t, err, tc.want)
		})
	}
	// containers/storage's later footer (64 bytes, with a tar-split) is not
	// this reader's: not lazy, rather than invalid.
	other := bytes.Clone(good)
	binary.LittleEndian.PutUint32(other[len(other)-zstdchunked.FooterSize-4:], 64)
	_, err := ReadZstdChunked(context.Background(), bytes.NewReader(other), int64(len(other)), nil)
	if !errors.Is(err, ErrNotLazy) || errors.Is(err, ErrInvalid) {
		t.Errorf("another footer version: %v", err)
	}
}

// TestHostileZstdChunkedTOCs: every hostile TOC the eStargz reader refuses
// is refused in zstd:chunked form, for the same reason.
func TestHostileZstdChunkedTOCs(t *testing.T) {
	for _, tc := range hostileCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			blob := zstdTOCBlob(t, make([]byte, hostileDataLen), tc.toc)
			_, err := ReadZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), nil)
			assertInvalid(t, err, tc.want)
		})
	}
}

func TestReadZstdChunkedOutOfRangeChunk(t *testing.T) {
	d := digest.FromString("x").String()
	const dataLen = 100
	cases := map[string]*estargz.TOCEntry{
		// The TOC's skippable frame starts at dataLen: no chunk may start there.
		"at-toc-frame":  {Name: "f", Type: "reg", Size: 5, Offset: dataLen, ChunkDigest: d},
		"in-toc":        {Name: "f", Type: "reg", Size: 5, Offset: dataLen + skippableFrameHeaderSize + 1, ChunkDigest: d},
		"past-the-blob": {Name: "f", Type: "reg", Size: 5, Offset: 1 << 40, ChunkDigest: d},
	}
	for name, e := range cases {
		t.Run(name, func(t *testing.T) {
			blob := jzstdTOCBlob(t, make([]byte, dataLen), []*estargz.TOCEntry{e})
			_, err := ReadZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), nil)
			assertInvalid(t, err, "not before the TOC")
		})
	}
	// The last data byte is fine, and the chunk's range stops before the
	// TOC's frame.
	blob := jzstdTOCBlob(t, make([]byte, dataLen), []*estargz.TOCEntry{{Name: "f", Type: "reg", Size: 5, Offset: dataLen - 1, ChunkDigest: d}})
	idx, err := ReadZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := idx.Chunks[lookupPath(idx, "f").Ino][0]; c.BlobOffset+c.BlobLength != dataLen || c.Encoding != EncodingZstd {
		t.Errorf("chunk %+v", c)
	}
}

func TestReadZstdChunkedLimits(t *testing.T) {
	blob := jzstdTOCBlob(t, nil, []*estargz.TOCEntry{{Name: "a", Type: "dir"}, {Name: "b", Type: "fifo"}})
	read := func(lim limits) error {
		_, err := readZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), nil, lim)
		return err
	}
	assertInvalid(t, read(limits{entries: 2, chunks: 2, tocSize: MaxTOCSize, tocJSON: maxTOCJSONSize}), "more than 2 entries")
	assertInvalid(t, read(limits{entries: 100, chunks: 100, tocSize: MaxTOCSize, tocJSON: 20}), "TOC JSON is more than 20 bytes")
	assertInvalid(t, read(limits{entries: 100, chunks: 100, tocSize: 10, tocJSON: maxTOCJSONSize}), "more than the limit of 10")
}

// TestReadZstdChunkedTOCSizeBeforeRead: a footer that puts a 300 MiB TOC
// before it is refused after one read, without fetching the TOC.
func TestReadZstdChunkedTOCSizeBeforeRead(t *testing.T) {
	const size = 300 << 20
	footerBlob := zstdTOCBlobFooter(t, nil, []byte("{}"), func(f []byte) {
		const tocOff = skippableFrameHeaderSize
		binary.LittleEndian.PutUint64(f, tocOff)
		binary.LittleEndian.PutUint64(f[8:], size-tocOff-skippableFrameHeaderSize-zstdchunked.FooterSize)
	})
	tail := footerBlob[len(footerBlob)-skippableFrameHeaderSize-zstdchunked.FooterSize:]
	r := &countingReaderAt{r: sparseReaderAt{size: size, tail: tail}}
	_, err := ReadZstdChunked(context.Background(), r, size, nil)
	assertInvalid(t, err, fmt.Sprintf("more than the limit of %d", MaxTOCSize))
	if len(r.reads) != 1 {
		t.Errorf("%d reads: %v", len(r.reads), r.reads)
	}
}

func TestReadZstdChunkedLargeTOCTwoReads(t *testing.T) {
	const dataLen = 4096
	// Indented, as writers do, so that the TOC compresses to more than
	// the first read holds even with zstd.
	entries := manyEntriesTOC(30000, dataLen)
	js, err := json.Marshal(&estargz.JTOC{Version: 1, Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	blob := zstdTOCBlob(t, make([]byte, dataLen), js)
	size := int64(len(blob))
	if size-dataLen <= estargzTailSize {
		t.Fatalf("TOC of %d bytes fits in the first read; the test needs a bigger one", size-dataLen)
	}
	r := &countingReaderAt{r: bytes.NewReader(blob)}
	idx, err := ReadZstdChunked(context.Background(), r, size, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Entries) < 30000 {
		t.Errorf("%d entries", len(idx.Entries))
	}
	// The second read fetches from the TOC's frame to where the tail began.
	want := [][2]int64{{size - estargzTailSize, estargzTailSize}, {dataLen, size - estargzTailSize - dataLen}}
	if len(r.reads) != 2 || r.reads[0] != want[0] || r.reads[1] != want[1] {
		t.Errorf("reads %v, want %v", r.reads, want)
	}
}

// TestZstdChunkedDigestsMatchTheWriter: the digests the reader checks are
// those stargz-snapshotter's own zstdchunked parser computes.
func TestZstdChunkedDigestsMatchTheWriter(t *testing.T) {
	blob, ann := buildZstdChunked(t, writeTar(t, fixtureEntries()))
	compressed, f, err := readZstdChunkedTOCBytes(context.Background(), bytes.NewReader(blob), int64(len(blob)), defaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	_, theirs, err := new(zstdchunked.Decompressor).ParseTOC(bytes.NewReader(compressed))
	if err != nil {
		t.Fatal(err)
	}
	if theirs.String() != ann[AnnotationTOCDigest] || digest.FromBytes(compressed).String() != ann[AnnotationZstdChunkedChecksum] {
		t.Errorf("zstdchunked parses TOC digest %s, annotations %v", theirs, ann)
	}
	if err := f.matches(ann[AnnotationZstdChunkedPosition]); err != nil {
		t.Error(err)
	}
}

func FuzzReadZstdChunked(f *testing.F) {
	small, _ := buildZstdChunked(f, writeTar(f, fixtureEntries()[:12]))
	f.Add(small)
	f.Add(toFooterV2(f, small, func([]byte) {}))
	for _, js := range fuzzSeedTOCs(f) {
		f.Add(zstdTOCBlob(f, make([]byte, 16), js))
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		idx, err := ReadZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), nil)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotLazy) {
				t.Fatalf("error is neither ErrInvalid nor ErrNotLazy: %v", err)
			}
			return
		}
		checkParsed(t, idx, blob)
	})
}

// FuzzZstdChunkedTOCJSON mutates the TOC JSON, which FuzzReadZstdChunked
// rarely reaches through the zstd frame around it, with the annotations a
// writer would set.
func FuzzZstdChunkedTOCJSON(f *testing.F) {
	for _, js := range fuzzSeedTOCs(f) {
		f.Add(js)
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		blob := zstdTOCBlob(t, make([]byte, 64), js)
		ann := map[string]string{AnnotationTOCDigest: digest.FromBytes(js).String()}
		idx, err := ReadZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), ann)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		checkParsed(t, idx, blob)
	})
}

// TestReadZstdChunkedFileDigestOfOneChunkFile reads a TOC as
// containers/storage's writer (buildah, podman, skopeo) makes it: a file
// stored as one chunk carries only its content digest ("digest"), no
// chunkDigest. That digest verifies the chunk; a file of several chunks
// still needs a chunkDigest for each, and a file with neither is refused.
func TestReadZstdChunkedFileDigestOfOneChunkFile(t *testing.T) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("hello\n")
	data := enc.EncodeAll(content, nil)
	good := digest.FromBytes(content).String()
	read := func(e *estargz.TOCEntry) (*Index, []byte, error) {
		blob := jzstdTOCBlob(t, data, []*estargz.TOCEntry{e})
		idx, err := ReadZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), nil)
		return idx, blob, err
	}
	idx, blob, err := read(&estargz.TOCEntry{Name: "hello.txt", Type: "reg", Size: 6, Digest: good})
	if err != nil {
		t.Fatal(err)
	}
	c := idx.Chunks[lookupPath(idx, "hello.txt").Ino][0]
	if c.Digest.String() != good {
		t.Fatalf("chunk digest %s, want the file's %s", c.Digest, good)
	}
	got, err := DecodeChunk(c, blob[c.BlobOffset:c.BlobOffset+c.BlobLength], nil)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("chunk decodes to %q, %v", got, err)
	}
	// A wrong file digest is caught when the chunk is read.
	idx, blob, err = read(&estargz.TOCEntry{Name: "hello.txt", Type: "reg", Size: 6, Digest: digest.FromString("other").String()})
	if err != nil {
		t.Fatal(err)
	}
	c = idx.Chunks[lookupPath(idx, "hello.txt").Ino][0]
	if _, err := DecodeChunk(c, blob[c.BlobOffset:c.BlobOffset+c.BlobLength], nil); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("a chunk that does not match its file's digest: %v, want ErrDigestMismatch", err)
	}
	// The first of several chunks cannot use the file's digest.
	if _, _, err := read(&estargz.TOCEntry{Name: "f", Type: "reg", Size: 12, ChunkSize: 6, Digest: good}); err == nil ||
		!strings.Contains(err.Error(), "no chunkDigest") {
		t.Errorf("first of two chunks without a chunkDigest: %v", err)
	}
	if _, _, err := read(&estargz.TOCEntry{Name: "f", Type: "reg", Size: 6}); err == nil || !strings.Contains(err.Error(), "no chunkDigest") {
		t.Errorf("a file with no digest at all: %v", err)
	}
}

// toFooterV2 rewrites a blob with the 40-byte footer as containers/storage
// now writes it: a tar-split in a skippable frame after the TOC, then the
// 64-byte footer, which also says where the tar-split is. edit may change
// the footer before it is framed.
func toFooterV2(t testing.TB, blob []byte, edit func(footer []byte)) []byte {
	t.Helper()
	v1 := blob[len(blob)-zstdchunked.FooterSize:]
	body := blob[:len(blob)-skippableFrameHeaderSize-zstdchunked.FooterSize]
	split := []byte("a tar-split, which the reader does not read")
	out := append(bytes.Clone(body), skippableFrame(split)...)
	footer := make([]byte, footerSizeV2)
	copy(footer, v1[:32]) // TOC offset, lengths, manifest type
	binary.LittleEndian.PutUint64(footer[32:], uint64(len(body)+skippableFrameHeaderSize))
	binary.LittleEndian.PutUint64(footer[40:], uint64(len(split)))
	binary.LittleEndian.PutUint64(footer[48:], uint64(len(split)*3))
	copy(footer[56:], zstdChunkedMagic)
	edit(footer)
	return append(out, skippableFrame(footer)...)
}

// TestReadZstdChunkedFooterV2: containers/storage's 64-byte footer (with
// a tar-split between the TOC and the footer) gives the same index as the
// 40-byte one, and every number of it that does not fit is refused.
func TestReadZstdChunkedFooterV2(t *testing.T) {
	entries := fixtureEntries()
	v1, ann := buildZstdChunked(t, writeTar(t, entries))
	want, err := ReadZstdChunked(context.Background(), bytes.NewReader(v1), int64(len(v1)), ann)
	if err != nil {
		t.Fatal(err)
	}
	v2 := toFooterV2(t, v1, func([]byte) {})
	got, err := ReadZstdChunked(context.Background(), bytes.NewReader(v2), int64(len(v2)), ann)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(normalized(got), normalized(want)) {
		t.Error("the 64-byte footer's index differs from the 40-byte one's")
	}
	if f, err := Detect(context.Background(), bytes.NewReader(v2), Descriptor{Digest: digest.FromBytes(v2), Size: int64(len(v2)), Annotations: ann}); err != nil || f != FormatZstdChunked {
		t.Errorf("Detect = %v, %v", f, err)
	}
	checkAgainstTar(t, got, v2, entries)

	put := func(at int, v uint64) func([]byte) {
		return func(f []byte) { binary.LittleEndian.PutUint64(f[at:], v) }
	}
	for name, edit := range map[string]func([]byte){
		"tar-split offset":      put(32, 12),
		"tar-split length":      put(40, 3),
		"tar-split past footer": put(32, uint64(len(v2))),
		"toc length":            put(8, 5),
		"absurd field":          put(48, 1<<63),
	} {
		t.Run(name, func(t *testing.T) {
			b := toFooterV2(t, v1, edit)
			if _, err := ReadZstdChunked(context.Background(), bytes.NewReader(b), int64(len(b)), nil); !errors.Is(err, ErrInvalid) {
				t.Errorf("got %v, want ErrInvalid", err)
			}
		})
	}
	// The tar-split's frame header must announce its size.
	b := bytes.Clone(v2)
	splitHeader := len(v1) - skippableFrameHeaderSize - zstdchunked.FooterSize
	b[splitHeader+4]++
	if _, err := ReadZstdChunked(context.Background(), bytes.NewReader(b), int64(len(b)), nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("tar-split frame header: %v, want ErrInvalid", err)
	}
}

// TestReadZstdChunkedStreamingTOC: containers/storage (buildah push
// --compression-format zstd:chunked) writes a TOC of more than one block
// as a streaming frame, without its size, whose header declares a 32 MiB
// window; the reader takes it.
func TestReadZstdChunkedStreamingTOC(t *testing.T) {
	const dataLen = 4096
	js, err := json.Marshal(&estargz.JTOC{Version: 1, Entries: manyEntriesTOC(3000, dataLen)})
	if err != nil {
		t.Fatal(err)
	}
	var compressed bytes.Buffer
	enc, err := zstd.NewWriter(&compressed, zstd.WithWindowSize(32<<20), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enc.Write(js); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	var hdr zstd.Header // the shape this test is about
	if err := hdr.Decode(compressed.Bytes()); err != nil || hdr.HasFCS || hdr.WindowSize < 32<<20 {
		t.Fatalf("frame header %+v, %v: want no content size and a 32 MiB window", hdr, err)
	}
	blob := zstdTOCBlobOf(make([]byte, dataLen), compressed.Bytes(), len(js), func([]byte) {})
	idx, err := ReadZstdChunked(context.Background(), bytes.NewReader(blob), int64(len(blob)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Entries) < 3000 {
		t.Errorf("%d entries", len(idx.Entries))
	}
}
