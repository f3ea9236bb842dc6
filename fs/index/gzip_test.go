package index

import (
	"archive/tar"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
)

// gzipFixture is tarFixture plus files that span several checkpoints: a
// random one (gzip stores it nearly as it is) and a compressible one.
func gzipFixture() []tarEntry {
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), 140_000) // 6 MiB
	return append(tarFixture(),
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "spans/random", Mode: 0o644, ModTime: fixtureTime},
			body: randomBytes(31, 5<<20+777)},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "spans/text", Mode: 0o644, ModTime: fixtureTime}, body: text},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "after", Mode: 0o600, ModTime: fixtureTime}, body: []byte("after the big ones")},
	)
}

func gzipLevel(t testing.TB, data []byte, level int) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gzipForm is a tar gzipped one way.
type gzipForm struct {
	name string
	blob []byte
}

// gzipForms gzips tarBlob at the default level, for speed, in stored
// blocks, and as two members, the second starting at split (inside a
// file's data, as pigz and concatenated streams make them).
func gzipForms(t testing.TB, tarBlob []byte, split int) []gzipForm {
	return []gzipForm{
		{"default level", gzipLevel(t, tarBlob, gzip.DefaultCompression)},
		{"best speed", gzipLevel(t, tarBlob, gzip.BestSpeed)},
		{"stored blocks", gzipLevel(t, tarBlob, gzip.NoCompression)},
		{"multi-member", append(gzipLevel(t, tarBlob[:split], gzip.DefaultCompression), gzipLevel(t, tarBlob[split:], gzip.BestSpeed)...)},
	}
}

func gzipDesc(blob []byte) Descriptor {
	return Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob)), MediaType: "application/vnd.oci.image.layer.v1.tar+gzip"}
}

// checkSpans checks what every reader of a gzip index relies on: every
// chunk is a deflate chunk inside the span of a checkpoint.
func checkGzipChunks(t *testing.T, idx *Index, size int64) {
	t.Helper()
	if idx.Format != FormatGzip || len(idx.Checkpoints) == 0 {
		t.Fatalf("format %q with %d checkpoints", idx.Format, len(idx.Checkpoints))
	}
	for ino, chunks := range idx.Chunks {
		for _, c := range chunks {
			if c.Encoding != EncodingDeflate {
				t.Errorf("inode %d: chunk %+v is not a deflate chunk", ino, c)
			}
		}
	}
	if err := idx.Validate(size); err != nil {
		t.Error(err)
	}
}

func TestReadGzip(t *testing.T) {
	entries := gzipFixture()
	tarBlob := writeTar(t, entries)
	for _, tc := range gzipForms(t, tarBlob, 3<<20+3) {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Read(context.Background(), bytes.NewReader(tc.blob), gzipDesc(tc.blob)); !errors.Is(err, ErrNotLazy) {
				t.Fatalf("without WithGzip: %v, want ErrNotLazy", err)
			}
			r := &countingReaderAt{r: bytes.NewReader(tc.blob)}
			idx, err := Read(context.Background(), r, gzipDesc(tc.blob), WithGzip())
			if err != nil {
				t.Fatal(err)
			}
			checkGzipChunks(t, idx, int64(len(tc.blob)))
			checkAgainstTar(t, idx, tc.blob, entries)
			// About one checkpoint per gzipSpan of the tar, fewer where
			// DEFLATE blocks are longer than that (the repeated text).
			if n, want := len(idx.Checkpoints), len(tarBlob)/gzipSpan; n < want/2 || n > want+3 {
				t.Errorf("%d checkpoints for a %d-byte tar, want about %d", n, len(tarBlob), want+1)
			}
			// The files that cross a checkpoint are cut there.
			big := lookupPath(idx, "spans/random")
			if pieces := (big.Size + tarChunkSize - 1) / tarChunkSize; int64(len(idx.Chunks[big.Ino])) <= pieces {
				t.Errorf("spans/random: %d chunks, no more than its %d pieces of %d bytes: not cut at a checkpoint", len(idx.Chunks[big.Ino]), pieces, tarChunkSize)
			}
			var total int64
			for _, rd := range r.reads {
				total += rd[1]
			}
			// Each byte once: what Detect reads (the tail, for an eStargz
			// footer, and the head) is not fetched again.
			if total != int64(len(tc.blob)) {
				t.Errorf("read %d bytes of a %d-byte blob: %v", total, len(tc.blob), r.reads)
			}
		})
	}
}

// TestGzipIndexStored: a gzip index saved and opened serves the same
// checkpoints and content, read span by span as a mount reads it.
func TestGzipIndexStored(t *testing.T) {
	entries := gzipFixture()
	blob := gzipLevel(t, writeTar(t, entries), gzip.DefaultCompression)
	idx, err := Read(context.Background(), bytes.NewReader(blob), gzipDesc(blob), WithGzip())
	if err != nil {
		t.Fatal(err)
	}
	db := testDB(t)
	if err := Save(db, "layer", idx, int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	l, err := Open(db, "layer")
	if err != nil {
		t.Fatal(err)
	}
	if l.Info().Checkpoints != len(idx.Checkpoints) || l.Info().Format != FormatGzip {
		t.Errorf("info %+v, want %d checkpoints", l.Info(), len(idx.Checkpoints))
	}
	for _, want := range idx.Checkpoints {
		got, err := l.Checkpoint(want.In)
		if err != nil {
			t.Fatal(err)
		}
		if got.Out != want.Out || got.Bits != want.Bits || got.CRC != want.CRC || !bytes.Equal(got.Window, want.Window) {
			t.Errorf("checkpoint at %d differs after storing", want.In)
		}
	}
	if _, err := l.Checkpoint(idx.Checkpoints[1].In + 1); !errors.Is(err, ErrInvalid) {
		t.Errorf("checkpoint where there is none: %v", err)
	}
	for _, te := range entries {
		if te.hdr.Typeflag != tar.TypeReg || len(te.body) == 0 {
			continue
		}
		e, found, err := lookupStored(l, te.hdr.Name)
		if err != nil || !found {
			t.Fatalf("%s: %v, %v", te.hdr.Name, found, err)
		}
		chunks, err := l.Chunks(e.Ino, 0, e.Size)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		for _, c := range chunks {
			cp, err := l.Checkpoint(c.BlobOffset)
			if err != nil {
				t.Fatal(err)
			}
			data, err := DecodeSpan(cp, blob[c.BlobOffset:c.BlobOffset+c.BlobLength], []Chunk{c})
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, data[0]...)
		}
		if !bytes.Equal(got, te.body) {
			t.Errorf("%s: content differs", te.hdr.Name)
		}
	}
}

func lookupStored(l *Layer, name string) (Entry, bool, error) {
	ino := RootIno
	var e Entry
	for _, part := range bytes.Split([]byte(name), []byte("/")) {
		var found bool
		var err error
		e, found, err = l.Lookup(ino, string(part))
		if err != nil || !found {
			return e, found, err
		}
		ino = e.Ino
	}
	return e, true, nil
}

// TestDecodeSpanCorrupt: a flipped byte in a span is an error, never
// bytes: the decoder's (a corrupt code) or a digest mismatch.
func TestDecodeSpanCorrupt(t *testing.T) {
	// Hex digits compress evenly, so flips spread over a span land in
	// every chunk's part of it.
	entries := []tarEntry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "hex", Mode: 0o644, ModTime: fixtureTime},
		body: []byte(hex.EncodeToString(randomBytes(41, 5<<19)))}}
	blob := gzipLevel(t, writeTar(t, entries), gzip.DefaultCompression)
	idx, err := Read(context.Background(), bytes.NewReader(blob), gzipDesc(blob), WithGzip())
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range idx.Chunks[lookupPath(idx, "hex").Ino] {
		want, err := decodeOne(idx, c, blob[c.BlobOffset:c.BlobOffset+c.BlobLength])
		if err != nil {
			t.Fatal(err)
		}
		// A flip before the chunk's bytes in the span may leave them
		// as they are; one inside them never passes.
		failed := 0
		for p := int64(0); p < c.BlobLength; p += c.BlobLength / 8 {
			span := bytes.Clone(blob[c.BlobOffset : c.BlobOffset+c.BlobLength])
			span[p] ^= 0x10
			data, err := decodeOne(idx, c, span)
			if err != nil {
				failed++
			} else if !bytes.Equal(data, want) {
				t.Fatalf("chunk %d: a flipped byte at %d of its span decoded to other bytes", i, p)
			}
		}
		if failed == 0 {
			t.Errorf("chunk %d: no flipped byte in its span was caught", i)
		}
		if data, err := decodeOne(idx, c, blob[c.BlobOffset:c.BlobOffset+c.BlobLength/10]); err == nil && c.Inner+c.Length > c.BlobLength/5 {
			t.Errorf("chunk %d: a tenth of its span decoded to %d bytes", i, len(data))
		}
	}
	// A whole blob with a flipped byte is not indexed.
	bad := bytes.Clone(blob)
	bad[len(bad)/2] ^= 0x01
	d := gzipDesc(blob) // the descriptor of the good blob
	if _, err := Read(context.Background(), bytes.NewReader(bad), d, WithGzip()); !errors.Is(err, ErrInvalid) {
		t.Errorf("corrupt blob: %v, want ErrInvalid", err)
	}
}

// TestReadGzipDigestMismatch: a good gzip that is not the layer the
// descriptor names is refused.
func TestReadGzipDigestMismatch(t *testing.T) {
	blob := gzipLevel(t, writeTar(t, tarFixture()), gzip.DefaultCompression)
	d := gzipDesc(blob)
	d.Digest = digest.FromString("another layer")
	if _, err := Read(context.Background(), bytes.NewReader(blob), d, WithGzip()); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("got %v, want ErrDigestMismatch", err)
	}
}

// TestReadGzipKeepsChunks: every chunk is handed on, with its bytes.
func TestReadGzipKeepsChunks(t *testing.T) {
	blob := gzipLevel(t, writeTar(t, gzipFixture()), gzip.DefaultCompression)
	kept := map[digest.Digest]int{}
	idx, err := Read(context.Background(), bytes.NewReader(blob), gzipDesc(blob), WithGzip(), WithKeep(func(d digest.Digest, data []byte) {
		if digest.FromBytes(data) != d {
			t.Errorf("kept %d bytes under %s, which they do not hash to", len(data), d)
		}
		kept[d]++
	}))
	if err != nil {
		t.Fatal(err)
	}
	for ino, chunks := range idx.Chunks {
		for _, c := range chunks {
			if kept[c.Digest] == 0 {
				t.Errorf("inode %d: chunk at %d not kept", ino, c.FileOffset)
			}
		}
	}
}

// TestValidateGzipIndex: Validate refuses every way a gzip index (from a
// registry, say) can be wrong about its spans.
func TestValidateGzipIndex(t *testing.T) {
	blob := gzipLevel(t, writeTar(t, gzipFixture()), gzip.DefaultCompression)
	size := int64(len(blob))
	read, err := Read(context.Background(), bytes.NewReader(blob), gzipDesc(blob), WithGzip())
	if err != nil {
		t.Fatal(err)
	}
	good := func() *Index { // a copy each case may break
		idx := *read
		idx.Entries = slices.Clone(read.Entries)
		idx.Children = cloneChildren(read.Children)
		idx.Chunks = cloneChunks(read.Chunks)
		idx.Checkpoints = slices.Clone(read.Checkpoints)
		return &idx
	}
	firstChunk := func(idx *Index) *Chunk {
		return &idx.Chunks[lookupPath(idx, "spans/random").Ino][1]
	}
	for _, tc := range []struct {
		name   string
		break_ func(idx *Index)
	}{
		{"no checkpoints", func(idx *Index) { idx.Checkpoints = nil }},
		{"checkpoints in a tar index", func(idx *Index) { idx.Format = FormatTar }},
		{"first checkpoint not at the start", func(idx *Index) { idx.Checkpoints = idx.Checkpoints[1:] }},
		{"checkpoints out of order", func(idx *Index) {
			idx.Checkpoints[1], idx.Checkpoints[2] = idx.Checkpoints[2], idx.Checkpoints[1]
		}},
		{"checkpoint beyond the blob", func(idx *Index) { idx.Checkpoints[len(idx.Checkpoints)-1].In = size }},
		{"checkpoint with a bad window", func(idx *Index) { idx.Checkpoints[1].Window = idx.Checkpoints[1].Window[:100] }},
		{"chunk where no checkpoint is", func(idx *Index) { firstChunk(idx).BlobOffset++ }},
		{"chunk past its span", func(idx *Index) { firstChunk(idx).Inner = gzipSpan * 2 }},
		{"chunk longer than its span", func(idx *Index) {
			c := firstChunk(idx)
			k, _ := slices.BinarySearchFunc(idx.Checkpoints, c.BlobOffset, func(cp Checkpoint, in int64) int { return cmp.Compare(cp.In, in) })
			c.BlobLength = spanEnd(idx.Checkpoints, k, size) - c.BlobOffset + 1
		}},
		{"raw chunk in a gzip index", func(idx *Index) { firstChunk(idx).Encoding = EncodingRaw }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idx := good()
			tc.break_(idx)
			if err := idx.Validate(size); !errors.Is(err, ErrInvalid) {
				t.Errorf("Validate = %v, want ErrInvalid", err)
			}
		})
	}
}

// TestGzipSpanLimit: a layer with no block boundary for more than
// maxGzipSpan bytes of output is not indexed.
func TestGzipSpanLimit(t *testing.T) {
	g := &gzipSpans{lim: defaultLimits}
	if err := g.add(Checkpoint{AtMember: true}); err != nil {
		t.Fatal(err)
	}
	if err := g.add(Checkpoint{In: 100, Out: maxGzipSpan + 1}); !errors.Is(err, ErrNotLazy) {
		t.Errorf("span of %d bytes: %v, want ErrNotLazy", maxGzipSpan+1, err)
	}
	if err := g.place(&Index{}, maxGzipSpan+1, 200, nil); !errors.Is(err, ErrNotLazy) {
		t.Errorf("last span of %d bytes: %v, want ErrNotLazy", maxGzipSpan+1, err)
	}
}

// TestGzipChunksFetchOnlyWhatDecodesThem: a file near the start of a span
// is fetched without the rest of it; every chunk decodes from its own
// BlobLength bytes, and those grow along the span.
func TestGzipChunksFetchOnlyWhatDecodesThem(t *testing.T) {
	var entries []tarEntry
	for i := range 300 { // 300 × 24 KiB of hex: about two spans
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("f%03d", i), Mode: 0o644, ModTime: fixtureTime},
			body: []byte(hex.EncodeToString(randomBytes(uint64(i), 12<<10)))})
	}
	blob := gzipLevel(t, writeTar(t, entries), gzip.DefaultCompression)
	idx, err := Read(context.Background(), bytes.NewReader(blob), gzipDesc(blob), WithGzip())
	if err != nil {
		t.Fatal(err)
	}
	checkGzipChunks(t, idx, int64(len(blob)))
	if len(idx.Checkpoints) < 2 {
		t.Fatalf("%d checkpoints, want at least 2", len(idx.Checkpoints))
	}
	spanLen := spanEnd(idx.Checkpoints, 0, int64(len(blob)))
	last := map[int64]int64{} // span → the BlobLength of its last chunk so far
	for i, te := range entries {
		e := lookupPath(idx, te.hdr.Name)
		for _, c := range idx.Chunks[e.Ino] {
			if c.BlobLength < last[c.BlobOffset] {
				t.Errorf("%s: blob length %d, shorter than the %d of a chunk before it in its span", te.hdr.Name, c.BlobLength, last[c.BlobOffset])
			}
			last[c.BlobOffset] = c.BlobLength
			if i%5 != 0 && i != len(entries)-1 {
				continue // decoding each from its checkpoint takes seconds
			}
			cp := idx.Checkpoints[slices.IndexFunc(idx.Checkpoints, func(cp Checkpoint) bool { return cp.In == c.BlobOffset })]
			data, err := DecodeSpan(cp, blob[c.BlobOffset:c.BlobOffset+c.BlobLength], []Chunk{c})
			if err != nil {
				t.Fatalf("%s: from its %d bytes: %v", te.hdr.Name, c.BlobLength, err)
			}
			if !bytes.Equal(data[0], te.body[c.FileOffset:c.End()]) {
				t.Fatalf("%s: content differs", te.hdr.Name)
			}
		}
		if i == 0 {
			// One decoding batch (256 KiB of output, some 130 KB of hex
			// compressed) past the file, not the span's 2 MB.
			if c := idx.Chunks[e.Ino][0]; c.BlobLength > spanLen/4 {
				t.Errorf("the first file: %d bytes to fetch, of its span's %d", c.BlobLength, spanLen)
			}
		}
	}
}
