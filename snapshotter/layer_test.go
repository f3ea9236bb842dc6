package snapshotter_test

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/snapshotter"
)

var allFormats = []snapshotter.LayerFormat{
	snapshotter.FormatEStargz, snapshotter.FormatGzip, snapshotter.FormatZstd,
	snapshotter.FormatZstdChunked, snapshotter.FormatUncompressed,
}

// TestWriteLayer makes every kind of change in a real overlay, writes the
// layer in every format and reads it back; then makes the same changes in
// fresh overlays (another temporary directory and CPU count, and an upper
// directory on tmpfs) and expects the same digests.
func TestWriteLayer(t *testing.T) {
	requireRoot(t)
	defer syscall.Umask(syscall.Umask(0))
	ctx := context.Background()
	s := makeStep(t, testRoot(t), false)

	digests := map[snapshotter.LayerFormat]digest.Digest{}
	for _, f := range allFormats {
		t.Run(strings.ReplaceAll(string(f), ":", "-"), func(t *testing.T) {
			l := writeLayer(t, ctx, s, snapshotter.LayerOptions{Format: f, SourceDateEpoch: &epochTime})
			got := readLayer(t, l)
			checkEntries(t, s, got)
			for _, e := range got {
				want, ok := wantTimes[e.hdr.Name]
				if !ok {
					want = epochTime
				}
				if !e.hdr.ModTime.Equal(want) {
					t.Errorf("%s: mtime %v, want %v", e.hdr.Name, e.hdr.ModTime.Unix(), want.Unix())
				}
			}
			digests[f] = l.Digest
		})
	}

	t.Run("no-epoch", func(t *testing.T) {
		l := writeLayer(t, ctx, s, snapshotter.LayerOptions{Format: snapshotter.FormatUncompressed})
		for _, e := range readLayer(t, l) {
			want := time.Unix(0, 0)
			if !strings.Contains(e.hdr.Name, ".wh.") {
				var st syscall.Stat_t
				must(t, syscall.Lstat(filepath.Join(s.upper, e.hdr.Name), &st))
				want = time.Unix(st.Mtim.Sec, 0)
			}
			if !e.hdr.ModTime.Equal(want) {
				t.Errorf("%s: mtime %v, want %v", e.hdr.Name, e.hdr.ModTime, want)
			}
		}
	})

	// An explicit level 0 is gzip's "store": bigger than the default's
	// blob, never the default under another name.
	t.Run("level-0", func(t *testing.T) {
		zero := 0
		for _, f := range []snapshotter.LayerFormat{snapshotter.FormatGzip, snapshotter.FormatEStargz} {
			stored := writeLayer(t, ctx, s, snapshotter.LayerOptions{Format: f, CompressionLevel: &zero})
			def := writeLayer(t, ctx, s, snapshotter.LayerOptions{Format: f})
			if stored.Size <= def.Size {
				t.Errorf("%s: level 0 gave %d bytes, the default level %d: not stored", f, stored.Size, def.Size)
			}
		}
	})

	t.Run("applied-by-containerd", func(t *testing.T) {
		checkApplied(t, s, writeLayer(t, ctx, s, snapshotter.LayerOptions{Format: snapshotter.FormatGzip}))
	})

	reproduce := func(t *testing.T, s step) {
		for _, f := range allFormats {
			l := writeLayer(t, ctx, s, snapshotter.LayerOptions{Format: f, SourceDateEpoch: &epochTime})
			if l.Digest != digests[f] {
				t.Errorf("%s: digest %s, first run %s", f, l.Digest, digests[f])
			}
		}
	}
	t.Run("again-one-cpu", func(t *testing.T) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
		reproduce(t, makeStep(t, testRoot(t), false))
	})
	t.Run("again-on-tmpfs", func(t *testing.T) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(8))
		reproduce(t, makeStep(t, testRoot(t), true))
	})
}

// TestWriteLayerCancelled cancels a write half-way (when the socket is
// reached) and expects no file left behind.
func TestWriteLayerCancelled(t *testing.T) {
	requireRoot(t)
	defer syscall.Umask(syscall.Umask(0))
	s := makeStep(t, testRoot(t), false)
	for _, f := range allFormats {
		ctx, cancel := context.WithCancel(context.Background())
		tmp := t.TempDir()
		_, err := snapshotter.WriteLayer(ctx, s.lower, s.upper, snapshotter.LayerOptions{
			Format: f, TempDir: tmp, Warn: func(string, ...any) { cancel() },
		})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: error %v, want context.Canceled", f, err)
		}
		if left, _ := os.ReadDir(tmp); len(left) > 0 {
			t.Errorf("%s: left %v in TempDir", f, left)
		}
	}
}

func TestParseLayerFormat(t *testing.T) {
	for in, want := range map[string]snapshotter.LayerFormat{
		"": snapshotter.FormatEStargz, "estargz": snapshotter.FormatEStargz, "gzip": snapshotter.FormatGzip,
		"zstd": snapshotter.FormatZstd, "zstd:chunked": snapshotter.FormatZstdChunked,
		"uncompressed": snapshotter.FormatUncompressed,
	} {
		if got, err := snapshotter.ParseLayerFormat(in); err != nil || got != want {
			t.Errorf("ParseLayerFormat(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"tar", "GZIP", "zstd:", "estargz "} {
		if _, err := snapshotter.ParseLayerFormat(in); err == nil {
			t.Errorf("ParseLayerFormat(%q): no error", in)
		}
	}
}

// TestWriteLayerBadLevel expects levels a compressor would refuse or remap
// to be refused before anything is read or written.
func TestWriteLayerBadLevel(t *testing.T) {
	for _, c := range []struct {
		f     snapshotter.LayerFormat
		level int
	}{
		{snapshotter.FormatGzip, 10}, {snapshotter.FormatGzip, -3}, {snapshotter.FormatEStargz, 12},
		{snapshotter.FormatZstd, 23}, {snapshotter.FormatZstdChunked, -1}, {snapshotter.FormatUncompressed, 1},
		{snapshotter.FormatZstd, 0}, {snapshotter.FormatZstdChunked, 0},
	} {
		_, err := snapshotter.WriteLayer(context.Background(), "/nonexistent", "/nonexistent",
			snapshotter.LayerOptions{Format: c.f, CompressionLevel: &c.level, TempDir: "/nonexistent"})
		if err == nil || !strings.Contains(err.Error(), "compression level") {
			t.Errorf("%s level %d: error %v", c.f, c.level, err)
		}
	}
}

// writeLayer writes the layer of s into a temporary directory of its own
// and checks what WriteLayer says about it: the socket warned about, only
// the blob left, its digests and sizes, media type and annotations.
func writeLayer(t *testing.T, ctx context.Context, s step, o snapshotter.LayerOptions) *snapshotter.Layer {
	t.Helper()
	o.TempDir = t.TempDir()
	var warnings []string
	o.Warn = func(msg string, args ...any) { warnings = append(warnings, fmt.Sprint(msg, args)) }
	l, err := snapshotter.WriteLayer(ctx, s.lower, s.upper, o)
	if err != nil {
		t.Fatalf("%s: %v", o.Format, err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "socket") || !strings.Contains(warnings[0], "/new/sock") {
		t.Errorf("%s: warnings %q, want one for the socket /new/sock", o.Format, warnings)
	}
	if left, _ := os.ReadDir(o.TempDir); len(left) != 1 || left[0].Name() != filepath.Base(l.Path) {
		t.Errorf("%s: TempDir holds %v, want only the blob %s", o.Format, left, l.Path)
	}
	if l.Entries != len(wantEntries) {
		t.Errorf("%s: Entries %d, want %d", o.Format, l.Entries, len(wantEntries))
	}
	checkBlob(t, o.Format, l)
	return l
}

// checkBlob recomputes the blob's digest, size and diffID, and checks the
// media type and, for estargz and zstd:chunked, the annotations against
// the blob's own table of contents.
func checkBlob(t *testing.T, f snapshotter.LayerFormat, l *snapshotter.Layer) {
	t.Helper()
	blob, err := os.ReadFile(l.Path)
	must(t, err)
	if got := digest.FromBytes(blob); got != l.Digest || int64(len(blob)) != l.Size {
		t.Errorf("%s: blob %s %d bytes, Layer says %s %d", f, got, len(blob), l.Digest, l.Size)
	}
	r := decompress(t, l)
	diffID := digest.Canonical.Digester()
	n, err := io.Copy(diffID.Hash(), r)
	must(t, err)
	if diffID.Digest() != l.DiffID || n != l.UncompressedSize {
		t.Errorf("%s: tar %s %d bytes, Layer says %s %d", f, diffID.Digest(), n, l.DiffID, l.UncompressedSize)
	}
	wantType := map[snapshotter.LayerFormat]string{
		snapshotter.FormatEStargz: ocispec.MediaTypeImageLayerGzip, snapshotter.FormatGzip: ocispec.MediaTypeImageLayerGzip,
		snapshotter.FormatZstd: ocispec.MediaTypeImageLayerZstd, snapshotter.FormatZstdChunked: ocispec.MediaTypeImageLayerZstd,
		snapshotter.FormatUncompressed: ocispec.MediaTypeImageLayer,
	}[f]
	if l.MediaType != wantType {
		t.Errorf("%s: media type %s, want %s", f, l.MediaType, wantType)
	}
	if l.MediaType == ocispec.MediaTypeImageLayerGzip {
		zr, err := gzip.NewReader(strings.NewReader(string(blob)))
		must(t, err)
		if zr.Name != "" || zr.Comment != "" || !zr.ModTime.IsZero() {
			t.Errorf("%s: gzip header names %q %q, time %v", f, zr.Name, zr.Comment, zr.ModTime)
		}
	}
	switch f {
	case snapshotter.FormatEStargz, snapshotter.FormatZstdChunked:
		checkTOC(t, f, l, blob)
	default:
		if len(l.Annotations) > 0 {
			t.Errorf("%s: annotations %v", f, l.Annotations)
		}
	}
}

// checkTOC opens the blob as stargz-snapshotter would to mount it lazily.
func checkTOC(t *testing.T, f snapshotter.LayerFormat, l *snapshotter.Layer, blob []byte) {
	t.Helper()
	sr := io.NewSectionReader(strings.NewReader(string(blob)), 0, int64(len(blob)))
	r, err := estargz.Open(sr, estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		t.Fatalf("%s: estargz.Open: %v", f, err)
	}
	if got := l.Annotations[estargz.TOCJSONDigestAnnotation]; got != r.TOCDigest().String() {
		t.Errorf("%s: TOC digest annotation %q, blob's %s", f, got, r.TOCDigest())
	}
	if got := l.Annotations[estargz.StoreUncompressedSizeAnnotation]; got != strconv.FormatInt(l.UncompressedSize, 10) {
		t.Errorf("%s: uncompressed-size annotation %q, want %d", f, got, l.UncompressedSize)
	}
	keep, err := r.OpenFile("etc/keep")
	must(t, err)
	if b, _ := io.ReadAll(io.NewSectionReader(keep, 0, 100)); string(b) != "changed" {
		t.Errorf("%s: etc/keep through the TOC reads %q", f, b)
	}
	if f != snapshotter.FormatZstdChunked {
		// The TOC offset annotation is where the footer says the TOC is.
		_, off, _, err := new(estargz.GzipDecompressor).ParseFooter(blob[len(blob)-estargz.FooterSize:])
		must(t, err)
		if got := l.Annotations[snapshotter.AnnotationTOCOffset]; got != strconv.FormatInt(off, 10) {
			t.Errorf("%s: TOC offset annotation %q, the footer says %d", f, got, off)
		}
		if len(l.Annotations) != 3 {
			t.Errorf("%s: annotations %v", f, l.Annotations)
		}
		return
	}
	// The manifest annotations point at the compressed TOC in the blob.
	var off, size, rawSize, kind int
	pos := l.Annotations[zstdchunked.ManifestPositionAnnotation]
	if _, err := fmt.Sscanf(pos, "%d:%d:%d:%d", &off, &size, &rawSize, &kind); err != nil || off+size > len(blob) {
		t.Fatalf("%s: manifest position %q: %v", f, pos, err)
	}
	if got := digest.FromBytes(blob[off : off+size]).String(); got != l.Annotations[zstdchunked.ManifestChecksumAnnotation] {
		t.Errorf("%s: manifest checksum annotation %q, TOC at %q is %s", f, l.Annotations[zstdchunked.ManifestChecksumAnnotation], pos, got)
	}
}

func decompress(t *testing.T, l *snapshotter.Layer) io.Reader {
	t.Helper()
	f, err := os.Open(l.Path)
	must(t, err)
	t.Cleanup(func() { f.Close() })
	switch l.MediaType {
	case ocispec.MediaTypeImageLayerGzip:
		r, err := gzip.NewReader(f)
		must(t, err)
		return r
	case ocispec.MediaTypeImageLayerZstd:
		r, err := zstd.NewReader(f)
		must(t, err)
		t.Cleanup(r.Close)
		return r
	}
	return f
}

type tarEntry struct {
	hdr     *tar.Header
	content digest.Digest
}

// readLayer lists the tar entries of the layer, without the landmark and
// TOC entries estargz adds.
func readLayer(t *testing.T, l *snapshotter.Layer) []tarEntry {
	t.Helper()
	tr := tar.NewReader(decompress(t, l))
	var out []tarEntry
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", l.MediaType, err)
		}
		switch hdr.Name {
		case estargz.NoPrefetchLandmark, estargz.TOCTarName:
			continue
		}
		d, err := digest.Canonical.FromReader(tr)
		must(t, err)
		out = append(out, tarEntry{hdr: hdr, content: d})
	}
}

// layerNames lists the names of all the layer's tar entries (readLayer
// leaves out those an eStargz writer adds).
func layerNames(t *testing.T, l *snapshotter.Layer) []string {
	t.Helper()
	tr := tar.NewReader(decompress(t, l))
	var names []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names
		}
		must(t, err)
		names = append(names, hdr.Name)
	}
}

// checkEntries compares the entries with wantEntries, and their content,
// xattrs and the fields that must stay empty with what they should be.
func checkEntries(t *testing.T, s step, entries []tarEntry) {
	t.Helper()
	var got []string
	for _, e := range entries {
		h := e.hdr
		line := fmt.Sprintf("%s %c %o %d:%d", h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid)
		switch h.Typeflag {
		case tar.TypeLink, tar.TypeSymlink:
			line += " -> " + h.Linkname
		case tar.TypeChar, tar.TypeBlock:
			line += fmt.Sprintf(" %d:%d", h.Devmajor, h.Devminor)
		}
		got = append(got, line)
		if h.Uname != "" || h.Gname != "" || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() || h.Format&tar.FormatGNU != 0 {
			t.Errorf("%s: uname %q gname %q atime %v ctime %v format %v", h.Name, h.Uname, h.Gname, h.AccessTime, h.ChangeTime, h.Format)
		}
		xattrs := map[string]string{}
		for k, v := range h.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				xattrs[name] = v
			}
		}
		if want := wantXattrs[h.Name]; len(xattrs) != len(want) || !mapsEqual(xattrs, want) {
			t.Errorf("%s: xattrs %q, want %q", h.Name, xattrs, want)
		}
		if h.Typeflag == tar.TypeReg {
			checkContent(t, s, e)
		}
	}
	if !slices.Equal(got, wantEntries) {
		t.Errorf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantEntries, "\n"))
	}
}

func checkContent(t *testing.T, s step, e tarEntry) {
	t.Helper()
	want := digest.Canonical.FromString("")
	switch {
	case strings.Contains(e.hdr.Name, ".wh."):
	case e.hdr.Name == "new/sparse":
		// Holes read back as zeros.
		content := make([]byte, sparseSize)
		copy(content[1<<20:], "data")
		copy(content[sparseSize-3:], "end")
		want = digest.FromBytes(content)
	default:
		b, err := os.ReadFile(filepath.Join(s.upper, e.hdr.Name))
		must(t, err)
		want = digest.FromBytes(b)
	}
	if e.content != want {
		t.Errorf("%s: content %s, want %s", e.hdr.Name, e.content, want)
	}
}

func mapsEqual(a, b map[string]string) bool {
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestWriteLayerNamesATOCCannotHold: a JSON table of contents (eStargz,
// zstd:chunked) would hold a name, link target or xattr name that is not
// UTF-8 mangled, so a lazy mount would show another name than the tar
// holds: those formats refuse it, naming the path; the others keep it.
func TestWriteLayerNamesATOCCannotHold(t *testing.T) {
	requireRoot(t) // trusted xattrs
	for _, c := range []struct {
		name string
		make func(upper string) error
		want string
	}{
		{"name", func(u string) error { return os.WriteFile(filepath.Join(u, "d", "bad\xffbyte"), []byte("x"), 0o644) }, `"/d/bad\xffbyte": its name is not valid UTF-8`},
		{"dir", func(u string) error { return os.Mkdir(filepath.Join(u, "d", "dir\xfe"), 0o755) }, `"/d/dir\xfe": its name`},
		{"symlink", func(u string) error { return os.Symlink("to\xff", filepath.Join(u, "d", "link")) }, `"/d/link": its link target`},
		{"xattr", func(u string) error {
			p := filepath.Join(u, "d", "f")
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				return err
			}
			return unix.Lsetxattr(p, "user.bad\xff", []byte("v"), 0)
		}, `"/d/f": its extended attribute name`},
	} {
		t.Run(c.name, func(t *testing.T) {
			lower, upper := t.TempDir(), t.TempDir()
			must(t, os.Mkdir(filepath.Join(upper, "d"), 0o755))
			if err := c.make(upper); err != nil {
				t.Fatal(err)
			}
			for _, f := range allFormats {
				l, err := snapshotter.WriteLayer(context.Background(), lower, upper, snapshotter.LayerOptions{Format: f, TempDir: t.TempDir()})
				toc := f == snapshotter.FormatEStargz || f == snapshotter.FormatZstdChunked
				switch {
				case toc && (!errors.Is(err, snapshotter.ErrNotUTF8) || !strings.Contains(err.Error(), c.want)):
					t.Errorf("%s: %v, want an error saying %s", f, err, c.want)
				case !toc && err != nil:
					t.Errorf("%s: %v", f, err)
				case !toc:
					os.Remove(l.Path)
				}
			}
		})
	}
}

// TestWriteLayerNamesTheFormatKeeps: the eStargz writer (zstd:chunked's
// too) drops a root entry named as its table of contents or a prefetch
// landmark without a word, so those formats refuse a layer with one, naming
// it; the others keep it, and the names are the user's anywhere else.
func TestWriteLayerNamesTheFormatKeeps(t *testing.T) {
	for _, name := range []string{"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"} {
		for _, kind := range []string{"file", "dir"} {
			t.Run(name+"/"+kind, func(t *testing.T) {
				lower, upper := t.TempDir(), t.TempDir()
				if kind == "dir" {
					must(t, os.Mkdir(filepath.Join(upper, name), 0o755))
				} else {
					must(t, os.WriteFile(filepath.Join(upper, name), []byte("user data"), 0o644))
				}
				for _, f := range allFormats {
					l, err := snapshotter.WriteLayer(context.Background(), lower, upper, snapshotter.LayerOptions{Format: f, TempDir: t.TempDir()})
					toc := f == snapshotter.FormatEStargz || f == snapshotter.FormatZstdChunked
					switch {
					case toc && (!errors.Is(err, snapshotter.ErrNotInTOC) || !strings.Contains(err.Error(), `"/`+name+`"`)):
						t.Errorf("%s: %v, want an error naming /%s", f, err, name)
					case !toc && err != nil:
						t.Errorf("%s: %v", f, err)
					case !toc:
						if names := layerNames(t, l); !slices.Contains(names, name) && !slices.Contains(names, name+"/") {
							t.Errorf("%s: layer holds %q, want %s", f, names, name)
						}
						os.Remove(l.Path)
					}
				}
			})
		}
	}
	// Below the root the names are ordinary.
	lower, upper := t.TempDir(), t.TempDir()
	must(t, os.Mkdir(filepath.Join(upper, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(upper, "sub", "stargz.index.json"), []byte("user data"), 0o644))
	must(t, os.WriteFile(filepath.Join(upper, "sub", ".prefetch.landmark"), []byte("user data"), 0o644))
	for _, f := range []snapshotter.LayerFormat{snapshotter.FormatEStargz, snapshotter.FormatZstdChunked} {
		l, err := snapshotter.WriteLayer(context.Background(), lower, upper, snapshotter.LayerOptions{Format: f, TempDir: t.TempDir()})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		names := layerNames(t, l)
		for _, want := range []string{"sub/stargz.index.json", "sub/.prefetch.landmark"} {
			if !slices.Contains(names, want) {
				t.Errorf("%s: layer holds %q, want %s", f, names, want)
			}
		}
		os.Remove(l.Path)
	}
}

// TestWriteLayerLeavesOutWhiteoutNames: a file or directory the step named
// ".wh.x" would read as the deletion of x: left out with a warning, the
// rest of the layer as it is.
func TestWriteLayerLeavesOutWhiteoutNames(t *testing.T) {
	lower, upper := t.TempDir(), t.TempDir()
	must(t, os.MkdirAll(filepath.Join(upper, "d", ".wh.dir", "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(upper, "d", ".wh.user"), []byte("x"), 0o644))
	must(t, os.WriteFile(filepath.Join(upper, "d", ".wh.dir", "sub", "f"), []byte("x"), 0o644))
	must(t, os.WriteFile(filepath.Join(upper, "d", "kept"), []byte("k"), 0o644))
	var warnings []string
	l, err := snapshotter.WriteLayer(context.Background(), lower, upper, snapshotter.LayerOptions{
		Format: snapshotter.FormatUncompressed, TempDir: t.TempDir(),
		Warn: func(msg string, args ...any) { warnings = append(warnings, fmt.Sprint(msg, args)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range readLayer(t, l) {
		names = append(names, e.hdr.Name)
	}
	if !slices.Equal(names, []string{"d/", "d/kept"}) {
		t.Errorf("layer holds %q, want d/ and d/kept", names)
	}
	if len(warnings) < 2 || !strings.Contains(strings.Join(warnings, "\n"), "/d/.wh.user") || !strings.Contains(strings.Join(warnings, "\n"), "/d/.wh.dir") {
		t.Errorf("warnings %q, want ones naming /d/.wh.user and /d/.wh.dir", warnings)
	}
}
