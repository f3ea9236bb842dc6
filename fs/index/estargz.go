package index

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
)

const (
	// estargzTailSize is how much of the blob's end the first read fetches.
	// Most TOCs are smaller, so one round trip usually brings footer and
	// TOC together; a bigger TOC costs exactly one more read.
	estargzTailSize = 512 << 10

	// maxTOCJSONSize bounds the decompressed TOC JSON. MaxTOCSize bounds
	// the compressed bytes we fetch, but a small gzip stream can inflate
	// to almost any size, and the JSON is held in memory while decoded.
	maxTOCJSONSize = 4 * MaxTOCSize

	// legacyFooterSize is the footer of stargz blobs written before
	// eStargz (estargz keeps its own constant unexported).
	legacyFooterSize = 47
)

// ErrNotEStargz means the blob does not end with an eStargz (or legacy
// stargz) footer. It is not an ErrInvalid: a plain gzip layer is a fine
// layer, just not one this reader handles. Read does not return it: it
// detects the format first, and refuses formats it cannot index with
// ErrNotLazy.
var ErrNotEStargz = errors.New("not an eStargz layer")

// limits are the caps ReadEStargz enforces on untrusted input. They are a
// value rather than the bare constants so that tests can exercise every
// check with small inputs.
type limits struct {
	entries int   // Index entries, implicit directories included
	chunks  int   // chunks over all files
	tocSize int64 // compressed TOC bytes fetched from the blob
	tocJSON int64 // decompressed TOC JSON bytes
	// tail is the size of the first read, of the blob's end (0:
	// estargzTailSize); see tailHint.
	tail int64
}

var defaultLimits = limits{
	entries: MaxEntries,
	chunks:  MaxChunks,
	tocSize: MaxTOCSize,
	tocJSON: maxTOCJSONSize,
}

// ReadEStargz reads an eStargz layer's footer and TOC with at most two
// ReadAt calls on r and converts the TOC to an *Index that has passed
// Validate(size).
//
// The first read fetches the last max(FooterSize, 512 KiB) bytes of the
// blob (the whole blob if it is smaller); a second read, of the part of
// the TOC before those bytes, happens only when the TOC does not lie
// inside the first.
// The TOC's size is checked against MaxTOCSize before it is read.
//
// The TOC is decompressed, hashed and decoded in one pass, entry by entry,
// without holding its JSON. When tocDigest is not empty (the layer
// annotation "containerd.io/snapshot/stargz/toc.digest"), the TOC JSON
// must have that digest: nothing decoded from a TOC that fails the check
// is returned, and a mismatch is the error reported even when the TOC
// has another fault. Without it the TOC is trusted only as far as
// Validate goes; file contents are still verified chunk by chunk by
// DecodeChunk.
//
// Errors: ErrNotEStargz when the blob has no eStargz footer; ErrInvalid
// (and ErrDigestMismatch for a TOC digest mismatch) when the footer or
// TOC is malformed or hostile; otherwise the error of r, wrapped.
//
// The conversion rules (names, implicit directories, whiteouts,
// hardlinks, chunk ranges) are documented on tocConverter.
func ReadEStargz(ctx context.Context, r io.ReaderAt, size int64, tocDigest digest.Digest) (*Index, error) {
	return readEStargz(ctx, r, size, tocDigest, defaultLimits)
}

func readEStargz(ctx context.Context, r io.ReaderAt, size int64, want digest.Digest, lim limits) (*Index, error) {
	if want != "" {
		if err := want.Validate(); err != nil {
			return nil, fmt.Errorf("estargz: TOC digest annotation %q: %w", want, err)
		}
	}
	compressed, tocOff, err := readTOCBytes(ctx, r, size, lim)
	if err != nil {
		return nil, fmt.Errorf("estargz: %w", err)
	}
	toc, err := openTOC(bytes.NewReader(compressed), want, lim)
	if err != nil {
		return nil, fmt.Errorf("estargz: %w", err)
	}
	conv := newTOCConverter(FormatEStargz, tocOff, lim, sizeHint(toc.size, int64(len(compressed)), lim))
	err = toc.verify(decodeTOC(ctx, newJSONReader(toc), conv.addEntry))
	if err != nil {
		return nil, fmt.Errorf("estargz: %w", err)
	}
	idx, err := conv.finish()
	if err != nil {
		return nil, fmt.Errorf("estargz: %w", err)
	}
	if err := idx.Validate(size); err != nil {
		// The converter should never build an index that Validate
		// refuses; saying so makes such a bug visible rather than a "bad
		// layer".
		return nil, fmt.Errorf("estargz: converted index does not validate: %w", err)
	}
	return idx, nil
}

// readTOCBytes returns the compressed TOC (the gzip stream holding the
// stargz.index.json tar entry) and its offset in the blob.
func readTOCBytes(ctx context.Context, r io.ReaderAt, size int64, lim limits) ([]byte, int64, error) {
	if size < legacyFooterSize {
		return nil, 0, fmt.Errorf("%w: blob of %d bytes is smaller than a footer", ErrNotEStargz, size)
	}
	tail, tailStart, err := readTail(ctx, r, size, estargz.FooterSize, lim.tail)
	if err != nil {
		return nil, 0, err
	}
	tocOff, footerLen, err := parseFooter(tail)
	if err != nil {
		return nil, 0, err
	}
	tocEnd := size - footerLen
	if tocOff < 0 || tocOff >= tocEnd {
		return nil, 0, Invalidf("footer puts the TOC at offset %d, outside [0, %d)", tocOff, tocEnd)
	}
	if tocLen := tocEnd - tocOff; tocLen > lim.tocSize {
		return nil, 0, Invalidf("TOC is %d bytes, more than the limit of %d", tocLen, lim.tocSize)
	}
	compressed, err := blobRange(ctx, r, tail, tailStart, tocOff, tocEnd)
	if err != nil {
		return nil, 0, err
	}
	return compressed, tocOff, nil
}

// readTail makes the first read of a footer format: the blob's last
// max(footerSize, want) bytes, want 0 meaning 512 KiB (the whole blob if
// it is smaller), returned with the offset they start at.
func readTail(ctx context.Context, r io.ReaderAt, size, footerSize, want int64) ([]byte, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	tailLen := min(size, tailLen(footerSize, want))
	tailStart := size - tailLen
	tail := make([]byte, tailLen)
	if err := readFullAt(r, tail, tailStart); err != nil {
		return nil, 0, fmt.Errorf("reading footer: %w", err)
	}
	return tail, tailStart, nil
}

// tailLen is the first read of a footer format's blob, before the blob's
// size bounds it: want bytes (0: estargzTailSize), at least the footer.
func tailLen(footerSize, want int64) int64 {
	if want <= 0 {
		want = estargzTailSize
	}
	return max(footerSize, want)
}

// blobRange returns the blob's bytes [off, end), which end inside tail
// (the blob's bytes from tailStart): taken from tail when it holds them
// all, else with one more read, of only the part before tail.
func blobRange(ctx context.Context, r io.ReaderAt, tail []byte, tailStart, off, end int64) ([]byte, error) {
	if off >= tailStart {
		return tail[off-tailStart : end-tailStart], nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	buf := make([]byte, end-off)
	head := tailStart - off
	if err := readFullAt(r, buf[:head], off); err != nil {
		return nil, fmt.Errorf("reading TOC: %w", err)
	}
	copy(buf[head:], tail[:end-tailStart])
	return buf, nil
}

// parseFooter tries the eStargz footer, then the legacy stargz one, at
// the end of tail, and returns the TOC offset and the footer's length.
func parseFooter(tail []byte) (tocOff, footerLen int64, err error) {
	decompressors := []estargz.Decompressor{new(estargz.GzipDecompressor), new(estargz.LegacyGzipDecompressor)}
	var errs []error
	for _, d := range decompressors {
		n := d.FooterSize()
		if int64(len(tail)) < n {
			continue
		}
		footer := tail[int64(len(tail))-n:]
		if n == estargz.FooterSize && !footerExtraFits(footer) {
			errs = append(errs, errors.New("eStargz footer: gzip extra field is not 26 bytes"))
			continue
		}
		_, off, _, err := d.ParseFooter(footer)
		if err == nil {
			return off, n, nil
		}
		errs = append(errs, err)
	}
	return 0, 0, fmt.Errorf("%w: no footer: %w", ErrNotEStargz, errors.Join(errs...))
}

// footerExtraFits reports whether a 51-byte footer's gzip header declares
// an extra field of the size eStargz writes. estargz's ParseFooter trusts
// the subfield length inside the extra field and slices past the end of a
// shorter one (a panic on hostile input), so that is checked first.
func footerExtraFits(footer []byte) bool {
	const flagExtra = 1 << 2
	return len(footer) >= 12 && footer[3]&flagExtra != 0 &&
		binary.LittleEndian.Uint16(footer[10:12]) == 4+16+uint16(len("STARGZ"))
}

// tocStream reads the TOC JSON: the content of the stargz.index.json
// entry of the tar inside the TOC's gzip stream. These are the bytes the
// TOC digest is computed over (estargz's WriteTOCAndFooter hashes exactly
// them), and they are hashed as they are read. estargz's ParseTOC is not
// used because it decodes JSON straight from the decompressor, without a
// bound on how large the JSON inflates.
type tocStream struct {
	r        io.Reader // the tar entry
	size     int64     // its size, from the tar header
	sizeFrom string    // what told the size
	n        int64     // bytes read so far
	want     digest.Digest
	hash     digest.Digester // nil without want
	err      error           // the stream's own failure, if it failed
}

// openTOC reads the gzip and tar headers in front of the TOC JSON.
func openTOC(compressed io.Reader, want digest.Digest, lim limits) (*tocStream, error) {
	// The same framing as estargz's GzipDecompressor.DecompressTOC (one
	// gzip member holding a tar entry named stargz.index.json), read with
	// klauspost's faster gzip.
	zr, err := gzip.NewReader(compressed)
	if err != nil {
		return nil, fmt.Errorf("%w: TOC: malformed gzip header: %w", ErrInvalid, err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("%w: TOC: no tar header in its gzip stream: %w", ErrInvalid, err)
	}
	if h.Name != estargz.TOCTarName {
		return nil, Invalidf("TOC tar entry is named %q, not %q", h.Name, estargz.TOCTarName)
	}
	if h.Size < 0 || h.Size > lim.tocJSON {
		return nil, Invalidf("TOC JSON is more than %d bytes decompressed (header says %d)", lim.tocJSON, h.Size)
	}
	s := &tocStream{r: tr, size: h.Size, sizeFrom: "tar header", want: want}
	if want != "" {
		s.hash = want.Algorithm().Digester()
	}
	return s, nil
}

func (s *tocStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	if s.hash != nil {
		s.hash.Hash().Write(p[:n])
	}
	switch {
	case err == io.EOF && s.n != s.size:
		s.err = Invalidf("TOC JSON is %d bytes, its %s says %d", s.n, s.sizeFrom, s.size)
	case err != nil && err != io.EOF:
		s.err = fmt.Errorf("%w: decompressing TOC: %w", ErrInvalid, err)
	}
	if s.err != nil {
		return n, s.err
	}
	return n, err
}

// verify checks the TOC digest once decoding has ended with decodeErr,
// and returns the error to report. The stream failing comes first, then
// a digest mismatch, then what decoding found: a TOC that is not the one
// the annotation names is reported as such, whatever else is wrong in it,
// which takes reading it to the end when decoding stopped early.
func (s *tocStream) verify(decodeErr error) error {
	if s.hash == nil || (decodeErr != nil && !errors.Is(decodeErr, ErrInvalid)) {
		return decodeErr // no digest to check, or ctx ended
	}
	if decodeErr != nil {
		// Reading on returns the stream's failure again if it failed.
		if _, err := io.Copy(io.Discard, s); err != nil {
			return err
		}
	}
	if got := s.hash.Digest(); got != s.want {
		return fmt.Errorf("%w: %w: TOC JSON has digest %s, the layer annotation says %s",
			ErrInvalid, ErrDigestMismatch, got, s.want)
	}
	return decodeErr
}

// readFullAt reads exactly len(p) bytes at off. io.ReaderAt may return
// io.EOF together with a full read at the end of the blob; that is
// success.
func readFullAt(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%d of %d bytes at offset %d: %w", n, len(p), off, err)
}
