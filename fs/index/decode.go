package index

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// ErrDigestMismatch is wrapped by errors about bytes (a chunk, a TOC)
// whose digest is not the one the index or the manifest promised. Such
// bytes are never served; FUSE turns this error into EIO.
var ErrDigestMismatch = errors.New("digest mismatch")

// zstdMaxWindow bounds the memory a hostile zstd frame can make the
// decoder allocate for its window. Chunks are at most MaxChunkLength
// decompressed, so no honest writer needs a window beyond twice that.
const zstdMaxWindow = 2 * MaxChunkLength

// Decoders are pooled: a gzip or zstd reader costs far more to allocate
// than a small chunk costs to decode, and FUSE reads decode many chunks
// concurrently.
var (
	gzipReaders sync.Pool // *gzip.Reader
	zstdReaders sync.Pool // *zstd.Decoder
)

// DecodeChunk decodes the chunk c from compressed, the bytes fetched from
// the blob at [c.BlobOffset, c.BlobOffset+c.BlobLength), and returns its
// c.Length bytes in dst, grown if its capacity is too small.
//
// The stream is decompressed per c.Encoding, c.Inner bytes are skipped,
// exactly c.Length bytes are read (bytes after them are not looked at),
// and they are verified against c.Digest. A mismatch returns an error
// wrapping ErrDigestMismatch that names both digests; a chunk that is
// malformed in itself wraps ErrInvalid; a stream that is corrupt or ends
// early returns the decompressor's error, wrapped. On any error the
// returned slice is nil, so unverified bytes cannot be used by mistake;
// dst may have been written to.
func DecodeChunk(c Chunk, compressed []byte, dst []byte) ([]byte, error) {
	if c.Length <= 0 || c.Length > MaxChunkLength || c.Inner < 0 {
		return nil, Invalidf("chunk at file offset %d: length %d, inner %d", c.FileOffset, c.Length, c.Inner)
	}
	if err := c.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("%w: chunk at file offset %d: digest %q: %w", ErrInvalid, c.FileOffset, c.Digest, err)
	}
	if int64(cap(dst)) < c.Length {
		dst = make([]byte, c.Length)
	}
	out := dst[:c.Length]
	var err error
	switch c.Encoding {
	case EncodingRaw:
		err = decodeRaw(compressed, c.Inner, out)
	case EncodingGzip:
		err = decodeGzip(compressed, c.Inner, out)
	case EncodingZstd:
		err = decodeZstd(compressed, c.Inner, out)
	case EncodingDeflate:
		err = Invalidf("a gzip span needs its checkpoint: decode it with DecodeSpan")
	default:
		err = Invalidf("unknown encoding %d", c.Encoding)
	}
	if err != nil {
		return nil, fmt.Errorf("chunk at file offset %d (blob offset %d): %w", c.FileOffset, c.BlobOffset, err)
	}
	if got := c.Digest.Algorithm().FromBytes(out); got != c.Digest {
		return nil, fmt.Errorf("chunk at file offset %d (blob offset %d): %w: content has digest %s, want %s",
			c.FileOffset, c.BlobOffset, ErrDigestMismatch, got, c.Digest)
	}
	return out, nil
}

func decodeRaw(stored []byte, inner int64, out []byte) error {
	if inner > int64(len(stored)) || int64(len(out)) > int64(len(stored))-inner {
		return fmt.Errorf("raw chunk [%d, +%d) beyond the %d bytes given: %w",
			inner, len(out), len(stored), io.ErrUnexpectedEOF)
	}
	copy(out, stored[inner:])
	return nil
}

func decodeGzip(compressed []byte, inner int64, out []byte) error {
	br := bytes.NewReader(compressed)
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(br)
	} else {
		err = zr.Reset(br)
	}
	if err != nil {
		return fmt.Errorf("gzip header: %w", unexpectedEOF(err))
	}
	defer gzipReaders.Put(zr)
	// One chunk is one gzip stream; reading on into a next stream would
	// only hide a wrong Inner or Length.
	zr.Multistream(false)
	return readAfter(zr, inner, out)
}

func decodeZstd(compressed []byte, inner int64, out []byte) error {
	zd, _ := zstdReaders.Get().(*zstd.Decoder)
	if zd == nil {
		var err error
		zd, err = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1), // synchronous: no goroutines per pooled decoder
			zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return fmt.Errorf("zstd decoder: %w", err)
		}
	}
	if err := zd.Reset(bytes.NewReader(compressed)); err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	defer func() {
		_ = zd.Reset(nil) // drop the reference to compressed before pooling
		zstdReaders.Put(zd)
	}()
	return readAfter(zd, inner, out)
}

// readAfter skips inner decompressed bytes, then fills out.
func readAfter(r io.Reader, inner int64, out []byte) error {
	if n, err := io.CopyN(io.Discard, r, inner); err != nil {
		return fmt.Errorf("skipping %d bytes to the chunk, stream ended after %d: %w", inner, n, unexpectedEOF(err))
	}
	if n, err := io.ReadFull(r, out); err != nil {
		return fmt.Errorf("reading %d bytes of chunk, stream ended after %d: %w", len(out), n, unexpectedEOF(err))
	}
	return nil
}

// unexpectedEOF reports a stream that ends early as what it is: the data
// was expected to be there.
func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
