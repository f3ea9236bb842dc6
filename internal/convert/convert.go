package convert

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

// Annotations an eStargz layer descriptor carries, as stargz-snapshotter's
// converter writes them.
const (
	AnnotationTOCDigest        = "containerd.io/snapshot/stargz/toc.digest"
	AnnotationUncompressedSize = "io.containers.estargz.uncompressed-size"
	// AnnotationTOCOffset is where the TOC starts in the blob: the size
	// of the read that brings TOC and footer at once when the layer is
	// mounted (fs/index.AnnotationEStargzTOCOffset, which reads it).
	AnnotationTOCOffset = "io.github.stratafs.estargz.toc-offset"
)

// Options tune a conversion.
type Options struct {
	// ChunkSize is the eStargz chunk size in bytes; 0 means the estargz
	// default (4 MiB).
	ChunkSize int
	// Prioritize lists files (paths in the image, in the order a workload
	// first reads them) to put at the front of each layer that has them,
	// followed by a prefetch landmark: Strata and other eStargz readers
	// fetch that part of a layer right after mounting it. Paths a layer
	// does not have are skipped.
	Prioritize []string
	// TmpDir holds the uncompressed and converted layers while converting.
	TmpDir string
	// Progress, when set, is told about each layer as it is done.
	Progress func(done, total int, layer v1.Hash, size int64)
}

// Convert reads src, rewrites every layer as eStargz and pushes the result
// to dst. Only the platform chosen by the remote options is converted; the
// config keeps its history, with the new layers' diffIDs.
func Convert(ctx context.Context, src, dst string, opt Options, ropts ...remote.Option) (v1.Hash, error) {
	srcRef, err := remote.ParseReference(src, ropts...)
	if err != nil {
		return v1.Hash{}, err
	}
	dstRef, err := remote.ParsePushReference(dst, ropts...)
	if err != nil {
		return v1.Hash{}, err
	}
	tmp, err := os.MkdirTemp(opt.TmpDir, "strata-convert-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(tmp)
	opt.TmpDir = tmp
	gopts := remote.RemoteOptions(ctx, ropts...)
	// The platform is chosen as a mount chooses it (go-containerregistry
	// would take an index entry without a platform for linux/amd64, and
	// knows no older variants), then the image read by its digest.
	resolved, err := remote.Resolve(ctx, src, ropts...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("reading %s: %w", src, err)
	}
	img, err := ggcrremote.Image(srcRef.Context().Digest(resolved.Digest.String()), gopts...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("reading %s: %w", src, err)
	}
	out, err := Image(ctx, img, opt)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := ggcrremote.Write(dstRef, out, gopts...); err != nil {
		return v1.Hash{}, fmt.Errorf("pushing %s: %w", dst, err)
	}
	return out.Digest()
}

// Image returns img with every layer rewritten as eStargz. The converted
// layers are files in opt.TmpDir, read when the result is written; the
// caller removes them afterwards.
func Image(ctx context.Context, img v1.Image, opt Options) (v1.Image, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	srcManifest, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("reading manifest: %w", err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	adds := make([]mutate.Addendum, len(layers))
	diffIDs := make([]v1.Hash, len(layers))
	// A prioritized path is stored first in the layer whose entry the
	// image shows: the topmost that holds it. Layers are converted top
	// down, each told the paths no layer above it decided (held, deleted
	// or hid); a lower copy, which nothing reads, is never prefetched.
	pr := newPriorities(opt.Prioritize)
	for i := len(layers) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		el, err := layer(ctx, layers[i], opt, pr.take)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
		pr.notFirst(el.missed)
		adds[i] = mutate.Addendum{Layer: el.Layer, Annotations: layerAnnotations(srcManifest, i, el.annotations), MediaType: types.OCILayer}
		diffIDs[i] = el.diffID
		if opt.Progress != nil {
			d, _ := el.Digest()
			sz, _ := el.Size()
			opt.Progress(len(layers)-i, len(layers), d, sz)
		}
	}
	pr.warn(ctx)
	out, err := mutate.Append(base, adds...)
	if err != nil {
		return nil, err
	}
	newCfg := cfg.DeepCopy()
	newCfg.RootFS.DiffIDs = diffIDs
	if out, err = mutate.ConfigFile(out, newCfg); err != nil {
		return nil, err
	}
	if len(srcManifest.Annotations) > 0 {
		// The manifest's annotations (its source, its base) are the
		// image's, as containerd's converter keeps them.
		out = mutate.Annotations(out, srcManifest.Annotations).(v1.Image)
	}
	// The source's config as written, but for its layers' diff IDs: the
	// fields go-containerregistry's model lacks (a health check's
	// StartInterval, other tools' keys) stay.
	raw, err := withDiffIDs(rawCfg, newCfg.RootFS)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return remote.WithRawConfig(out, raw)
}

// withDiffIDs is the config raw with its rootfs replaced, every other key
// as it was.
func withDiffIDs(raw []byte, rootfs v1.RootFS) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, err
	}
	r, err := json.Marshal(rootfs)
	if err != nil {
		return nil, err
	}
	fields["rootfs"] = r
	return json.Marshal(fields)
}

// stale are the layer annotations a conversion replaces: its source's
// table of contents and sizes, when it had them.
var stale = []string{AnnotationTOCDigest, AnnotationUncompressedSize, AnnotationTOCOffset, "containerd.io/uncompressed"}

// layerAnnotations are layer i's annotations in the source manifest, but
// for those the conversion replaces, with made's over them.
func layerAnnotations(src *v1.Manifest, i int, made map[string]string) map[string]string {
	out := map[string]string{}
	if i < len(src.Layers) {
		for k, v := range src.Layers[i].Annotations {
			if !slices.Contains(stale, k) {
				out[k] = v
			}
		}
	}
	maps.Copy(out, made)
	if len(out) == 0 {
		return nil
	}
	return out
}

// wholeSecondMtimes rewrites the layer's tar with every entry's mtime cut
// to the second, into a new temporary file. An eStargz TOC holds whole
// seconds, and its writer rounds them (1000.7 s becomes 1001): a mount
// served from the TOC then shows a file a second newer than an unpack of
// the same layer, whose tar entries keep 1000.7. Cut in the tar itself,
// both say 1000, as an unpack of the source to the second does.
func wholeSecondMtimes(src *os.File, n int64, tmpDir string) (*os.File, int64, error) {
	dst, err := os.CreateTemp(tmpDir, "strata-convert-*.tar")
	if err != nil {
		return nil, 0, err
	}
	fail := func(err error) (*os.File, int64, error) {
		dst.Close()
		os.Remove(dst.Name())
		return nil, 0, err
	}
	tr := tar.NewReader(io.NewSectionReader(src, 0, n))
	tw := tar.NewWriter(dst)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(err)
		}
		h.ModTime = h.ModTime.Truncate(time.Second)
		if err := tw.WriteHeader(h); err != nil {
			return fail(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fail(err)
		}
	}
	if err := tw.Close(); err != nil {
		return fail(err)
	}
	size, err := dst.Seek(0, io.SeekCurrent)
	if err != nil {
		return fail(err)
	}
	return dst, size, nil
}

// spoolCompressed copies l's compressed bytes to a file in dir, where their
// digest is checked as they arrive (go-containerregistry's remote layers
// check it at the end of the stream), and returns the layer read from
// that file, and a function that removes it. Nothing is decompressed
// before the bytes are verified: a small blob that is not the layer could
// otherwise make the tar spooled from it any size (a compression bomb).
func spoolCompressed(l v1.Layer, dir string) (v1.Layer, func(), error) {
	d, err := l.Digest()
	if err != nil {
		return nil, nil, err
	}
	size, err := l.Size()
	if err != nil {
		return nil, nil, err
	}
	mt, err := l.MediaType()
	if err != nil {
		return nil, nil, err
	}
	want, err := digest.Parse(d.String())
	if err != nil {
		return nil, nil, err
	}
	// A read cut short or spoiled on the way is read again, from the
	// start, twice at most, as the registry reads of mounts and commits
	// are retried.
	var path string
	for try := 1; ; try++ {
		path, err = spoolOnce(l, dir, want, size)
		if err == nil || try == spoolTries || errors.Is(err, errLocal) {
			break
		}
		slog.Warn("convert: reading a layer failed; reading it again", "layer", d, "error", err)
	}
	if err != nil {
		return nil, nil, err
	}
	done := func() { os.Remove(path) }
	local, err := partial.CompressedToLayer(&spooledLayer{path: path, digest: d, size: size, mediaType: mt})
	if err != nil {
		done()
		return nil, nil, err
	}
	return local, done, nil
}

// spoolTries is how many times spoolCompressed reads a layer.
const spoolTries = 3

// errLocal marks a spool failure of this machine (its disk), which
// reading again does not mend.
var errLocal = errors.New("local")

// spoolOnce reads l's compressed bytes into a new file in dir once,
// checking their digest and size as they arrive, and returns its path.
func spoolOnce(l v1.Layer, dir string, want digest.Digest, size int64) (string, error) {
	rc, err := l.Compressed()
	if err != nil {
		return "", err
	}
	defer rc.Close()
	f, err := os.CreateTemp(dir, "strata-convert-*.blob")
	if err != nil {
		return "", fmt.Errorf("%w: %w", errLocal, err)
	}
	v := want.Verifier()
	n, err := io.Copy(io.MultiWriter(f, v), rc)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("%w: %w", errLocal, cerr)
	}
	if err == nil && (n != size || !v.Verified()) {
		err = fmt.Errorf("layer %s: %d bytes that are not its %d", want, n, size)
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// spooledLayer is a layer's compressed bytes, verified, in a local file.
type spooledLayer struct {
	path      string
	digest    v1.Hash
	size      int64
	mediaType types.MediaType
}

func (l *spooledLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *spooledLayer) Size() (int64, error)                { return l.size, nil }
func (l *spooledLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *spooledLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

type estargzLayer struct {
	v1.Layer
	diffID      v1.Hash
	annotations map[string]string
	missed      []string // prioritized paths of this layer it did not store first
}

// layer converts one layer. The uncompressed tar is spooled to disk because
// eStargz building needs random access to it. prioritize is given what the
// tar holds and deletes, and returns the paths to store first.
func layer(ctx context.Context, l v1.Layer, opt Options, prioritize func(*layerNames) []string) (*estargzLayer, error) {
	local, done, err := spoolCompressed(l, opt.TmpDir)
	if err != nil {
		return nil, fmt.Errorf("reading layer: %w", err)
	}
	defer done()
	rc, err := local.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	tarFile, err := os.CreateTemp(opt.TmpDir, "strata-convert-*.tar")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tarFile.Name())
	defer tarFile.Close()
	n, err := io.Copy(tarFile, rc)
	if err != nil {
		return nil, fmt.Errorf("reading layer: %w", err)
	}
	names, err := scanNames(io.NewSectionReader(tarFile, 0, n))
	if err != nil {
		return nil, fmt.Errorf("reading layer: %w", err)
	}
	prio := prioritize(names)
	if why := names.notEStargz; why != "" {
		// The layer stays a plain gzip tar, which keeps it as it is
		// (and which mounts lazily with an index, strata index).
		slog.WarnContext(ctx, "convert: layer kept as plain gzip, not eStargz", "reason", why)
		return gzipLayer(ctx, tarFile, n, opt, prio)
	}
	if tarFile, n, err = wholeSecondMtimes(tarFile, n, opt.TmpDir); err != nil {
		return nil, fmt.Errorf("reading layer: %w", err)
	}
	defer os.Remove(tarFile.Name())
	defer tarFile.Close()
	bopts := []estargz.Option{estargz.WithContext(ctx), estargz.WithParallelism(runtime.NumCPU())}
	if opt.ChunkSize > 0 {
		bopts = append(bopts, estargz.WithChunkSize(opt.ChunkSize))
	}
	var missed []string // files of other layers, or whose parents this layer lacks
	if len(prio) > 0 {
		bopts = append(bopts, estargz.WithPrioritizedFiles(prio), estargz.WithAllowPrioritizeNotFound(&missed))
	}
	blob, err := estargz.Build(io.NewSectionReader(tarFile, 0, n), bopts...)
	if err != nil {
		return nil, fmt.Errorf("building eStargz: %w", err)
	}
	defer blob.Close()
	outFile, err := os.CreateTemp(opt.TmpDir, "strata-estargz-*")
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(outFile, blob); err != nil {
		outFile.Close()
		os.Remove(outFile.Name())
		return nil, err
	}
	outFile.Close()
	usize, err := blob.UncompressedSize()
	if err != nil {
		return nil, err
	}
	fl, err := newFileLayer(outFile.Name(), blob.DiffID().String())
	if err != nil {
		return nil, err
	}
	tocOff, err := tocOffset(outFile.Name(), fl.size)
	if err != nil {
		return nil, err
	}
	slog.DebugContext(ctx, "layer converted", "diffID", blob.DiffID(), "size", fl.size)
	return &estargzLayer{
		Layer:  fl,
		diffID: fl.diffID,
		annotations: map[string]string{
			AnnotationTOCDigest:        blob.TOCDigest().String(),
			AnnotationUncompressedSize: strconv.FormatInt(usize, 10),
			AnnotationTOCOffset:        strconv.FormatInt(tocOff, 10),
		},
		missed: missed,
	}, nil
}

// tarName is a tar entry's name as a path from the layer's root.
func tarName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// gzipLayer is the tar of n bytes in tarFile as a plain gzip layer.
func gzipLayer(ctx context.Context, tarFile *os.File, n int64, opt Options, prio []string) (*estargzLayer, error) {
	outFile, err := os.CreateTemp(opt.TmpDir, "strata-gzip-*")
	if err != nil {
		return nil, err
	}
	diffID := sha256.New()
	zw := gzip.NewWriter(outFile)
	_, err = io.Copy(io.MultiWriter(zw, diffID), io.NewSectionReader(tarFile, 0, n))
	if err == nil {
		err = zw.Close()
	}
	if cerr := outFile.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(outFile.Name())
		return nil, err
	}
	fl, err := newFileLayer(outFile.Name(), "sha256:"+hex.EncodeToString(diffID.Sum(nil)))
	if err != nil {
		return nil, err
	}
	slog.DebugContext(ctx, "layer kept as gzip", "diffID", fl.diffID, "size", fl.size)
	return &estargzLayer{Layer: fl, diffID: fl.diffID, missed: prio}, nil
}

// tocOffset reads, from its footer, where the TOC of the eStargz blob of
// size bytes in file path starts. (The snapshotter's layer writer reads
// it the same way: neither package may import the other.)
func tocOffset(path string, size int64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if size < estargz.FooterSize {
		return 0, fmt.Errorf("eStargz blob of %d bytes has no footer", size)
	}
	footer := make([]byte, estargz.FooterSize)
	if _, err := f.ReadAt(footer, size-estargz.FooterSize); err != nil {
		return 0, fmt.Errorf("reading the eStargz footer: %w", err)
	}
	_, off, _, err := new(estargz.GzipDecompressor).ParseFooter(footer)
	if err != nil {
		return 0, fmt.Errorf("eStargz footer: %w", err)
	}
	return off, nil
}
