package index

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index/inflate"
)

// gzipSpan is how many bytes of the tar a plain gzip layer's checkpoints
// are apart, at least (the next block boundary after it): what one read
// of a file not yet cached decodes at most, and about what it fetches
// times the compression ratio. zran.c, SOCI and nydus use 1 to 4 MiB.
const gzipSpan = 1 << 20

// maxGzipSpan bounds a span's output. An encoder that writes blocks
// longer than this leaves checkpoints too far apart for a read to decode
// a span on its own; such a layer is not indexed (ErrNotLazy) and is
// fetched whole instead.
const maxGzipSpan = MaxChunkLength

// ReadGzip indexes a plain gzip layer (a gzip-compressed tar without a
// TOC) of size bytes that r reads, whose digest is layerDigest, and
// returns an *Index that has passed Validate(size).
//
// A plain gzip layer can be read from its start only, so the whole blob
// is read once, in order, hashed as it goes, and decompressed by package
// inflate, which records a Checkpoint at the first DEFLATE block boundary
// after every gzipSpan bytes of output. The tar is indexed as ReadTar
// does, with two differences: a file's data is also cut where a span
// ends, so that every chunk lies inside one span, and each chunk then
// starts at its span's checkpoint's byte, with the chunk's place in the
// span's output (Inner), EncodingDeflate, and the sha256 of its own
// bytes. Its BlobLength runs only as far as the compressed bytes that
// decode it (what the decoder had consumed when its output passed the
// chunk's end, noted every progressEvery bytes of output), at most to
// the next checkpoint's byte: a file near the start of a span is read
// without the rest of the span. A later read fetches that much by range,
// resumes decoding at the checkpoint, and checks each chunk it takes.
//
// keep, when not nil, is handed every chunk's data (see WithKeep): the
// layer is decompressed whole anyway.
//
// Errors are ReadTar's, and ErrNotLazy for a layer whose blocks are too
// long to checkpoint (see maxGzipSpan) or that holds sparse files.
func ReadGzip(ctx context.Context, r io.ReaderAt, size int64, layerDigest digest.Digest) (*Index, error) {
	return readGzip(ctx, r, size, layerDigest, defaultLimits, readOptions{})
}

func readGzip(ctx context.Context, r io.ReaderAt, size int64, want digest.Digest, lim limits, o readOptions) (*Index, error) {
	if err := want.Validate(); err != nil {
		return nil, fmt.Errorf("gzip: layer digest %q: %w", want, err)
	}
	s := newBlobStream(ctx, r, size, want.Algorithm().Hash())
	defer s.close()
	sp := &gzipSpans{lim: lim, markGap: gzipMarkGap}
	if o.markGap > 0 {
		sp.markGap = o.markGap
	}
	zr, err := inflate.NewReader(s, gzipSpan, sp.add)
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", sp.streamErr(s, err))
	}
	var decoded []progress
	zr.OnProgress(progressEvery, func(out, in int64) { decoded = append(decoded, progress{out, in}) })
	out := &countingReader{r: zr}
	t := newTarIndexer(ctx, FormatGzip, lim, s, out, sp.maxOut(size), o.keep)
	t.pos = func() int64 { return out.n }
	t.cut = sp.cut
	if o.listed != nil {
		// As far back as entries wait (see holdBack), and the decoder's
		// lead over the tar reader.
		zr.KeepBoundaries(holdReach + histLead)
		t.held = &holdBack{listed: o.listed, mark: func(lo, at int64) (int64, bool) { return sp.mark(zr, lo, at) }}
	}
	if err := t.readAll(); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	// What follows the tar's end (its zero blocks, padding) is decoded
	// too: every member's CRC is checked, and the whole blob hashed.
	if _, err := io.Copy(io.Discard, out); err != nil {
		return nil, fmt.Errorf("gzip: %w", sp.streamErr(s, err))
	}
	if err := s.finish(); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	if got := digest.NewDigest(want.Algorithm(), s.hash); got != want {
		return nil, fmt.Errorf("gzip: %w: %w: the layer has digest %s, its descriptor says %s",
			ErrInvalid, ErrDigestMismatch, got, want)
	}
	idx := t.b.finish()
	if err := sp.place(idx, out.n, size, decoded); err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	if err := idx.Validate(size); err != nil {
		return nil, fmt.Errorf("gzip: index does not validate: %w", err)
	}
	return idx, nil
}

// gzipSpans collects a gzip layer's checkpoints while it is decoded and
// then maps the tar's chunks onto the spans between them.
type gzipSpans struct {
	lim     limits
	markGap int64 // see mark
	cps     []Checkpoint
	err     error // a limit the checkpoints broke
}

// add takes the decoder's next checkpoint (it owns the window).
func (g *gzipSpans) add(cp Checkpoint) error {
	if len(g.cps) >= g.lim.chunks {
		g.err = Invalidf("more than %d checkpoints", g.lim.chunks)
		return g.err
	}
	if n := len(g.cps); n > 0 && cp.Out-g.cps[n-1].Out > maxGzipSpan {
		g.err = fmt.Errorf("%w: no DEFLATE block boundary for %d bytes of output (more than %d), so its spans cannot be decoded on their own",
			ErrNotLazy, cp.Out-g.cps[n-1].Out, maxGzipSpan)
		return g.err
	}
	g.cps = append(g.cps, cp)
	return nil
}

// mark makes a checkpoint of the last block boundary in (lo, at] that the
// decoder kept, where a listed file's data starts at tar offset at, if
// that is more than markGap past the checkpoint before at.
func (g *gzipSpans) mark(zr *inflate.Reader, lo, at int64) (int64, bool) {
	i, found := slices.BinarySearchFunc(g.cps, at, func(cp Checkpoint, off int64) int { return cmp.Compare(cp.Out, off) })
	if found {
		return 0, false
	}
	prev := g.cps[i-1].Out // cps[0].Out is 0, and at > 0 past a header
	if at-prev <= g.markGap || len(g.cps) >= g.lim.chunks {
		return 0, false
	}
	cp, ok := zr.CheckpointBefore(max(lo, prev), at)
	if !ok {
		return 0, false
	}
	g.cps = slices.Insert(g.cps, i, cp)
	return cp.Out, true
}

// streamErr tells the blob's failure and a broken limit from corrupt
// compressed data, which is ErrInvalid.
func (g *gzipSpans) streamErr(s *blobStream, err error) error {
	switch {
	case s.err != nil:
		return s.err
	case g.err != nil:
		return g.err
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("%w: decompressing: %w", ErrInvalid, err)
}

// maxOut bounds the tar's size for the size checks of its headers: DEFLATE
// expands at most 1032 times (258 bytes from a 2-bit code), per member.
func (g *gzipSpans) maxOut(size int64) int64 {
	if size > (1<<62)/1032 {
		return 1 << 62
	}
	return size * 1032
}

// cut returns where a chunk that starts at tar offset from, and could run
// to to, ends: at the next checkpoint's Out if one lies between. The
// decoder reports a checkpoint before it decodes past it, so every one
// before to is known when the chunk's bytes have been read.
func (g *gzipSpans) cut(from, to int64) int64 {
	i, found := slices.BinarySearchFunc(g.cps, from, func(cp Checkpoint, off int64) int { return cmp.Compare(cp.Out, off) })
	if found {
		i++
	}
	if i < len(g.cps) && g.cps[i].Out < to {
		return g.cps[i].Out
	}
	return to
}

// place turns the tar-offset chunks of idx into span chunks and adds the
// checkpoints. total is the tar's size, size the blob's; decoded is the
// decoder's progress, in output order (inflate.Reader.OnProgress).
func (g *gzipSpans) place(idx *Index, total, size int64, decoded []progress) error {
	if len(g.cps) == 0 || g.cps[0].Out != 0 {
		return Invalidf("no checkpoint at the start of the layer")
	}
	if last := g.cps[len(g.cps)-1]; total-last.Out > maxGzipSpan {
		return fmt.Errorf("%w: no DEFLATE block boundary for the last %d bytes of output (more than %d)",
			ErrNotLazy, total-last.Out, maxGzipSpan)
	}
	for _, chunks := range idx.Chunks {
		for i := range chunks {
			c := &chunks[i]
			k, _ := slices.BinarySearchFunc(g.cps, c.BlobOffset+1, func(cp Checkpoint, off int64) int { return cmp.Compare(cp.Out, off) })
			cp := g.cps[k-1] // Out <= the chunk's start; cps[0].Out is 0
			// Up to the first sample whose output covers the chunk: its
			// input decodes it; the span's end always does.
			end := spanEnd(g.cps, k-1, size)
			tarEnd := c.BlobOffset + c.Length
			if p, _ := slices.BinarySearchFunc(decoded, tarEnd, func(p progress, out int64) int { return cmp.Compare(p.out, out) }); p < len(decoded) {
				end = min(end, max(decoded[p].in, cp.In+1))
			}
			c.Inner = c.BlobOffset - cp.Out
			c.BlobOffset = cp.In
			c.BlobLength = end - cp.In
			c.Encoding = EncodingDeflate
		}
	}
	idx.Checkpoints = g.cps
	return nil
}

// spanEnd is where the compressed bytes of the span starting at
// checkpoint cps[k] end: at the next checkpoint's byte, and that byte
// included when its low bits are the span's last ones; the last span runs
// to the blob's end (its trailer is checked when decoded).
func spanEnd(cps []Checkpoint, k int, size int64) int64 {
	if k+1 == len(cps) {
		return size
	}
	next := cps[k+1]
	if next.Bits != 0 {
		return next.In + 1
	}
	return next.In
}

// gzipMarkGap is how far a listed file's data must start past the
// checkpoint before it for a checkpoint of its own (see WithListed): a
// read of it then decodes (and fetches) that much less, and the index
// grows by one window, about 10 KB.
const gzipMarkGap = 64 << 10

// histLead bounds how far the decoder's output runs ahead of what the tar
// reader took from it: one batch of decoding.
const histLead = 512 << 10

// progress is a point of a gzip layer's decoding: out bytes of the tar
// were decoded from the blob's first in bytes.
type progress struct{ out, in int64 }

// progressEvery is how often, in bytes of the tar, the decoding's
// progress is noted: a chunk's fetch runs at most about this far past its
// end (times the compression ratio).
const progressEvery = 8 << 10

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// DecodeSpan decodes chunks of a gzip layer that all lie in the span
// starting at checkpoint cp, from compressed, the span's bytes
// ([cp.In, +BlobLength) of the blob), and returns each chunk's verified
// bytes in the order of chunks. The span is decoded once, to the end of
// the last chunk in it. Errors are DecodeChunk's; on any error nothing
// is returned.
func DecodeSpan(cp Checkpoint, compressed []byte, chunks []Chunk) ([][]byte, error) {
	var end int64
	for _, c := range chunks {
		if c.Encoding != EncodingDeflate || c.BlobOffset != cp.In || c.Length <= 0 || c.Inner < 0 ||
			c.Inner > maxGzipSpan-c.Length {
			return nil, Invalidf("chunk at file offset %d (blob offset %d, inner %d, length %d) is not in the span at %d",
				c.FileOffset, c.BlobOffset, c.Inner, c.Length, cp.In)
		}
		end = max(end, c.Inner+c.Length)
	}
	zr, err := inflate.Resume(bytes.NewReader(compressed), cp)
	if err != nil {
		return nil, fmt.Errorf("span at %d: %w: %w", cp.In, ErrInvalid, err)
	}
	out := make([]byte, end)
	if n, err := io.ReadFull(zr, out); err != nil {
		return nil, fmt.Errorf("span at %d: decoding %d bytes, got %d: %w", cp.In, end, n, unexpectedEOF(err))
	}
	res := make([][]byte, len(chunks))
	for i, c := range chunks {
		data := out[c.Inner : c.Inner+c.Length : c.Inner+c.Length]
		if err := c.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%w: chunk at file offset %d: digest %q: %w", ErrInvalid, c.FileOffset, c.Digest, err)
		}
		if got := c.Digest.Algorithm().FromBytes(data); got != c.Digest {
			return nil, fmt.Errorf("chunk at file offset %d (span at %d): %w: content has digest %s, want %s",
				c.FileOffset, cp.In, ErrDigestMismatch, got, c.Digest)
		}
		res[i] = data
	}
	return res, nil
}
