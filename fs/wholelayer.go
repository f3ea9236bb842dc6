package fs

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
)

// A layer without a lazy reader (plain gzip or zstd: no TOC, no seekable
// index yet) is fetched whole, once per machine, when the caller asks for
// that (AcquireWhole: `strata mount`, writable mounts and builds; the
// containerd snapshotter leaves such layers to containerd's own unpack):
// the blob is read in order in large ranges and checked against its
// digest, decompressed into the store as an uncompressed tar named by its
// own digest, and indexed as a tar layer whose stored index names that
// tar (Index.Unpacked). Later mounts, containerd's included, read it from
// the store and never ask the registry.

// wholeReadSize is the size of each range read while fetching a layer
// whole: one round trip per wholeReadSize bytes.
const wholeReadSize = 8 << 20

// errNotCompressed is fetchWhole's refusal of a layer that is neither
// gzip nor zstd: the lazy reader's refusal of it (as a tar) says more.
var errNotCompressed = fmt.Errorf("%w: the layer is neither gzip nor zstd nor a tar this reader knows", ErrNotLazy)

// fetchWhole fetches layer l (read through blob) whole and returns the
// store's copy of its tar and the tar's index.
func (p *Pool) fetchWhole(ctx context.Context, blob layerBlob, l remote.Layer) (layerBlob, View, error) {
	start := time.Now()
	slog.InfoContext(ctx, "layer has no lazy reader: fetching it whole", "layer", l.Digest, "size", l.Size)
	tmp, err := os.CreateTemp(p.store.Blobs.TempDir(), "unpack-")
	if err != nil {
		return nil, nil, err
	}
	defer os.Remove(tmp.Name()) // gone once ingested; removed on failure
	tarDigest, tarSize, packed, err := unpackInto(ctx, tmp, p.store.Blobs.TempDir(), blob, l)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	if err := p.store.Blobs.Ingest(tmp.Name(), tarDigest, tarSize); err != nil {
		return nil, nil, fmt.Errorf("layer %s: storing its tar: %w", l.Digest, err)
	}
	local, err := p.openUnpacked(tarDigest, tarSize)
	if err != nil {
		return nil, nil, err
	}
	built, err := index.ReadTar(ctx, local.ReaderAt(ctx), tarSize, tarDigest)
	if err != nil {
		local.Close()
		return nil, nil, fmt.Errorf("layer %s: indexing its tar: %w", l.Digest, err)
	}
	built.Unpacked, built.Packed = tarDigest, packed
	if err := index.Save(p.store.DB(), l.Digest.String(), built, tarSize); err != nil {
		// Served from memory; the next mount fetches the layer again.
		slog.ErrorContext(ctx, "storing the index of a layer fetched whole", "layer", l.Digest, "error", err)
		return local, index.NewMemory(built, tarSize), nil
	}
	stored, err := index.Open(p.store.DB(), l.Digest.String())
	if err != nil {
		local.Close()
		return nil, nil, err
	}
	slog.InfoContext(ctx, "layer fetched whole", "layer", l.Digest, "format", packed, "bytes", l.Size,
		"tar", tarDigest, "tarBytes", tarSize, "entries", len(built.Entries), "duration", time.Since(start).Round(time.Millisecond))
	return local, stored, nil
}

// openUnpacked opens the store's tar of a layer fetched whole.
func (p *Pool) openUnpacked(d digest.Digest, size int64) (*localBlob, error) {
	f, got, err := p.store.Blobs.Open(d)
	if err != nil {
		return nil, err
	}
	return openLocalBlob(f, got, size, d)
}

// unpackInto reads layer l through blob into a file in tmpDir, checks its
// digest, and only then writes its decompressed bytes to w; it returns
// their digest and size and the compression it found (gzip or zstd, told
// by the bytes). Nothing is decompressed before the blob is verified: a
// small blob that is not the layer could otherwise write any amount (a
// compression bomb under a digest it does not have).
func unpackInto(ctx context.Context, w io.Writer, tmpDir string, blob layerBlob, l remote.Layer) (digest.Digest, int64, index.Format, error) {
	if err := l.Digest.Validate(); err != nil {
		return "", 0, "", err
	}
	f, err := os.CreateTemp(tmpDir, "blob-")
	if err != nil {
		return "", 0, "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	sum := l.Digest.Algorithm().Hash()
	fetched, err := io.CopyBuffer(io.MultiWriter(f, sum), &ctxReader{ctx: ctx, r: io.NewSectionReader(withProgress(ctx, blob.ReaderAt(ctx), l.Digest, l.Size), 0, l.Size)}, make([]byte, wholeReadSize))
	if err != nil {
		return "", 0, "", fmt.Errorf("reading the layer: %w", err)
	}
	if fetched != l.Size {
		return "", 0, "", fmt.Errorf("%w: the layer has %d bytes, its descriptor says %d", remote.ErrDigestMismatch, fetched, l.Size)
	}
	if got := digest.NewDigest(l.Digest.Algorithm(), sum); got != l.Digest {
		return "", 0, "", fmt.Errorf("%w: the layer's bytes hash to %s", remote.ErrDigestMismatch, got)
	}
	if fetched == 0 {
		// An empty blob under a compressed media type: an empty layer,
		// as umoci, buildah and a tar reader take it.
		return digest.SHA256.FromBytes(nil), 0, index.FormatTar, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", 0, "", err
	}
	src := bufio.NewReaderSize(&ctxReader{ctx: ctx, r: f}, 1<<20)
	magic, err := src.Peek(4)
	if errors.Is(err, io.EOF) {
		return "", 0, "", errNotCompressed // 1 to 3 bytes: no compressed stream
	}
	if err != nil {
		return "", 0, "", fmt.Errorf("reading the layer: %w", err)
	}
	var dec io.Reader
	var format index.Format
	switch {
	case magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(src)
		if err != nil {
			return "", 0, "", fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		dec, format = zr, index.FormatGzip
	case index.IsZstd(magic):
		zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
		if err != nil {
			return "", 0, "", fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		dec, format = zr, index.FormatZstd
	default:
		return "", 0, "", errNotCompressed
	}
	out := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, out), dec)
	if err != nil {
		return "", 0, "", fmt.Errorf("decompressing the layer: %w", err)
	}
	return digest.NewDigest(digest.SHA256, out), n, format, nil
}

// ctxReader stops a long read when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}
