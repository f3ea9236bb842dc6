package snapshotter

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"strconv"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// estargzParallelism is the number of parts estargz.Build cuts the tar
// into and compresses concurrently. The parts fix the chunk boundaries, so
// leaving it to Build's default (GOMAXPROCS) would make the blob depend on
// the machine's CPU count.
const estargzParallelism = 4

// writeStreamLayer writes an uncompressed, gzip or zstd layer in one pass:
// tar → diffID hasher and compressor → blob hasher and the blob file.
func writeStreamLayer(ctx context.Context, lower, upper string, blob *os.File, o LayerOptions) (*Layer, error) {
	file := bufferedFile(blob)
	compressed := newCountingDigester()
	sink := io.MultiWriter(file, compressed)
	uncompressed := compressed
	var (
		compressor io.WriteCloser
		err        error
	)
	switch o.Format {
	case FormatGzip:
		compressor, err = newGzipWriter(sink, gzipLevel(o.CompressionLevel))
	case FormatZstd:
		compressor, err = zstd.NewWriter(sink,
			zstd.WithEncoderLevel(zstdLevel(o.CompressionLevel)),
			zstd.WithEncoderConcurrency(1)) // one encoder: the simplest guarantee of a stable output
	default:
		compressor = nopCloser{sink}
	}
	if err != nil {
		return nil, err
	}
	tarSink := io.Writer(compressor)
	if o.Format != FormatUncompressed {
		uncompressed = newCountingDigester()
		tarSink = io.MultiWriter(compressor, uncompressed)
	}
	entries, err := writeTar(ctx, lower, upper, tarSink, o)
	if err != nil {
		return nil, err
	}
	if err := compressor.Close(); err != nil {
		return nil, err
	}
	if err := file.Flush(); err != nil {
		return nil, err
	}
	return &Layer{
		Digest:           compressed.digester.Digest(),
		Size:             compressed.n,
		DiffID:           uncompressed.digester.Digest(),
		UncompressedSize: uncompressed.n,
		MediaType:        mediaTypes[o.Format],
		Entries:          entries,
	}, nil
}

// newGzipWriter compresses at level with a header that carries no file
// name and no time, so that it says nothing about when or where the layer
// was made. The time must be set: unlike compress/gzip, klauspost's writer
// stores a zero Header.ModTime as the truncated Unix time of year 1, a
// bogus 2042 date.
func newGzipWriter(w io.Writer, level int) (io.WriteCloser, error) {
	zw, err := gzip.NewWriterLevel(w, level)
	if err != nil {
		return nil, err
	}
	zw.ModTime = time.Unix(0, 0) // MTIME 0: no time stored (RFC 1952)
	return zw, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// writeTOCLayer writes an estargz or zstd:chunked layer with estargz.Build.
// Build needs random access to the whole tar (it indexes the entries, then
// compresses parts of the tar concurrently), so this is the one case that
// takes two passes: the tar is spooled to a file in TempDir first. Its
// diffID is not the one of the layer: Build adds its landmark file and
// table of contents to the tar, and reports the diffID of that.
func writeTOCLayer(ctx context.Context, lower, upper string, blob *os.File, o LayerOptions) (_ *Layer, err error) {
	spool, err := os.CreateTemp(o.TempDir, "layer-tar-*")
	if err != nil {
		return nil, err
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()
	spoolFile := bufferedFile(spool)
	entries, err := writeTar(ctx, lower, upper, spoolFile, o)
	if err != nil {
		return nil, err
	}
	if err := spoolFile.Flush(); err != nil {
		return nil, err
	}
	tarSize, err := spool.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, err
	}

	metadata := map[string]string{} // zstd:chunked's TOC annotations, filled by Build
	opts := buildOptions(ctx, o, metadata)
	built, err := estargz.Build(io.NewSectionReader(spool, 0, tarSize), opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Format, err)
	}
	file := bufferedFile(blob)
	compressed := newCountingDigester()
	_, err = io.Copy(io.MultiWriter(file, compressed), built)
	if cerr := built.Close(); err == nil { // Close removes Build's scratch files
		err = cerr
	}
	if err == nil {
		err = file.Flush()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Format, err)
	}
	size, err := built.UncompressedSize()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Format, err)
	}
	annotations := map[string]string{
		estargz.TOCJSONDigestAnnotation:         built.TOCDigest().String(),
		estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(size, 10),
	}
	maps.Copy(annotations, metadata)
	if o.Format == FormatEStargz {
		off, err := tocOffset(blob, compressed.n)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.Format, err)
		}
		annotations[AnnotationTOCOffset] = strconv.FormatInt(off, 10)
	}
	return &Layer{
		Digest:           compressed.digester.Digest(),
		Size:             compressed.n,
		DiffID:           built.DiffID(),
		UncompressedSize: size,
		MediaType:        mediaTypes[o.Format],
		Annotations:      annotations,
		Entries:          entries,
	}, nil
}

// AnnotationTOCOffset is where an eStargz layer's TOC starts in its blob:
// the size of the read that brings TOC and footer at once when the layer
// is mounted (fs/index.AnnotationEStargzTOCOffset, which reads it).
const AnnotationTOCOffset = "io.github.stratafs.estargz.toc-offset"

// tocOffset reads, from its footer, where the TOC of the eStargz blob of
// size bytes in r starts.
func tocOffset(r io.ReaderAt, size int64) (int64, error) {
	if size < estargz.FooterSize {
		return 0, fmt.Errorf("eStargz blob of %d bytes has no footer", size)
	}
	footer := make([]byte, estargz.FooterSize)
	if _, err := r.ReadAt(footer, size-estargz.FooterSize); err != nil {
		return 0, fmt.Errorf("reading the eStargz footer: %w", err)
	}
	_, off, _, err := new(estargz.GzipDecompressor).ParseFooter(footer)
	return off, err
}

// buildOptions are the fixed options of estargz.Build: default chunk
// size, no prioritized files, a pinned parallelism, the format's
// compressor at the level asked for. For zstd:chunked, Build fills
// metadata with the TOC annotations.
func buildOptions(ctx context.Context, o LayerOptions, metadata map[string]string) []estargz.Option {
	opts := []estargz.Option{estargz.WithContext(ctx), estargz.WithParallelism(estargzParallelism)}
	if o.Format == FormatZstdChunked {
		return append(opts, estargz.WithCompression(zstdChunked{
			&zstdchunked.Compressor{CompressionLevel: zstdLevel(o.CompressionLevel), Metadata: metadata},
			&zstdchunked.Decompressor{},
		}))
	}
	return append(opts, estargz.WithCompressionLevel(gzipLevel(o.CompressionLevel)))
}

// zstdChunked is the estargz.Compression of zstd:chunked, put together as
// stargz-snapshotter's converter does.
type zstdChunked struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}
