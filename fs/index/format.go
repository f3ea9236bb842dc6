package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/opencontainers/go-digest"
)

// Format names a layer format, as Detect tells them apart and as
// Index.Format records which reader made an index.
type Format string

const (
	// FormatEStargz is gzip of one stream per file chunk with a TOC at the
	// end (stargz-snapshotter's eStargz, and the legacy stargz before it).
	FormatEStargz Format = "estargz"
	// FormatZstdChunked is zstd of one frame per file chunk with a TOC in
	// a skippable frame at the end (containers/storage's zstd:chunked).
	FormatZstdChunked Format = "zstd:chunked"
	// FormatTar is an uncompressed tar.
	FormatTar Format = "tar"
	// FormatGzip is a gzip-compressed tar without a TOC.
	FormatGzip Format = "gzip"
	// FormatZstd is a zstd-compressed tar without a TOC.
	FormatZstd Format = "zstd"
	// FormatUnknown is a blob that is none of the above.
	FormatUnknown Format = "unknown"
)

// Lazy reports whether Read indexes layers of the format, so that they
// are served lazily; Read refuses the others with ErrNotLazy.
func (f Format) Lazy() bool {
	return f == FormatEStargz || f == FormatZstdChunked || f == FormatTar
}

// AnnotationTOCDigest pins an eStargz layer's TOC in its descriptor: the
// digest of the TOC JSON, which ReadEStargz checks.
const AnnotationTOCDigest = estargz.TOCJSONDigestAnnotation

// AnnotationEStargzTOCOffset is where an eStargz layer's TOC starts in
// its blob, in decimal: Strata's writers (`strata convert`, `strata
// commit`, `strata build`) put it on the layers they write, so that the
// first read of a layer whose TOC is larger than 512 KiB brings all of it
// (one round trip, not two) and that of a smaller TOC no more than it. It
// is a hint for the size of that read only: the footer still says where
// the TOC is. zstd:chunked layers carry the same in their manifest
// position annotation.
const AnnotationEStargzTOCOffset = "io.github.stratafs.estargz.toc-offset"

// maxTailHint bounds the first read a descriptor's hint makes: a larger
// TOC (or a hostile hint) is read as one without a hint, 512 KiB first.
const maxTailHint = 32 << 20

// tailHint is the size of the first read of layer d's end: from where d's
// annotations say its TOC starts (AnnotationEStargzTOCOffset, or a
// zstd:chunked manifest position, less its frame header) to the end of the
// blob; 0 (512 KiB) when they say nothing usable or more than maxTailHint.
func tailHint(d Descriptor) int64 {
	off := int64(-1)
	if v, ok := d.Annotations[AnnotationEStargzTOCOffset]; ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			off = n
		}
	} else if v, ok := d.Annotations[AnnotationZstdChunkedPosition]; ok {
		first, _, _ := strings.Cut(v, ":")
		if n, err := strconv.ParseInt(first, 10, 64); err == nil {
			off = n - skippableFrameHeaderSize
		}
	}
	if off < 0 || off >= d.Size || d.Size-off > maxTailHint {
		return 0
	}
	return d.Size - off
}

// ErrNotLazy means that a layer is fine but of a format Strata cannot
// index, so it cannot be mounted lazily: it has to be fetched whole (or
// converted). It is not an ErrInvalid, and callers fall back on it: the
// containerd snapshotter lets containerd unpack such a layer.
var ErrNotLazy = errors.New("layer cannot be mounted lazily")

// ErrSparseFile is wrapped, with ErrNotLazy, by the refusal of a tar entry
// that is a GNU or PAX sparse file: neither a lazy reader nor a converter
// to eStargz takes one.
var ErrSparseFile = errors.New("a sparse file, whose data is not one range of the layer")

// Descriptor is what a layer's descriptor says about its blob.
type Descriptor struct {
	Digest      digest.Digest
	Size        int64
	MediaType   string
	Annotations map[string]string
}

const (
	// headSize is how much of the blob's start Detect reads: one tar
	// block, which holds every magic number it looks for.
	headSize = 512
	// tarMagicOffset is where a ustar (POSIX or GNU) header has "ustar".
	tarMagicOffset = 257
)

var (
	gzipMagic        = []byte{0x1f, 0x8b}
	zstdMagic        = []byte{0x28, 0xb5, 0x2f, 0xfd}
	zstdChunkedMagic = []byte("GnUlInUx") // the last bytes of a zstd:chunked footer
)

// Detect names the format of the layer that d describes, whose blob r
// reads: the media type and annotations say which format to look for
// first, and the blob's bytes decide. A footer format (eStargz, zstd:chunked) is looked for in
// the blob's last 512 KiB (or as much as its annotations say its TOC
// takes: see AnnotationEStargzTOCOffset) when the descriptor points to
// one, which is the read its reader starts with; otherwise the first 512 bytes are read for
// a magic number (gzip 1f 8b, zstd 28 b5 2f fd, "ustar" at offset 257 or
// a valid tar header checksum), and a compressed blob's end for a footer.
// Errors are r's, wrapped.
func Detect(ctx context.Context, r io.ReaderAt, d Descriptor) (Format, error) {
	return newProbe(r, d.Size, tailHint(d)).detect(ctx, d)
}

// CheckDescriptor refuses a descriptor of a layer indexed before whose
// size or TOC digest annotation says otherwise than the descriptor the
// index was made and checked with (info): a malformed image, refused as a
// mount of it would be where the layer is new.
func CheckDescriptor(info Info, d Descriptor) error {
	// A layer fetched whole is served from its tar, whose size BlobSize is.
	if info.BlobSize != 0 && info.Unpacked == "" && d.Size != info.BlobSize {
		return fmt.Errorf("%w: layer %s: the descriptor gives %d bytes, the blob has %d", ErrInvalid, d.Digest, d.Size, info.BlobSize)
	}
	if want := digest.Digest(d.Annotations[AnnotationTOCDigest]); want != "" && info.TOCDigest != "" && want != info.TOCDigest {
		return fmt.Errorf("%w: layer %s: the descriptor's TOC digest %s is not its TOC's, %s", ErrDigestMismatch, d.Digest, want, info.TOCDigest)
	}
	return nil
}

// Read detects the format of the layer d describes (see Detect) and
// indexes its blob, which r reads, with that format's reader: ReadEStargz,
// ReadZstdChunked (given the descriptor's annotations), ReadTar, or
// ReadGzip when asked (WithGzip). The index has passed Validate(d.Size). A layer of another format is
// refused with an error wrapping ErrNotLazy that names the format;
// malformed or hostile input wraps ErrInvalid (and ErrDigestMismatch for
// bytes that do not match the descriptor); otherwise the error is r's.
//
// The bytes Detect reads are not read again: the format reader is given
// them from memory.
func Read(ctx context.Context, r io.ReaderAt, d Descriptor, opts ...ReadOption) (*Index, error) {
	var o readOptions
	for _, opt := range opts {
		opt(&o)
	}
	lim := defaultLimits
	lim.tail = tailHint(d)
	p := newProbe(r, d.Size, lim.tail)
	f, err := p.detect(ctx, d)
	if err != nil {
		return nil, err
	}
	switch f {
	case FormatEStargz, FormatZstdChunked:
		var idx *Index
		if f == FormatEStargz {
			idx, err = readEStargz(ctx, p, d.Size, digest.Digest(d.Annotations[AnnotationTOCDigest]), lim)
		} else {
			idx, err = readZstdChunked(ctx, p, d.Size, d.Annotations, lim)
		}
		if err == nil {
			// Checked against it by the reader.
			idx.TOCDigest = digest.Digest(d.Annotations[AnnotationTOCDigest])
		}
		return idx, err
	case FormatTar:
		return readTar(ctx, p, d.Size, d.Digest, defaultLimits, o.keep)
	case FormatGzip:
		if o.gzip {
			return readGzip(ctx, p, d.Size, d.Digest, defaultLimits, o)
		}
	}
	return nil, fmt.Errorf("%w: a %s layer (media type %s), which has no lazy reader yet", ErrNotLazy, f, d.MediaType)
}

// ReadOption tunes Read.
type ReadOption func(*readOptions)

type readOptions struct {
	keep   func(digest.Digest, []byte)
	gzip   bool
	listed func(name string) bool
	// markGap, when set, replaces gzipMarkGap (tests).
	markGap int64
}

// WithListed makes a plain gzip layer's index (see ReadGzip) hold a
// checkpoint at the last block boundary before the data of each regular
// file whose name (relative to the layer's root, as in the index) listed
// reports, unless a checkpoint is already less than gzipMarkGap bytes of
// the tar before it: a read of such a file fetches and decodes from
// there, not from up to a span before. It is meant for the files a
// workload reads first (a prefetch list): each costs the index a window.
// Other formats ignore it.
func WithListed(listed func(name string) bool) ReadOption {
	return func(o *readOptions) { o.listed = listed }
}

// WithGzip lets Read index a plain gzip layer (see ReadGzip), which
// reads all of it; without it such a layer is refused with ErrNotLazy,
// for the caller to leave it to whoever unpacks it whole.
func WithGzip() ReadOption {
	return func(o *readOptions) { o.gzip = true }
}

// WithKeep hands keep every chunk of file data that indexing reads whole
// anyway (an uncompressed tar's: it has no table of contents, so all of
// it is read), with the sha256 of its bytes, which is the chunk's digest
// in the index. keep must copy what it keeps: data is only valid during
// the call. A chunk is handed on before the layer's digest is checked at
// the end; it is named by its own content digest, so whatever keeps it
// keeps correct bytes, used or not.
func WithKeep(keep func(d digest.Digest, data []byte)) ReadOption {
	return func(o *readOptions) { o.keep = keep }
}

// probe reads a blob for Detect, keeping what it read so that the format
// reader gets those bytes again from memory.
type probe struct {
	r       io.ReaderAt
	size    int64
	head    []byte // the first bytes, once read
	tail    []byte // the last bytes, once read
	tailOff int64
	// tailSize is what to read of the end (0: estargzTailSize).
	tailSize int64
}

func newProbe(r io.ReaderAt, size, tail int64) *probe {
	return &probe{r: r, size: size, tailSize: tail}
}

// ReadAt serves what the probe has read from memory and the rest from the
// blob: a read that starts in the head or ends in the tail fetches only
// the part between them. A format reader that reads the whole blob in
// order (plain gzip and tar) so fetches no byte the probe already has.
func (p *probe) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 || len(b) == 0 {
		return p.r.ReadAt(b, off)
	}
	lo, hi := off, off+int64(len(b)) // what is left to fetch
	if p.head != nil && lo < int64(len(p.head)) {
		lo += int64(copy(b, p.head[lo:]))
	}
	if tailEnd := p.tailOff + int64(len(p.tail)); p.tail != nil && hi > p.tailOff && hi <= tailEnd && hi > lo {
		from := max(lo, p.tailOff)
		copy(b[from-off:], p.tail[from-p.tailOff:hi-p.tailOff])
		hi = from
	}
	if lo < hi {
		n, err := p.r.ReadAt(b[lo-off:hi-off], lo)
		if n < int(hi-lo) {
			return int(lo-off) + n, err
		}
	}
	return len(b), nil
}

func (p *probe) detect(ctx context.Context, d Descriptor) (Format, error) {
	if p.size < 0 {
		return "", Invalidf("negative blob size %d", p.size)
	}
	hint := mediaTypeCompression(d.MediaType)
	_, estargzAnnotated := d.Annotations[AnnotationTOCDigest]
	_, zstdChunkedAnnotated := d.Annotations[zstdchunked.ManifestPositionAnnotation]
	if estargzAnnotated || zstdChunkedAnnotated || hint == FormatGzip || hint == FormatZstd {
		if f, err := p.footerFormat(ctx); f != "" || err != nil {
			return f, err
		}
	}
	head, err := p.readHead(ctx)
	if err != nil {
		return "", err
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic), IsZstd(head):
		if f, err := p.footerFormat(ctx); f != "" || err != nil {
			return f, err
		}
		if head[0] == gzipMagic[0] {
			return FormatGzip, nil
		}
		return FormatZstd, nil
	case looksLikeTar(head, hint == FormatTar):
		return FormatTar, nil
	}
	return FormatUnknown, nil
}

// IsZstd says whether head, a blob's first bytes, begins a zstd stream: a
// frame, or a skippable frame (RFC 8878: magic 0x184D2A5?, little
// endian), with which pzstd and others begin theirs.
func IsZstd(head []byte) bool {
	return bytes.HasPrefix(head, zstdMagic) ||
		len(head) >= 4 && binary.LittleEndian.Uint32(head)&0xFFFFFFF0 == 0x184D2A50
}

// mediaTypeCompression says what a layer media type claims: FormatGzip,
// FormatZstd or FormatTar (OCI, Docker, non-distributable and foreign
// variants alike), or "" for a media type it does not know.
func mediaTypeCompression(mt string) Format {
	switch {
	case strings.HasSuffix(mt, "+gzip"), strings.HasSuffix(mt, ".tar.gzip"):
		return FormatGzip
	case strings.HasSuffix(mt, "+zstd"):
		return FormatZstd
	case strings.HasSuffix(mt, ".tar"):
		return FormatTar
	}
	return ""
}

// footerFormat reads the blob's tail (the first read ReadEStargz and
// ReadZstdChunked make, which they then find in memory) and returns the format whose footer
// ends it, or "" for none.
func (p *probe) footerFormat(ctx context.Context) (Format, error) {
	if p.tail == nil {
		n := min(p.size, tailLen(estargz.FooterSize, p.tailSize))
		tail := make([]byte, n)
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if err := readFullAt(p.r, tail, p.size-n); err != nil {
			return "", fmt.Errorf("reading the layer's end: %w", err)
		}
		p.tail, p.tailOff = tail, p.size-n
	}
	if _, _, err := parseFooter(p.tail); err == nil {
		return FormatEStargz, nil
	}
	if bytes.HasSuffix(p.tail, zstdChunkedMagic) {
		return FormatZstdChunked, nil
	}
	return "", nil
}

// readHead returns the blob's first bytes, from the tail when it holds
// them.
func (p *probe) readHead(ctx context.Context) ([]byte, error) {
	if p.head != nil {
		return p.head, nil
	}
	n := min(p.size, headSize)
	if p.tail != nil && p.tailOff == 0 {
		p.head = p.tail[:n]
		return p.head, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	head := make([]byte, n)
	if err := readFullAt(p.r, head, 0); err != nil {
		return nil, fmt.Errorf("reading the layer's start: %w", err)
	}
	p.head = head
	return head, nil
}

// looksLikeTar reports whether a blob starting with head is a tar: a
// ustar magic number, or a first block whose header checksum is right
// (pre-POSIX tars have no magic). An empty archive (zero blocks, or no
// bytes at all) is one only when the media type says tar.
func looksLikeTar(head []byte, saysTar bool) bool {
	if len(head) < headSize {
		return saysTar && len(head) == 0
	}
	if bytes.HasPrefix(head[tarMagicOffset:], []byte("ustar")) {
		return true
	}
	if allZero(head) {
		return saysTar
	}
	return tarChecksumOK(head)
}

// tarChecksumOK checks a header block's checksum: the sum of its bytes
// with the checksum field (148..156) counted as spaces, stored in octal.
func tarChecksumOK(block []byte) bool {
	field := strings.Trim(string(block[148:156]), " \x00")
	if field == "" {
		return false
	}
	var want int64
	for _, c := range field {
		if c < '0' || c > '7' {
			return false
		}
		want = want*8 + int64(c-'0')
	}
	var sum int64
	for i, c := range block[:headSize] {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
	}
	return sum == want
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
