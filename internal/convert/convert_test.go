package convert

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/authn"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/stratafs/strata/remote"
)

// tarLayer is a layer of the given entries; a name ending in / is a
// directory, anything else a small file holding its name.
func tarLayer(t *testing.T, names ...string) v1.Layer {
	t.Helper()
	var hs []*tar.Header
	for _, n := range names {
		h := &tar.Header{Name: n, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(n))}
		if strings.HasSuffix(n, "/") {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		hs = append(hs, h)
	}
	return layerOf(t, hs...)
}

// layerOf is a layer of the given entries, a regular file's content its
// name over and over.
func layerOf(t *testing.T, entries ...*tar.Header) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			data := bytes.Repeat([]byte(h.Name), int(h.Size)/len(h.Name)+1)[:h.Size]
			if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// captureLogs sends the default logger's lines to the returned buffer
// until the test ends.
func captureLogs(t *testing.T) *bytes.Buffer {
	t.Helper()
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return &logs
}

// firstNames lists a converted layer's entries up to its prefetch landmark.
func firstNames(t *testing.T, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var out []string
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no landmark in the layer (%v); entries %v", err, out)
		}
		if h.Name == ".prefetch.landmark" || h.Name == ".no.prefetch.landmark" {
			return out
		}
		out = append(out, h.Name)
	}
}

// TestPrioritizeWarnsAboutPathsNoLayerStoredFirst converts an image whose
// second layer has a file but no entries for its parent directories (a
// tar of a tree's children under a prefix): eStargz cannot store that
// file first, and the conversion must say so rather than leave mounts
// slow without a word; a path in no layer is named too, and a path one
// layer stored first is not.
func TestPrioritizeWarnsAboutPathsNoLayerStoredFirst(t *testing.T) {
	img, err := mutate.AppendLayers(empty.Image,
		tarLayer(t, "etc/", "etc/hosts", "etc/passwd"),
		tarLayer(t, "usr/local/go/bin/go", "usr/local/go/VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	logs := captureLogs(t)

	out, err := Image(context.Background(), img, Options{TmpDir: t.TempDir(),
		Prioritize: []string{"etc/passwd", "usr/local/go/bin/go", "no/such/file"}})
	if err != nil {
		t.Fatal(err)
	}
	layers, err := out.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(firstNames(t, layers[0]), " "); got != "etc/ etc/passwd" {
		t.Errorf("first layer stores first %q, want the prioritized file and its parent", got)
	}
	if got := firstNames(t, layers[1]); len(got) != 0 {
		t.Errorf("second layer stores %v first; its file has no parent entries, so eStargz cannot", got)
	}
	msg := logs.String()
	for _, want := range []string{"prioritized paths not stored first", "paths=2", "usr/local/go/bin/go", "no/such/file"} {
		if !strings.Contains(msg, want) {
			t.Errorf("warning lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "etc/passwd") {
		t.Errorf("warning names etc/passwd, which the first layer stored first:\n%s", msg)
	}
}

// TestPrioritizeTheCopyTheImageShows: a prioritized path is stored first
// in the topmost layer that holds it, never in a lower layer whose copy an
// upper one replaces, deletes or hides; a path the image deletes is named
// in a warning, and so is one whose visible layer cannot store it first
// (no entries for its parent directories, as umoci writes a layer that
// changes a file only).
func TestPrioritizeTheCopyTheImageShows(t *testing.T) {
	lower := tarLayer(t, "etc/", "etc/big", "etc/small", "del/", "del/gone", "opq/", "opq/a", "file/", "file/x")
	for _, tc := range []struct {
		name              string
		upper             v1.Layer
		wantLower         string // what the lower layer stores first
		wantUpper         string
		notFirst, deleted []string
	}{
		{"upper without parent entries", tarLayer(t, "etc/big", "del/.wh.gone", "opq/.wh..wh..opq", "file"),
			"etc/ etc/small", "", []string{"/etc/big"}, []string{"/del/gone", "/opq/a", "/file/x"}},
		{"upper with parent entries", tarLayer(t, "etc/", "etc/big"),
			"etc/ etc/small del/ del/gone opq/ opq/a file/ file/x", "etc/ etc/big", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := mutate.AppendLayers(empty.Image, lower, tc.upper)
			if err != nil {
				t.Fatal(err)
			}
			logs := captureLogs(t)
			out, err := Image(context.Background(), img, Options{TmpDir: t.TempDir(),
				Prioritize: []string{"/etc/big", "/etc/small", "/del/gone", "/opq/a", "/file/x"}})
			if err != nil {
				t.Fatal(err)
			}
			layers, err := out.Layers()
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(firstNames(t, layers[0]), " "); got != tc.wantLower {
				t.Errorf("lower layer stores first %q, want %q", got, tc.wantLower)
			}
			if got := strings.Join(firstNames(t, layers[1]), " "); got != tc.wantUpper {
				t.Errorf("upper layer stores first %q, want %q", got, tc.wantUpper)
			}
			msg := logs.String()
			for _, p := range tc.notFirst {
				if !strings.Contains(msg, "not stored first") || !strings.Contains(msg, p) {
					t.Errorf("no warning that %s is not stored first:\n%s", p, msg)
				}
			}
			for _, p := range tc.deleted {
				if !strings.Contains(msg, "deletes or hides") || !strings.Contains(msg, p) {
					t.Errorf("no warning that the image deletes or hides %s:\n%s", p, msg)
				}
			}
			if tc.notFirst == nil && tc.deleted == nil && msg != "" {
				t.Errorf("warnings for an image whose every path is stored first:\n%s", msg)
			}
		})
	}
}

// A converted layer's descriptor says where its TOC starts, as its footer
// does, so that a mount fetches TOC and footer in one read of their size.
func TestConvertedLayerAnnotatesTOCOffset(t *testing.T) {
	out, m := convertLayers(t, tarLayer(t, "etc/", "etc/hosts"))
	layers, err := out.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, off, _, err := new(estargz.GzipDecompressor).ParseFooter(blob[len(blob)-estargz.FooterSize:])
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Layers[0].Annotations[AnnotationTOCOffset]; got != strconv.FormatInt(off, 10) {
		t.Errorf("TOC offset annotation %q, the footer says %d", got, off)
	}
}

// TestLayerWithNamesNotUTF8StaysGzip: an eStargz table of contents (JSON)
// would hold a name that is not UTF-8 mangled, so such a layer stays a
// plain gzip tar, with the same tar (diffID) and names, while the image's
// other layers are converted.
func TestLayerWithNamesNotUTF8StaysGzip(t *testing.T) {
	odd := tarLayer(t, "d/", "d/x\xff", "d/x\xfe")
	out, m := convertLayers(t, tarLayer(t, "etc/", "etc/hosts"), odd)
	if _, ok := m.Layers[0].Annotations[AnnotationTOCDigest]; !ok {
		t.Error("the first layer was not converted")
	}
	layers := keptGzip(t, out, m, 1, odd, "the layer with names that are not UTF-8")
	if names := layerEntryNames(t, layers[1]); strings.Join(names, "|") != "d/|d/x\xff|d/x\xfe" {
		t.Errorf("names %q", names)
	}
}

// convertLayers converts an image of layers and returns it and its manifest.
func convertLayers(t *testing.T, layers ...v1.Layer) (v1.Image, *v1.Manifest) {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Image(context.Background(), img, Options{TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	m, err := out.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return out, m
}

// TestLayerLinkingRewrittenNameStaysGzip: a layer that writes a, links b
// to it, then writes a again (b keeps the first content, as an unpack in
// order gives) cannot be eStargz, whose writer keeps one entry of a name,
// after the link: it stays plain gzip, the same tar. A link to a name
// written once converts.
func TestLayerLinkingRewrittenNameStaysGzip(t *testing.T) {
	// The second a differs from the first in mode and size.
	reg := func(name string, mode int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(name)) + mode}
	}
	link := &tar.Header{Name: "b", Typeflag: tar.TypeLink, Linkname: "./a", Mode: 0o644}
	rewritten := layerOf(t, reg("a", 0o644), link, reg("a", 0o600))
	once := layerOf(t, reg("a", 0o644), link, reg("c", 0o644))
	out, m := convertLayers(t, rewritten, once)
	keptGzip(t, out, m, 0, rewritten, "the layer linking to a name it writes twice")
	if _, ok := m.Layers[1].Annotations[AnnotationTOCDigest]; !ok {
		t.Error("the layer linking to a name it writes once was not converted")
	}
}

// TestLayerWithTheFormatsNamesStaysGzip: the eStargz writer drops root
// entries named as its table of contents or its landmarks, so a layer with
// a user's file of such a name stays plain gzip, the same tar; an eStargz
// layer's own (its 1-byte landmarks, its table of contents last) converts.
func TestLayerWithTheFormatsNamesStaysGzip(t *testing.T) {
	file := func(name string, size int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size}
	}
	for _, c := range []struct {
		name  string
		layer v1.Layer
	}{
		{"toc not last", layerOf(t, file("stargz.index.json", 9), file("etc", 3))},
		{"toc last, no landmark first", layerOf(t, file("etc", 3), file("stargz.index.json", 9))},
		{"toc last, landmark not first", layerOf(t, file("etc", 3), file(".prefetch.landmark", 1), file("stargz.index.json", 9))},
		{"toc a directory", layerOf(t, &tar.Header{Name: "stargz.index.json/", Typeflag: tar.TypeDir, Mode: 0o755})},
		{"landmark of 9 bytes", layerOf(t, file(".prefetch.landmark", 9), file("etc", 3))},
		{"no-prefetch landmark of 9 bytes", layerOf(t, file("./.no.prefetch.landmark", 9))},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, m := convertLayers(t, c.layer)
			keptGzip(t, out, m, 0, c.layer, "the layer with a user's "+c.name)
		})
	}
	// Below the root, the names are a user's like any other.
	sub := layerOf(t, file("sub/stargz.index.json", 9), file("sub/.prefetch.landmark", 9))
	if _, m := convertLayers(t, sub); m.Layers[0].Annotations[AnnotationTOCDigest] == "" {
		t.Error("a layer with the names below the root was not converted")
	}
	// An eStargz layer converts again: what it holds of its own is dropped
	// and written anew.
	out, _ := convertLayers(t, tarLayer(t, "etc/", "etc/hosts"))
	layers, err := out.Layers()
	if err != nil {
		t.Fatal(err)
	}
	again, m := convertLayers(t, layers[0])
	if m.Layers[0].Annotations[AnnotationTOCDigest] == "" {
		t.Fatal("an eStargz layer was not converted again")
	}
	relayers, err := again.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if a, b := layerEntryNames(t, layers[0]), layerEntryNames(t, relayers[0]); strings.Join(a, "|") != strings.Join(b, "|") {
		t.Errorf("converted again: names %q, first conversion %q", b, a)
	}
}

// layerEntryNames lists the names of layer l's tar entries.
func layerEntryNames(t *testing.T, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	for tr := tar.NewReader(rc); ; {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}

// keptGzip checks that layer i of the converted image out (manifest m) is
// src's tar as it was, not made eStargz, and returns out's layers.
func keptGzip(t *testing.T, out v1.Image, m *v1.Manifest, i int, src v1.Layer, what string) []v1.Layer {
	t.Helper()
	if _, ok := m.Layers[i].Annotations[AnnotationTOCDigest]; ok {
		t.Errorf("%s was made eStargz", what)
	}
	layers, err := out.Layers()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := src.DiffID()
	if got, _ := layers[i].DiffID(); got != want {
		t.Errorf("%s: diffID %s, the source's %s", what, got, want)
	}
	return layers
}

// TestConvertedMtimesAreWholeSeconds: an entry whose mtime has a fraction
// of a second gets it cut, not rounded, in the converted layer's tar and
// in its TOC alike, so a mount (from the TOC) and an unpack (from the tar)
// show the same second, the one an unpack of the source shows; the rest of
// the entry (owner, mode, xattrs, content) is as it was.
func TestConvertedMtimesAreWholeSeconds(t *testing.T) {
	late := time.Unix(1700000000, 700_000_000)
	early := time.Unix(1700000000, 200_000_000)
	src := layerOf(t,
		&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o750, ModTime: late, Format: tar.FormatPAX},
		&tar.Header{Name: "d/late", Typeflag: tar.TypeReg, Mode: 0o640, Size: 10, Uid: 1234, Gid: 5678, ModTime: late, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.k": "v"}},
		&tar.Header{Name: "d/early", Typeflag: tar.TypeReg, Mode: 0o600, Size: 7, ModTime: early, Format: tar.FormatPAX})
	out, _ := convertLayers(t, src)
	layers, err := out.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	want := time.Unix(1700000000, 0)
	seen := map[string]bool{}
	for tr := tar.NewReader(rc); ; {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "stargz.index.json" {
			var toc estargz.JTOC
			if err := json.NewDecoder(tr).Decode(&toc); err != nil {
				t.Fatal(err)
			}
			for _, e := range toc.Entries {
				if !strings.HasPrefix(e.Name, "d/") || e.Type == "chunk" {
					continue
				}
				if mt, err := time.Parse(time.RFC3339, e.ModTime3339); err != nil || !mt.Equal(want) {
					t.Errorf("TOC %s: mtime %q, want %v", e.Name, e.ModTime3339, want)
				}
			}
			continue
		}
		if !strings.HasPrefix(h.Name, "d/") {
			continue
		}
		seen[h.Name] = true
		if !h.ModTime.Equal(want) {
			t.Errorf("tar %s: mtime %v, want %v", h.Name, h.ModTime, want)
		}
		if h.Name == "d/late" && (h.Uid != 1234 || h.Gid != 5678 || h.Mode != 0o640 || h.PAXRecords["SCHILY.xattr.user.k"] != "v" || h.Size != 10) {
			t.Errorf("d/late: %+v, want its owner, mode, xattr and size kept", h)
		}
	}
	if len(seen) != 3 {
		t.Errorf("entries %v", seen)
	}
}

// lyingLayer is a layer whose compressed bytes are not those of the digest
// it gives, and which notes whether it was decompressed.
type lyingLayer struct {
	v1.Layer
	decompressed bool
}

func (l *lyingLayer) Digest() (v1.Hash, error) {
	return v1.NewHash("sha256:" + strings.Repeat("a", 64))
}

func (l *lyingLayer) Uncompressed() (io.ReadCloser, error) {
	l.decompressed = true
	return l.Layer.Uncompressed()
}

// TestLayerVerifiedBeforeDecompressed: a layer whose bytes do not match its
// digest is refused before any of it is decompressed (a small blob could
// decompress to anything: a bomb), and leaves nothing in the temporary
// directory.
func TestLayerVerifiedBeforeDecompressed(t *testing.T) {
	l := &lyingLayer{Layer: tarLayer(t, "etc/", "etc/hosts")}
	tmp := t.TempDir()
	_, err := layer(context.Background(), l, Options{TmpDir: tmp}, func(*layerNames) []string { return nil })
	if err == nil || !strings.Contains(err.Error(), "sha256:aaaa") {
		t.Errorf("err = %v, want the layer refused, named", err)
	}
	if l.decompressed {
		t.Error("the layer was decompressed before its bytes were verified")
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("left in the temporary directory: %v", left)
	}
}

// cutLayer is a layer whose first cut reads of its compressed bytes end
// half way with an unexpected EOF, as a connection cut mid-body.
type cutLayer struct {
	v1.Layer
	cut, reads int
}

func (l *cutLayer) Compressed() (io.ReadCloser, error) {
	l.reads++
	rc, err := l.Layer.Compressed()
	if err != nil || l.reads > l.cut {
		return rc, err
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	return io.NopCloser(io.MultiReader(bytes.NewReader(b[:len(b)/2]), iotest.ErrReader(io.ErrUnexpectedEOF))), nil
}

// TestLayerReadCutShortIsReadAgain: a source layer read cut short is read
// again (twice at most), and the conversion goes on; a third cut fails it.
func TestLayerReadCutShortIsReadAgain(t *testing.T) {
	for _, c := range []struct {
		cut int
		ok  bool
	}{{1, true}, {2, true}, {3, false}} {
		l := &cutLayer{Layer: tarLayer(t, "etc/", "etc/hosts"), cut: c.cut}
		tmp := t.TempDir()
		_, err := layer(context.Background(), l, Options{TmpDir: tmp}, func(*layerNames) []string { return nil })
		if (err == nil) != c.ok {
			t.Errorf("%d cut reads: err = %v", c.cut, err)
		}
		if !c.ok && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%d cut reads: err = %v, want the read's", c.cut, err)
		}
	}
}

// TestConvertKeepsWhatTheModelLacks: the converted image keeps its
// source's manifest annotations, each layer's annotations (but those of a
// table of contents the conversion replaces), and the config as written,
// fields go-containerregistry's model has not included; only the diff IDs
// change. containerd's converter keeps them likewise.
func TestConvertKeepsWhatTheModelLacks(t *testing.T) {
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:       tarLayer(t, "etc/", "etc/hosts"),
		Annotations: map[string]string{"com.example.layer": "kept", AnnotationTOCDigest: "sha256:" + strings.Repeat("0", 64)},
	})
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.Annotations(img, map[string]string{"org.opencontainers.image.source": "https://example.com/src"}).(v1.Image)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	raw := fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Healthcheck":{"Test":["CMD","true"],"StartInterval":5000000000}},`+
		`"rootfs":{"type":"layers","diff_ids":["%s"]},"moby.buildkit.buildinfo.v1":"e30=","history":[{"created_by":"x"}]}`, cf.RootFS.DiffIDs[0])
	src, err := remote.WithRawConfig(img, []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	out, err := Image(context.Background(), src, Options{TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	m, err := out.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Annotations["org.opencontainers.image.source"] != "https://example.com/src" {
		t.Errorf("manifest annotations %v", m.Annotations)
	}
	la := m.Layers[0].Annotations
	if la["com.example.layer"] != "kept" || la[AnnotationTOCDigest] == "sha256:"+strings.Repeat("0", 64) || la[AnnotationTOCDigest] == "" {
		t.Errorf("layer annotations %v", la)
	}
	got, err := out.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"StartInterval":5000000000`, `"moby.buildkit.buildinfo.v1":"e30="`, `"created_by":"x"`} {
		if !strings.Contains(string(got), want) {
			t.Errorf("converted config %s lacks %s", got, want)
		}
	}
	ocf, err := out.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	d, err := out.Layers()
	if err != nil {
		t.Fatal(err)
	}
	diffID, _ := d[0].DiffID()
	if len(ocf.RootFS.DiffIDs) != 1 || ocf.RootFS.DiffIDs[0] != diffID {
		t.Errorf("diff IDs %v, want the converted layer's %s", ocf.RootFS.DiffIDs, diffID)
	}
	if name, _ := out.ConfigName(); name != m.Config.Digest {
		t.Errorf("config %s, manifest names %s", name, m.Config.Digest)
	}
}

// TestConvertChoosesPlatformAsMountDoes: an index entry without a platform
// is for what its config says (go-containerregistry's own choice would take
// it for linux/amd64), and the best entry is taken, as a mount takes it.
func TestConvertChoosesPlatformAsMountDoes(t *testing.T) {
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	ropts := []remote.Option{remote.WithInsecureRegistries(host), remote.WithKeychain(authn.NewMultiKeychain())}
	image := func(arch, variant string) v1.Image {
		img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: tarLayer(t, "etc/", "etc/"+arch+variant)})
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf.OS, cf.Architecture, cf.Variant = "linux", arch, variant
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		return img
	}
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "s390x"
	}
	host1, host2 := image(runtime.GOARCH, ""), image(other, "")
	armv6 := image("arm", "v6")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: host2}, // no platform: its config says
		mutate.IndexAddendum{Add: host1, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
		mutate.IndexAddendum{Add: armv6, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"}}},
	)
	src, err := remote.ParseReference(host+"/multi:v1", ropts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.WriteIndex(src, idx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		platform *v1.Platform
		arch     string
		variant  string
	}{
		{nil, runtime.GOARCH, ""},
		{&v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, "arm", "v6"}, // v7 runs v6
		{&v1.Platform{OS: "linux", Architecture: other}, other, ""},
	} {
		opts := slices.Clone(ropts)
		if c.platform != nil {
			opts = append(opts, remote.WithPlatform(*c.platform))
		}
		dst := host + "/converted:" + c.arch + c.variant
		if _, err := Convert(t.Context(), host+"/multi:v1", dst, Options{TmpDir: t.TempDir()}, opts...); err != nil {
			t.Fatalf("%v: %v", c.platform, err)
		}
		ref, err := remote.ParseReference(dst, ropts...)
		if err != nil {
			t.Fatal(err)
		}
		img, err := ggcrremote.Image(ref)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != c.arch || cf.Variant != c.variant {
			t.Errorf("%v: converted %s/%s, want %s/%s", c.platform, cf.Architecture, cf.Variant, c.arch, c.variant)
		}
	}
}
