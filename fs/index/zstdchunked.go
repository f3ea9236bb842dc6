package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// The annotations a zstd:chunked writer (stargz-snapshotter's zstdchunked
// compressor, Strata's commit) puts on the layer descriptor.
const (
	// AnnotationZstdChunkedChecksum is the digest of the compressed TOC
	// (the zstd frame, without its skippable-frame header).
	AnnotationZstdChunkedChecksum = zstdchunked.ManifestChecksumAnnotation
	// AnnotationZstdChunkedPosition is "offset:compressed:uncompressed:type"
	// of the TOC, as its footer says too.
	AnnotationZstdChunkedPosition = zstdchunked.ManifestPositionAnnotation
)

const (
	// skippableFrameHeaderSize is a zstd skippable frame's magic number
	// and length, in front of the TOC and of the footer.
	skippableFrameHeaderSize = 8
	// zstdChunkedManifestJSON is the footer's manifest type of a JSON TOC
	// (stargz-snapshotter calls it CRFS), the only one written.
	zstdChunkedManifestJSON = 1
	// tocMinWindow is the zstd window a TOC's decoder allows even for a
	// small TOC: a TOC's frame is written streaming, without its size,
	// and its header declares the encoder's window whatever the input:
	// up to 8 MiB from klauspost's defaults, 32 MiB from containers/storage
	// (buildah push --compression-format zstd:chunked), which refused
	// every TOC of more than one block. The decoder then takes the window
	// for the decode (32 MiB, freed after), and the footer's length, checked
	// against the limits before anything is read, bounds what it yields.
	tocMinWindow = 32 << 20
)

var skippableFrameMagic = []byte{0x50, 0x2a, 0x4d, 0x18}

// zstdChunkedFooter is what the footer says: the 40-byte one of
// stargz-snapshotter's writer and of containers/storage's first, or
// containers/storage's later 64-byte one, which also places a tar-split
// (in a skippable frame of its own, between the TOC and the footer).
type zstdChunkedFooter struct {
	tocOff     int64 // the compressed TOC, after its skippable-frame header
	tocLen     int64 // compressed
	jsonLen    int64 // decompressed
	manifestTy uint64
	// The 64-byte footer's tar-split: its offset (after its frame
	// header; 0 when there is none) and compressed length.
	splitOff, splitLen int64
	size               int64 // the footer's, 40 or 64
}

// footerSizeV2 is containers/storage's later footer: the 40-byte one's
// four numbers, the tar-split's offset, compressed and decompressed
// lengths, then the magic number.
const footerSizeV2 = 64

// ReadZstdChunked reads a zstd:chunked layer's footer and TOC with at most
// two ReadAt calls on r, as ReadEStargz does (the first read is the
// blob's last 512 KiB), and converts the TOC, which has eStargz's schema,
// to an *Index that has passed Validate(size). Its chunks are
// EncodingZstd: each a zstd frame starting at its BlobOffset.
//
// annotations are the layer descriptor's. When present, the TOC must
// match each of them: AnnotationZstdChunkedChecksum (the compressed TOC's
// digest, checked before anything is decompressed),
// AnnotationZstdChunkedPosition (the footer's numbers) and
// AnnotationTOCDigest (the TOC JSON's digest, as for eStargz); a digest
// mismatch wraps ErrDigestMismatch, and is the error reported even when
// the TOC has another fault. The footer's sizes are checked against
// MaxTOCSize and the JSON limit before anything is read or decompressed,
// and the decompressed TOC must have the size the footer says.
//
// Both footers are read: the 40-byte one of stargz-snapshotter's writer
// (and of containers/storage's first), and containers/storage's later
// 64-byte one, whose tar-split (a skippable frame between the TOC and the
// footer) is checked to be where it says and otherwise not read.
//
// Errors: ErrNotLazy for a footer of another size; ErrInvalid (and
// ErrDigestMismatch) for a malformed or hostile footer or TOC; otherwise
// r's error, wrapped.
func ReadZstdChunked(ctx context.Context, r io.ReaderAt, size int64, annotations map[string]string) (*Index, error) {
	return readZstdChunked(ctx, r, size, annotations, defaultLimits)
}

func readZstdChunked(ctx context.Context, r io.ReaderAt, size int64, annotations map[string]string, lim limits) (*Index, error) {
	idx, err := readZstdChunkedTOC(ctx, r, size, annotations, lim)
	if err != nil {
		return nil, fmt.Errorf("zstd:chunked: %w", err)
	}
	return idx, nil
}

func readZstdChunkedTOC(ctx context.Context, r io.ReaderAt, size int64, annotations map[string]string, lim limits) (*Index, error) {
	checksum, jsonDigest, err := zstdChunkedDigests(annotations)
	if err != nil {
		return nil, err
	}
	compressed, f, err := readZstdChunkedTOCBytes(ctx, r, size, lim)
	if err != nil {
		return nil, err
	}
	if err := f.matches(annotations[AnnotationZstdChunkedPosition]); err != nil {
		return nil, err
	}
	if checksum != "" {
		if got := checksum.Algorithm().FromBytes(compressed); got != checksum {
			return nil, fmt.Errorf("%w: %w: compressed TOC has digest %s, the layer annotation %s says %s",
				ErrInvalid, ErrDigestMismatch, got, AnnotationZstdChunkedChecksum, checksum)
		}
	}
	zr, err := zstd.NewReader(bytes.NewReader(compressed),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(uint64(min(max(f.jsonLen, tocMinWindow), zstd.MaxWindowSize))))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	defer zr.Close()
	// One byte more than the footer says, so that a longer TOC is caught.
	toc := &tocStream{r: io.LimitReader(zr, f.jsonLen+1), size: f.jsonLen, sizeFrom: "footer", want: jsonDigest}
	if jsonDigest != "" {
		toc.hash = jsonDigest.Algorithm().Digester()
	}
	dataEnd := f.tocOff - skippableFrameHeaderSize
	conv := newTOCConverter(FormatZstdChunked, dataEnd, lim, sizeHint(f.jsonLen, f.tocLen, lim))
	if err := toc.verify(decodeTOC(ctx, newJSONReader(toc), conv.addEntry)); err != nil {
		return nil, err
	}
	idx, err := conv.finish()
	if err != nil {
		return nil, err
	}
	if err := idx.Validate(size); err != nil {
		return nil, fmt.Errorf("converted index does not validate: %w", err)
	}
	return idx, nil
}

// zstdChunkedDigests parses the two digest annotations, either of which
// may be missing.
func zstdChunkedDigests(annotations map[string]string) (checksum, jsonDigest digest.Digest, err error) {
	checksum = digest.Digest(annotations[AnnotationZstdChunkedChecksum])
	jsonDigest = digest.Digest(annotations[AnnotationTOCDigest])
	for name, d := range map[string]digest.Digest{AnnotationZstdChunkedChecksum: checksum, AnnotationTOCDigest: jsonDigest} {
		if d == "" {
			continue
		}
		if err := d.Validate(); err != nil {
			return "", "", fmt.Errorf("annotation %s %q: %w", name, d, err)
		}
	}
	return checksum, jsonDigest, nil
}

// readZstdChunkedTOCBytes reads the footer and returns the compressed TOC
// (its frame header checked and cut off) and what the footer says.
func readZstdChunkedTOCBytes(ctx context.Context, r io.ReaderAt, size int64, lim limits) ([]byte, zstdChunkedFooter, error) {
	const framedV1 = skippableFrameHeaderSize + zstdchunked.FooterSize
	const framedV2 = skippableFrameHeaderSize + footerSizeV2
	if size < framedV1+skippableFrameHeaderSize {
		return nil, zstdChunkedFooter{}, Invalidf("blob of %d bytes is smaller than a footer", size)
	}
	tail, tailStart, err := readTail(ctx, r, size, framedV2, lim.tail)
	if err != nil {
		return nil, zstdChunkedFooter{}, err
	}
	framed := tail[int64(len(tail))-framedV1:]
	if n := int64(len(tail)); n >= framedV2 && isSkippableFrame(tail[n-framedV2:n-footerSizeV2], footerSizeV2) {
		framed = tail[n-framedV2:]
	}
	f, err := parseZstdChunkedFooter(framed)
	if err != nil {
		return nil, f, err
	}
	footerStart := size - skippableFrameHeaderSize - f.size
	tocEnd := footerStart
	if f.splitOff > 0 {
		// The tar-split's frame sits between the TOC and the footer.
		if f.splitLen <= 0 || f.splitOff > footerStart || f.splitOff+f.splitLen != footerStart {
			return nil, f, Invalidf("footer puts a tar-split of %d bytes at offset %d, not just before the footer at %d", f.splitLen, f.splitOff, footerStart)
		}
		tocEnd = f.splitOff - skippableFrameHeaderSize
	}
	if f.tocOff < skippableFrameHeaderSize || f.tocLen <= 0 || f.tocOff > tocEnd || f.tocOff+f.tocLen != tocEnd {
		return nil, f, Invalidf("footer puts a TOC of %d bytes at offset %d, not just before the footer at %d", f.tocLen, f.tocOff, tocEnd)
	}
	if f.tocLen > lim.tocSize {
		return nil, f, Invalidf("TOC is %d bytes, more than the limit of %d", f.tocLen, lim.tocSize)
	}
	if f.jsonLen < 0 || f.jsonLen > lim.tocJSON {
		return nil, f, Invalidf("TOC JSON is more than %d bytes decompressed (footer says %d)", lim.tocJSON, f.jsonLen)
	}
	end := tocEnd
	if f.splitOff > 0 {
		end = f.splitOff // the tar-split's frame header too, checked below
	}
	b, err := blobRange(ctx, r, tail, tailStart, f.tocOff-skippableFrameHeaderSize, end)
	if err != nil {
		return nil, f, err
	}
	if !isSkippableFrame(b[:skippableFrameHeaderSize], f.tocLen) {
		return nil, f, Invalidf("TOC at offset %d is not in a skippable frame of its size", f.tocOff)
	}
	if f.splitOff > 0 && !isSkippableFrame(b[int64(len(b))-skippableFrameHeaderSize:], f.splitLen) {
		return nil, f, Invalidf("tar-split at offset %d is not in a skippable frame of its size", f.splitOff)
	}
	return b[skippableFrameHeaderSize : skippableFrameHeaderSize+f.tocLen], f, nil
}

// parseZstdChunkedFooter reads the footer in its skippable frame (framed:
// the frame header, then 40 or 64 bytes): the TOC's offset, compressed
// and decompressed sizes and manifest type, the 64-byte footer's tar-split
// offset and sizes, then the magic number (zstdchunked.Decompressor.ParseFooter
// reads the 40-byte one, without the checks).
func parseZstdChunkedFooter(framed []byte) (zstdChunkedFooter, error) {
	p := framed[skippableFrameHeaderSize:]
	f := zstdChunkedFooter{size: int64(len(p))}
	if !bytes.Equal(p[len(p)-len(zstdChunkedMagic):], zstdChunkedMagic) {
		return f, Invalidf("no zstd:chunked footer")
	}
	if !isSkippableFrame(framed[:skippableFrameHeaderSize], f.size) {
		return f, fmt.Errorf("%w: a zstd:chunked footer of a size this reader does not know (40 or 64 bytes)", ErrNotLazy)
	}
	nums := []*int64{&f.tocOff, &f.tocLen, &f.jsonLen}
	if f.size == footerSizeV2 {
		var splitJSON int64
		nums = append(nums, nil, &f.splitOff, &f.splitLen, &splitJSON)
	}
	for i, n := range nums {
		v := binary.LittleEndian.Uint64(p[8*i:])
		if n == nil {
			continue // the manifest type, below
		}
		if v > 1<<62 {
			return f, Invalidf("footer field %d is %d", i, v)
		}
		*n = int64(v)
	}
	f.manifestTy = binary.LittleEndian.Uint64(p[24:])
	if f.manifestTy != zstdChunkedManifestJSON {
		return f, Invalidf("footer names manifest type %d, only %d (JSON) is known", f.manifestTy, zstdChunkedManifestJSON)
	}
	return f, nil
}

// isSkippableFrame reports whether header is a zstd skippable frame's
// header (any of its 16 magic numbers) announcing n bytes.
func isSkippableFrame(header []byte, n int64) bool {
	return header[0]&0xf0 == skippableFrameMagic[0] && bytes.Equal(header[1:4], skippableFrameMagic[1:]) &&
		int64(binary.LittleEndian.Uint32(header[4:8])) == n
}

// matches checks the position annotation ("offset:compressed:
// uncompressed:type") against the footer, when there is one.
func (f zstdChunkedFooter) matches(position string) error {
	if position == "" {
		return nil
	}
	parts := strings.Split(position, ":")
	want := []uint64{uint64(f.tocOff), uint64(f.tocLen), uint64(f.jsonLen), f.manifestTy}
	if len(parts) != len(want) {
		return Invalidf("annotation %s %q is not offset:length:uncompressed:type", AnnotationZstdChunkedPosition, position)
	}
	for i, s := range parts {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return Invalidf("annotation %s %q: %v", AnnotationZstdChunkedPosition, position, err)
		}
		if n != want[i] {
			return Invalidf("annotation %s %q, the footer says %d:%d:%d:%d",
				AnnotationZstdChunkedPosition, position, want[0], want[1], want[2], want[3])
		}
	}
	return nil
}
