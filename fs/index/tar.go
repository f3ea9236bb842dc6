package index

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"strings"

	"github.com/opencontainers/go-digest"
)

// tarChunkSize is the most file data one chunk of a tar layer covers: a
// span read by range and verified against its own digest. 1 MiB is what
// one FUSE read asks for.
const tarChunkSize = 1 << 20

// ReadTar indexes an uncompressed tar layer of size bytes that r reads,
// whose digest is layerDigest, and returns an *Index that has passed
// Validate(size).
//
// A plain tar has no table of contents and its headers are spread
// through it, so the whole blob is read once, in order, in large ranged
// reads, and hashed as it goes: an index is returned only when the blob
// has layerDigest, so its names, metadata and chunk digests are exactly
// the layer's. Each regular file's data becomes chunks of at most
// tarChunkSize bytes, stored as they are (EncodingRaw) at their place in
// the blob, each with the sha256 of its bytes, so that every later ranged
// read of a span is verified on its own.
//
// The tree is built by the rules every format shares (see treeBuilder).
// Besides those, a tar is refused when it is malformed (archive/tar's
// errors, a file's data beyond the blob's end) or holds entries Strata
// cannot serve: unknown entry types, and sparse files, which are refused
// with ErrNotLazy (their data is not one range of the blob).
//
// Errors: ErrInvalid for a malformed or hostile tar, with
// ErrDigestMismatch when the blob does not have layerDigest; otherwise
// the error of r, wrapped. A fault found before the end is reported as
// soon as it is found, before the digest could be checked.
func ReadTar(ctx context.Context, r io.ReaderAt, size int64, layerDigest digest.Digest) (*Index, error) {
	return readTar(ctx, r, size, layerDigest, defaultLimits, nil)
}

// readTar is ReadTar with limits, handing each chunk's data to keep when
// it is not nil (see WithKeep).
func readTar(ctx context.Context, r io.ReaderAt, size int64, want digest.Digest, lim limits, keep func(digest.Digest, []byte)) (*Index, error) {
	if err := want.Validate(); err != nil {
		return nil, fmt.Errorf("tar: layer digest %q: %w", want, err)
	}
	s := newBlobStream(ctx, r, size, want.Algorithm().Hash())
	defer s.close()
	t := newTarIndexer(ctx, FormatTar, lim, s, s, size, keep)
	t.pos = func() int64 { return s.pos }
	if err := t.readAll(); err != nil {
		return nil, fmt.Errorf("tar: %w", err)
	}
	if err := s.finish(); err != nil {
		return nil, fmt.Errorf("tar: %w", err)
	}
	if got := digest.NewDigest(want.Algorithm(), s.hash); got != want {
		return nil, fmt.Errorf("tar: %w: %w: the layer has digest %s, its descriptor says %s",
			ErrInvalid, ErrDigestMismatch, got, want)
	}
	idx := t.b.finish()
	if err := idx.Validate(size); err != nil {
		return nil, fmt.Errorf("tar: index does not validate: %w", err)
	}
	return idx, nil
}

// tarIndexer feeds a tar's headers to the tree builder and turns each
// regular file's data into verified chunks. The tar is read from the
// blob itself (an uncompressed layer) or through a decompressor (a gzip
// layer); chunks are ranges of the tar as it reads it, which the gzip
// reader maps onto its spans afterwards.
type tarIndexer struct {
	ctx    context.Context //nolint:containedctx // the lifetime of one read
	b      *treeBuilder
	lim    limits
	s      *blobStream // the blob, whose failure is told from the tar's
	tr     *tar.Reader
	pos    func() int64 // offset in the tar of the next byte tr reads
	size   int64        // bound on the tar's size, for sizes in headers
	n      int          // headers read
	chunkH hash.Hash    // sha256 of the chunk being read
	buf    []byte       // one chunk's data, reused
	keep   func(digest.Digest, []byte)
	// cut, when set, returns where the chunk that starts at tar offset
	// from and may run to to must end instead (a gzip span's end).
	cut func(from, to int64) int64
	// held, when listed is set, delays entries and their chunks on their
	// way to the builder, for a checkpoint before a listed file to cut
	// the chunks before it (tar_listed.go).
	held *holdBack
}

// newTarIndexer reads the tar that src reads from blob s (src is s for
// an uncompressed layer); the caller sets pos.
func newTarIndexer(ctx context.Context, f Format, lim limits, s *blobStream, src io.Reader, size int64, keep func(digest.Digest, []byte)) *tarIndexer {
	return &tarIndexer{ctx: ctx, b: newTreeBuilder(f, lim, 1024), lim: lim, s: s, tr: tar.NewReader(src), size: size, chunkH: sha256.New(), keep: keep}
}

func (t *tarIndexer) readAll() error {
	for {
		if t.n%ctxCheckEvery == 0 {
			if err := t.ctx.Err(); err != nil {
				return err
			}
		}
		h, err := t.tr.Next()
		if err == io.EOF {
			if t.held != nil {
				if err := t.held.flush(t, math.MaxInt64); err != nil {
					return err
				}
			}
			return t.b.closeFile()
		}
		if err != nil {
			return t.streamErr(err, "reading a tar header")
		}
		if t.n++; t.n > t.lim.entries+t.lim.chunks {
			return Invalidf("more than %d tar entries", t.lim.entries+t.lim.chunks)
		}
		if err := t.add(h); err != nil {
			return err
		}
	}
}

// streamErr tells the blob's own failure (the network, a short blob)
// from a malformed tar, which is ErrInvalid.
func (t *tarIndexer) streamErr(err error, doing string) error {
	if t.s.err != nil {
		return t.s.err
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%w: %s at offset %d: %w", ErrInvalid, doing, t.pos(), err)
}

// add applies one tar entry and indexes its data.
func (t *tarIndexer) add(h *tar.Header) error {
	if h.Typeflag == tar.TypeXGlobalHeader {
		return nil // PAX defaults for the entries after it: archive/tar applies none, nor do unpackers
	}
	name, err := cleanName(h.Name)
	if err != nil {
		return Invalidf("entry %q: %v", h.Name, err)
	}
	if isSparse(h) {
		return fmt.Errorf("%w: entry %q is %w", ErrNotLazy, h.Name, ErrSparseFile)
	}
	dataOff := t.pos()
	hd := tarHeader(h)
	if hd.Size < 0 || hd.Size > t.size-dataOff {
		return Invalidf("entry %q: size %d runs past the end of the %d-byte layer", h.Name, hd.Size, t.size)
	}
	if t.held != nil {
		return t.held.add(t, name, h.Name, hd, dataOff)
	}
	if err := t.b.add(name, &hd); err != nil {
		return Invalidf("entry %q: %v", h.Name, err)
	}
	if hd.Size == 0 {
		return nil
	}
	if err := t.addData(dataOff, hd.Size); err != nil {
		return fmt.Errorf("entry %q: %w", h.Name, err)
	}
	return nil
}

// addData reads the open file's size bytes of data, which start at
// dataOff in the blob, and adds them as chunks. A whiteout's data is read
// (it has to be, to reach the next header) and dropped by the builder.
func (t *tarIndexer) addData(dataOff, size int64) error {
	if t.buf == nil {
		t.buf = make([]byte, tarChunkSize)
	}
	for off := int64(0); off < size; off += tarChunkSize {
		n := min(size-off, tarChunkSize)
		buf := t.buf[:n]
		if _, err := io.ReadFull(t.tr, buf); err != nil {
			return t.streamErr(err, "reading file data")
		}
		for p := int64(0); p < n; {
			end := n
			if t.cut != nil {
				end = t.cut(dataOff+off+p, dataOff+off+n) - (dataOff + off)
			}
			var err error
			if t.held != nil {
				err = t.held.piece(t, off+p, dataOff+off+p, buf[p:end])
			} else {
				err = t.addChunk(off+p, dataOff+off+p, buf[p:end])
			}
			if err != nil {
				return err
			}
			p = end
		}
	}
	return nil
}

// addChunk adds the piece of file data at file offset off, which starts
// at tarOff in the tar, as a chunk stored as it is there.
func (t *tarIndexer) addChunk(off, tarOff int64, data []byte) error {
	t.chunkH.Reset()
	t.chunkH.Write(data)
	d := digest.NewDigest(digest.SHA256, t.chunkH)
	n := int64(len(data))
	err := t.b.addChunk(Chunk{
		FileOffset: off,
		Length:     n,
		BlobOffset: tarOff,
		BlobLength: n,
		Encoding:   EncodingRaw,
		Digest:     d,
	})
	if err != nil {
		return Invalidf("%v", err)
	}
	if t.keep != nil && t.b.file != nil && !t.b.file.skip {
		t.keep(d, data)
	}
	return nil
}

// isSparse reports a GNU or PAX sparse file.
func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// paxXattrPrefix marks the PAX records that carry xattrs, as GNU tar,
// containerd and Docker write them.
const paxXattrPrefix = "SCHILY.xattr."

// tarHeader converts a tar header for the tree builder.
func tarHeader(h *tar.Header) header {
	hd := header{
		TypeName: tarTypeName(h.Typeflag),
		Size:     h.Size,
		Mode:     h.Mode,
		UID:      int64(h.Uid),
		GID:      int64(h.Gid),
		ModTime:  h.ModTime.UTC(),
		LinkName: h.Linkname,
		DevMajor: h.Devmajor,
		DevMinor: h.Devminor,
	}
	switch h.Typeflag {
	case tar.TypeReg:
		hd.Type = TypeReg
	case tar.TypeDir:
		hd.Type = TypeDir
	case tar.TypeSymlink:
		hd.Type = TypeSymlink
	case tar.TypeChar:
		hd.Type = TypeChar
	case tar.TypeBlock:
		hd.Type = TypeBlock
	case tar.TypeFifo:
		hd.Type = TypeFifo
	case tar.TypeLink:
		hd.Hardlink = true
	}
	if hd.Type != TypeReg {
		// Only regular files have content here; archive/tar reads no data
		// for the other types whatever their size field says.
		hd.Size = 0
	}
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, paxXattrPrefix); ok {
			if hd.Xattrs == nil {
				hd.Xattrs = make(map[string][]byte)
			}
			hd.Xattrs[name] = []byte(v)
		}
	}
	return hd
}

// tarTypeName names a tar entry type in messages.
func tarTypeName(flag byte) string {
	switch flag {
	case tar.TypeReg:
		return "reg"
	case tar.TypeDir:
		return "dir"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeChar:
		return "char"
	case tar.TypeBlock:
		return "block"
	case tar.TypeFifo:
		return "fifo"
	case tar.TypeLink:
		return "hardlink"
	}
	return fmt.Sprintf("tar type %q", flag)
}
