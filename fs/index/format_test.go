package index

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

const (
	mtOCITar   = "application/vnd.oci.image.layer.v1.tar"
	mtOCIGzip  = "application/vnd.oci.image.layer.v1.tar+gzip"
	mtOCIZstd  = "application/vnd.oci.image.layer.v1.tar+zstd"
	mtDockerGz = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	mtDocker   = "application/vnd.docker.image.rootfs.diff.tar"
)

// formatBlobs returns a blob of each format Detect tells apart, made by
// the real writers, with the descriptor a registry would give it.
func formatBlobs(t testing.TB) map[string]struct {
	blob []byte
	desc Descriptor
	want Format
} {
	t.Helper()
	tarBytes := writeTar(t, fixtureEntries())
	esgz, tocDigest := buildEStargz(t, tarBytes)
	zchunked, _ := buildEStargz(t, tarBytes, estargz.WithCompression(zstdChunkedCompression{
		&zstdchunked.Compressor{CompressionLevel: zstd.SpeedFastest}, &zstdchunked.Decompressor{}}))
	desc := func(blob []byte, mt string, ann map[string]string) Descriptor {
		return Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob)), MediaType: mt, Annotations: ann}
	}
	emptyTar := make([]byte, 1024)
	cases := map[string]struct {
		blob []byte
		desc Descriptor
		want Format
	}{
		"estargz":               {esgz, desc(esgz, mtOCIGzip, map[string]string{AnnotationTOCDigest: tocDigest.String()}), FormatEStargz},
		"estargz-no-annotation": {esgz, desc(esgz, mtDockerGz, nil), FormatEStargz},
		"estargz-wrong-mt":      {esgz, desc(esgz, "application/octet-stream", nil), FormatEStargz},
		"zstd-chunked":          {zchunked, desc(zchunked, mtOCIZstd, nil), FormatZstdChunked},
		"gzip":                  {gzipBytes(t, tarBytes), desc(gzipBytes(t, tarBytes), mtOCIGzip, nil), FormatGzip},
		"gzip-says-tar":         {gzipBytes(t, tarBytes), desc(gzipBytes(t, tarBytes), mtOCITar, nil), FormatGzip},
		"zstd":                  {zstdBytes(t, tarBytes), desc(zstdBytes(t, tarBytes), mtOCIZstd, nil), FormatZstd},
		// pzstd's streams begin with a skippable frame (RFC 8878)
		"zstd-skippable-first":   {skippable(zstdBytes(t, tarBytes)), desc(skippable(zstdBytes(t, tarBytes)), mtOCIZstd, nil), FormatZstd},
		"tar":                    {tarBytes, desc(tarBytes, mtOCITar, nil), FormatTar},
		"tar-docker":             {tarBytes, desc(tarBytes, mtDocker, nil), FormatTar},
		"tar-says-gzip":          {tarBytes, desc(tarBytes, mtOCIGzip, nil), FormatTar},
		"empty-tar":              {emptyTar, desc(emptyTar, mtOCITar, nil), FormatTar},
		"zeros-not-said-tar":     {emptyTar, desc(emptyTar, "", nil), FormatUnknown},
		"garbage":                {randomBytes(7, 3000), desc(randomBytes(7, 3000), mtOCITar, nil), FormatUnknown},
		"truncated-to-magic":     {[]byte{0x1f, 0x8b}, desc([]byte{0x1f, 0x8b}, mtOCIGzip, nil), FormatGzip},
		"truncated-tar":          {tarBytes[:300], desc(tarBytes[:300], mtOCITar, nil), FormatUnknown},
		"empty-blob":             {nil, desc(nil, mtOCIGzip, nil), FormatUnknown},
		"estargz-truncated-tail": {esgz[:len(esgz)-10], desc(esgz[:len(esgz)-10], mtOCIGzip, nil), FormatGzip},
	}
	// A pre-POSIX (v7) tar has no magic number, only a header checksum.
	v7 := bytes.Clone(tarBytes)
	copy(v7[257:265], make([]byte, 8))
	setTarChecksum(v7[:512])
	cases["tar-v7"] = struct {
		blob []byte
		desc Descriptor
		want Format
	}{v7, desc(v7, "", nil), FormatTar}
	return cases
}

// zstdChunkedCompression is the estargz.Compression of zstd:chunked.
type zstdChunkedCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

// setTarChecksum rewrites a header block's checksum field.
func setTarChecksum(block []byte) {
	copy(block[148:156], "        ")
	var sum int64
	for _, c := range block {
		sum += int64(c)
	}
	copy(block[148:156], []byte(string(appendOctal(nil, sum, 6))+"\x00 "))
}

func appendOctal(b []byte, v int64, width int) []byte {
	digits := make([]byte, width)
	for i := width - 1; i >= 0; i-- {
		digits[i] = byte('0' + v%8)
		v /= 8
	}
	return append(b, digits...)
}

func TestDetect(t *testing.T) {
	for name, tc := range formatBlobs(t) {
		t.Run(name, func(t *testing.T) {
			got, err := Detect(context.Background(), bytes.NewReader(tc.blob), tc.desc)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Detect = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestReadRefusesWhatIsNotLazy: formats without a reader are refused with
// ErrNotLazy, which names the format, and never with ErrInvalid.
func TestReadRefusesWhatIsNotLazy(t *testing.T) {
	for name, tc := range formatBlobs(t) {
		if tc.want.Lazy() {
			continue
		}
		t.Run(name, func(t *testing.T) {
			_, err := Read(context.Background(), bytes.NewReader(tc.blob), tc.desc)
			if !errors.Is(err, ErrNotLazy) || errors.Is(err, ErrInvalid) {
				t.Fatalf("Read = %v, want ErrNotLazy", err)
			}
			if !bytes.Contains([]byte(err.Error()), []byte(string(tc.want))) {
				t.Errorf("error %q does not name the format %q", err, tc.want)
			}
		})
	}
}

// TestReadEStargzThroughTheSeam: Read finds an annotated eStargz layer's
// TOC with the one read ReadEStargz makes alone, and an unannotated one
// with no more.
func TestReadEStargzThroughTheSeam(t *testing.T) {
	blobs := formatBlobs(t)
	for _, name := range []string{"estargz", "estargz-no-annotation"} {
		tc := blobs[name]
		t.Run(name, func(t *testing.T) {
			r := &countingReaderAt{r: bytes.NewReader(tc.blob)}
			idx, err := Read(context.Background(), r, tc.desc)
			if err != nil {
				t.Fatal(err)
			}
			if idx.Format != FormatEStargz {
				t.Errorf("Format = %q", idx.Format)
			}
			if len(r.reads) != 1 {
				t.Errorf("%d reads of the blob, want 1: %v", len(r.reads), r.reads)
			}
			checkAgainstTar(t, idx, tc.blob, fixtureEntries())
		})
	}
}

// TestReadChecksTOCAnnotation: the annotation still pins the TOC when the
// layer comes through Read.
func TestReadChecksTOCAnnotation(t *testing.T) {
	tc := formatBlobs(t)["estargz"]
	tc.desc.Annotations = map[string]string{AnnotationTOCDigest: digest.FromString("another TOC").String()}
	_, err := Read(context.Background(), bytes.NewReader(tc.blob), tc.desc)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Read = %v, want ErrDigestMismatch", err)
	}
}

// TestDetectReadErrors: a blob that cannot be read is the reader's error,
// neither ErrInvalid nor ErrNotLazy.
func TestDetectReadErrors(t *testing.T) {
	tc := formatBlobs(t)["tar"]
	short := bytes.NewReader(tc.blob[:100]) // the descriptor promises more
	_, err := Detect(context.Background(), short, tc.desc)
	if err == nil || errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotLazy) {
		t.Fatalf("Detect of a short blob = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Read(ctx, bytes.NewReader(tc.blob), tc.desc); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read with a cancelled context = %v", err)
	}
}

// TestProbeReadAtSameAsBlob: whatever part of a read the probe serves
// from its head and tail, the read returns what the blob holds, and
// fetches from the blob only what neither holds.
func TestProbeReadAtSameAsBlob(t *testing.T) {
	blob := randomBytes(41, 3000)
	br := bytes.NewReader(blob)
	r := &countingReaderAt{r: br}
	p := newProbe(r, int64(len(blob)), 1000)
	p.head, p.tail, p.tailOff = blob[:512], blob[2000:], 2000
	for _, rd := range [][2]int64{
		{0, 3000}, {0, 512}, {100, 300}, {100, 600}, {500, 1600}, {511, 1490}, {2000, 1000}, {2500, 500},
		{1999, 2}, {0, 3001}, {2900, 200}, {3000, 1}, {1000, 1000}, {0, 0}, {3000, 0}, {513, 2487},
	} {
		r.reads = nil
		want := make([]byte, rd[1])
		wn, werr := br.ReadAt(want, rd[0])
		got := make([]byte, rd[1])
		n, err := p.ReadAt(got, rd[0])
		if n != wn || (err == nil) != (werr == nil) || !bytes.Equal(got[:n], want[:wn]) {
			t.Errorf("ReadAt(%d bytes at %d) = %d, %v; the blob gives %d, %v", rd[1], rd[0], n, err, wn, werr)
		}
		// Fetched: the part before the tail and after the head, unless
		// the read runs past the blob's end (the tail is not used then).
		lo, hi := max(rd[0], 512), rd[0]+rd[1]
		if hi <= 3000 {
			hi = min(hi, 2000)
		}
		var fetched int64
		for _, f := range r.reads {
			fetched += f[1]
		}
		if want := max(hi-lo, 0); fetched != want {
			t.Errorf("ReadAt(%d bytes at %d) fetched %v, want %d bytes", rd[1], rd[0], r.reads, want)
		}
	}
}

// TestCheckDescriptor: an index made from one descriptor of a blob keeps
// the TOC digest that descriptor named and checked; another descriptor of
// the blob naming another TOC, or giving another size, is refused, and
// one that names none, or the same, is not.
func TestCheckDescriptor(t *testing.T) {
	blobs := formatBlobs(t)
	tc := blobs["estargz"]
	idx, err := Read(context.Background(), bytes.NewReader(tc.blob), tc.desc)
	if err != nil {
		t.Fatal(err)
	}
	want := digest.Digest(tc.desc.Annotations[AnnotationTOCDigest])
	if idx.TOCDigest != want {
		t.Fatalf("index TOC digest %q, want the annotation's %q", idx.TOCDigest, want)
	}
	info := NewMemory(idx, tc.desc.Size).Info()
	if info.TOCDigest != want {
		t.Fatalf("info TOC digest %q", info.TOCDigest)
	}
	if err := CheckDescriptor(info, tc.desc); err != nil {
		t.Errorf("the same descriptor: %v", err)
	}
	bare := tc.desc
	bare.Annotations = nil
	if err := CheckDescriptor(info, bare); err != nil {
		t.Errorf("a descriptor without the annotation: %v", err)
	}
	other := tc.desc
	other.Annotations = map[string]string{AnnotationTOCDigest: digest.FromString("another TOC").String()}
	if err := CheckDescriptor(info, other); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("another TOC digest: %v, want ErrDigestMismatch", err)
	}
	bigger := tc.desc
	bigger.Size = 1 << 50
	if err := CheckDescriptor(info, bigger); !errors.Is(err, ErrInvalid) {
		t.Errorf("another size: %v, want ErrInvalid", err)
	}
	// Made without an annotation: nothing to hold another against.
	plain, err := Read(context.Background(), bytes.NewReader(blobs["estargz-no-annotation"].blob), blobs["estargz-no-annotation"].desc)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckDescriptor(NewMemory(plain, tc.desc.Size).Info(), other); err != nil {
		t.Errorf("index made without an annotation: %v", err)
	}
	// A layer fetched whole: its size is its tar's.
	if err := CheckDescriptor(Info{BlobSize: 99, Unpacked: digest.FromString("tar")}, tc.desc); err != nil {
		t.Errorf("a layer fetched whole: %v", err)
	}
}

// skippable is z behind a zstd skippable frame of 8 bytes of its own.
func skippable(z []byte) []byte {
	return append([]byte{0x50, 0x2a, 0x4d, 0x18, 8, 0, 0, 0, 'p', 'z', 's', 't', 'd', 0, 0, 0}, z...)
}
