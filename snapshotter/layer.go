package snapshotter

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// LayerFormat is the compression and layout of a layer blob.
type LayerFormat string

// The layer formats WriteLayer makes.
const (
	// FormatEStargz is gzip made of one stream per file chunk, with a table
	// of contents at the end, so that the layer can be mounted lazily. It is
	// a valid tar+gzip stream for any other reader.
	FormatEStargz LayerFormat = "estargz"
	// FormatGzip is a plain tar+gzip stream.
	FormatGzip LayerFormat = "gzip"
	// FormatZstd is a plain tar+zstd stream.
	FormatZstd LayerFormat = "zstd"
	// FormatZstdChunked is zstd:chunked, zstd's counterpart of estargz
	// (one frame per chunk, a table of contents in a skippable frame).
	FormatZstdChunked LayerFormat = "zstd:chunked"
	// FormatUncompressed is the tar itself.
	FormatUncompressed LayerFormat = "uncompressed"
)

// ParseLayerFormat checks the value of --format; "" is the default,
// estargz.
func ParseLayerFormat(s string) (LayerFormat, error) {
	switch f := LayerFormat(s); f {
	case "":
		return FormatEStargz, nil
	case FormatEStargz, FormatGzip, FormatZstd, FormatZstdChunked, FormatUncompressed:
		return f, nil
	}
	return "", fmt.Errorf("unknown layer format %q: want estargz, gzip, zstd, zstd:chunked or uncompressed", s)
}

// LayerOptions say how WriteLayer writes a layer. The zero value writes
// estargz at its default level, spools in os.TempDir and warns through
// slog.
type LayerOptions struct {
	// Format defaults to estargz.
	Format LayerFormat
	// CompressionLevel is a gzip level (-2..9, 0 storing the data as it
	// is) for gzip and estargz, a zstd level (1..22) for zstd and
	// zstd:chunked; it must be 0 or nil for uncompressed. nil is the
	// format's fixed default: gzip.DefaultCompression (-1, which
	// klauspost/compress's gzip takes as level 5 and estargz's as 6), or
	// zstd.SpeedDefault (zstd level 3).
	CompressionLevel *int
	// SourceDateEpoch, when set, is the latest mtime written: later ones
	// are clamped to it. Whiteouts are dated 1970 either way.
	SourceDateEpoch *time.Time
	// TempDir is where the blob and any spool file go; os.TempDir() when
	// empty. (estargz.Build keeps its own scratch files in os.TempDir()
	// whatever this says.)
	TempDir string
	// Warn reports what the layer leaves out (sockets, names starting
	// with ".wh."); nil is slog.Warn.
	Warn func(msg string, args ...any)
}

// Layer is a layer blob written by WriteLayer.
type Layer struct {
	// Path is the blob, a file in TempDir, fsynced; the caller renames or
	// ingests it, and deletes it if it does not.
	Path string
	// Digest and Size are those of the blob.
	Digest digest.Digest
	Size   int64
	// DiffID and UncompressedSize are those of the uncompressed tar. For
	// estargz and zstd:chunked that tar holds, besides the changes, the
	// format's landmark file and table of contents.
	DiffID           digest.Digest
	UncompressedSize int64
	// MediaType is the OCI media type of the blob.
	MediaType string
	// Annotations belong on the layer's descriptor: for estargz and
	// zstd:chunked those that stargz-snapshotter's converters set, which
	// let the layer be mounted lazily.
	Annotations map[string]string
	// Entries is the number of tar entries made from the changes (parents,
	// whiteouts and opaque markers included; estargz's own entries not).
	Entries int
}

// WriteLayer writes the changes that UpperChanges finds in upper, the
// upper directory of an overlay over lower, as a layer blob in
// o.TempDir. The tar is what containerd writes for the same changes:
// entries sorted with parents before children, PAX headers, numeric owners
// only, mtimes in whole seconds, all extended attributes, hardlinks within
// the layer as links, overlayfs whiteouts and opaque directories as OCI
// whiteouts. Sockets are skipped with a warning; other files a tar cannot
// hold are an error.
//
// The blob is reproducible: the same changes give the same digests
// whatever the machine, the CPU count, the temporary directory or the
// filesystem under upper, because compression settings are fixed and
// nothing of the filesystem's layout (inode numbers, directory sizes,
// readdir order, access or change times) reaches the tar.
//
// On error, including cancellation of ctx, nothing is left in TempDir.
func WriteLayer(ctx context.Context, lower, upper string, o LayerOptions) (_ *Layer, err error) {
	if o.Format == "" {
		o.Format = FormatEStargz
	}
	if _, err := ParseLayerFormat(string(o.Format)); err != nil {
		return nil, err
	}
	if err := CheckLevel(o.Format, o.CompressionLevel); err != nil {
		return nil, err
	}
	if o.Warn == nil {
		o.Warn = slog.Warn
	}
	if o.SourceDateEpoch != nil {
		epoch := o.SourceDateEpoch.Truncate(time.Second)
		o.SourceDateEpoch = &epoch
	}
	blob, err := os.CreateTemp(o.TempDir, "layer-*")
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := blob.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(blob.Name())
		}
	}()
	var l *Layer
	switch o.Format {
	case FormatEStargz, FormatZstdChunked:
		l, err = writeTOCLayer(ctx, lower, upper, blob, o)
	default:
		l, err = writeStreamLayer(ctx, lower, upper, blob, o)
	}
	if err != nil {
		return nil, err
	}
	if err := blob.Sync(); err != nil {
		return nil, err
	}
	l.Path = blob.Name()
	return l, nil
}

// CheckLevel refuses a level that the format's compressor would refuse
// or, worse, silently map to another one; nil is the format's default.
func CheckLevel(f LayerFormat, level *int) error {
	if level == nil {
		return nil
	}
	var ok bool
	switch l := *level; f {
	case FormatEStargz, FormatGzip:
		ok = l >= gzip.HuffmanOnly && l <= gzip.BestCompression
	case FormatZstd, FormatZstdChunked:
		ok = l >= 1 && l <= 22
	default:
		ok = l == 0
	}
	if !ok {
		return fmt.Errorf("compression level %d is not valid for %s layers", *level, f)
	}
	return nil
}

func gzipLevel(level *int) int {
	if level == nil {
		return gzip.DefaultCompression
	}
	return *level
}

func zstdLevel(level *int) zstd.EncoderLevel {
	if level == nil {
		return zstd.SpeedDefault
	}
	return zstd.EncoderLevelFromZstd(*level)
}

// writeTar writes the tar of the changes to w and returns its number of
// entries.
func writeTar(ctx context.Context, lower, upper string, w io.Writer, o LayerOptions) (int, error) {
	lt := newLayerTar(w, upper, o.SourceDateEpoch, o.Warn)
	lt.utf8 = o.Format == FormatEStargz || o.Format == FormatZstdChunked
	err := UpperChanges(ctx, lower, upper, func(c Change) error { return lt.add(ctx, c) })
	if err != nil {
		return 0, err
	}
	if err := lt.close(); err != nil {
		return 0, err
	}
	return lt.entries, nil
}

// countingDigester hashes and counts what is written to it.
type countingDigester struct {
	digester digest.Digester
	n        int64
}

func newCountingDigester() *countingDigester {
	return &countingDigester{digester: digest.Canonical.Digester()}
}

func (c *countingDigester) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.digester.Hash().Write(p)
}

// bufferedFile buffers the writes to the blob file; tar writes in small
// pieces.
func bufferedFile(f *os.File) *bufio.Writer { return bufio.NewWriterSize(f, 1<<20) }

var mediaTypes = map[LayerFormat]string{
	FormatEStargz:      ocispec.MediaTypeImageLayerGzip,
	FormatGzip:         ocispec.MediaTypeImageLayerGzip,
	FormatZstd:         ocispec.MediaTypeImageLayerZstd,
	FormatZstdChunked:  ocispec.MediaTypeImageLayerZstd,
	FormatUncompressed: ocispec.MediaTypeImageLayer,
}
