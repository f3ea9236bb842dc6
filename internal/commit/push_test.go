package commit

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/internal/kmount"
	"github.com/stratafs/strata/test/fixture"
)

// logged is an in-process registry that records every request.
type logged struct {
	srv  *httptest.Server
	host string
	mu   sync.Mutex
	reqs []string
	// fail, when set, answers a request with 500 instead of serving it.
	fail func(r *http.Request) bool
}

func newRegistry(t *testing.T) *logged {
	t.Helper()
	l := &logged{}
	reg := registry.New(registry.Logger(nilLogger()))
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.reqs = append(l.reqs, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
		fail := l.fail != nil && l.fail(r)
		l.mu.Unlock()
		if fail {
			http.Error(w, "injected failure", http.StatusInternalServerError)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(l.srv.Close)
	l.host = strings.TrimPrefix(l.srv.URL, "http://")
	return l
}

func (l *logged) requests() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.reqs...)
}

func (l *logged) reset() {
	l.mu.Lock()
	l.reqs = nil
	l.mu.Unlock()
}

// pushBase pushes the standard fixture as eStargz to host/base:latest and
// returns its manifest and config.
func pushBase(t *testing.T, host string) (manifest, config []byte) {
	t.Helper()
	ctx := context.Background()
	img, err := fixture.Build(ctx, fixture.Standard(), fixture.FormEStargz, fixture.WithTempDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fixture.Push(ctx, img, host+"/base:latest"); err != nil {
		t.Fatal(err)
	}
	manifest, err = img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	config, err = img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return manifest, config
}

// newLayerFile writes a one-file gzip layer.
func newLayerFile(t *testing.T) *NewLayer {
	t.Helper()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	content := []byte("made by the step\n")
	tw.WriteHeader(&tar.Header{Name: "step.txt", Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg, Format: tar.FormatPAX, ModTime: time.Unix(1, 0)})
	tw.Write(content)
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tarBuf.Bytes())
	zw.Close()
	path := filepath.Join(t.TempDir(), "layer")
	if err := os.WriteFile(path, gz.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return &NewLayer{Path: path, Digest: sha(gz.Bytes()), Size: int64(gz.Len()), DiffID: sha(tarBuf.Bytes()), MediaType: types.OCILayer}
}

func sha(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func openerFor(host string) BlobOpener {
	return func(ctx context.Context, desc v1.Descriptor) (io.ReadCloser, error) {
		ref, err := name.NewDigest(host + "/base@" + desc.Digest.String())
		if err != nil {
			return nil, err
		}
		l, err := remote.Layer(ref, remote.WithContext(ctx))
		if err != nil {
			return nil, err
		}
		return l.Compressed()
	}
}

// baseOn pushes the base image to the registry at host and returns it as
// a commit's base.
func baseOn(t *testing.T, host string) *Base {
	t.Helper()
	manifest, config := pushBase(t, host)
	base, err := NewBase(context.Background(), mustRef(t, host+"/base:latest").Context(), manifest, config, openerFor(host))
	if err != nil {
		t.Fatal(err)
	}
	return base
}

func TestPushMountsBaseLayersAndUploadsOnlyNewBlobs(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t)
	base := baseOn(t, reg.host)
	created := time.Unix(1_700_000_000, 0)
	img, err := Build(base, Spec{Layer: newLayerFile(t), CreatedBy: "strata run -- touch /step.txt", Created: created})
	if err != nil {
		t.Fatal(err)
	}
	reg.reset()
	dst := mustRef(t, reg.host+"/app:v1")
	got, err := Push(ctx, img, base, dst)
	if err != nil {
		t.Fatal(err)
	}
	if base.StreamedBytes() != 0 {
		t.Errorf("%d bytes of base layers read for a push to the same registry", base.StreamedBytes())
	}
	// go-containerregistry's in-process registry keeps blobs across
	// repositories, so its HEAD finds the base's: no base blob may be
	// uploaded (cross-repository mounts are tested against distribution's
	// registry end to end).
	for _, d := range base.Descriptors() {
		if contains(reg.requests(), "digest="+strings.ReplaceAll(d.Digest.String(), ":", "%3A")) {
			t.Errorf("base blob %s uploaded; requests:\n%s", d.Digest, strings.Join(reg.requests(), "\n"))
		}
	}
	if last := reg.requests()[len(reg.requests())-1]; !strings.HasPrefix(last, "PUT /v2/app/manifests/v1") {
		t.Errorf("last request %q, want the manifest PUT", last)
	}
	pulled, err := remote.Image(mustRef(t, dst.String()))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := pulled.Digest(); d != got {
		t.Errorf("pulled digest %s, pushed %s", d, got)
	}
	checkManifest(t, pulled, base)
	cf, err := pulled.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	last := cf.History[len(cf.History)-1]
	if last.CreatedBy != "strata run -- touch /step.txt" || !last.Created.Time.Equal(created) || last.EmptyLayer {
		t.Errorf("new history entry %+v", last)
	}
	if !cf.Created.Time.Equal(created) {
		t.Errorf("created %v", cf.Created)
	}
}

// checkManifest checks that every base layer descriptor is in the new
// manifest as the base has it, followed by exactly one new layer.
func checkManifest(t *testing.T, img v1.Image, base *Base) {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	want := base.Descriptors()
	if len(m.Layers) != len(want)+1 {
		t.Fatalf("%d layers, want %d", len(m.Layers), len(want)+1)
	}
	for i, d := range want {
		a, _ := json.Marshal(d)
		b, _ := json.Marshal(m.Layers[i])
		if !bytes.Equal(a, b) {
			t.Errorf("layer %d:\n got %s\nwant %s", i, b, a)
		}
	}
}

func contains(reqs []string, s string) bool {
	for _, r := range reqs {
		if strings.Contains(r, s) {
			return true
		}
	}
	return false
}

func TestPushToAnotherRegistryStreamsBaseLayers(t *testing.T) {
	ctx := context.Background()
	src, dst := newRegistry(t), newRegistry(t)
	base := baseOn(t, src.host)
	img, err := Build(base, Spec{Layer: newLayerFile(t), Created: time.Unix(0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Push(ctx, img, base, mustRef(t, dst.host+"/app:v1")); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, d := range base.Descriptors() {
		total += d.Size
	}
	if base.StreamedBytes() != total {
		t.Errorf("streamed %d bytes, the base layers are %d", base.StreamedBytes(), total)
	}
	pulled, err := remote.Image(mustRef(t, dst.host+"/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	checkManifest(t, pulled, base)
	layers, _ := pulled.Layers()
	for _, l := range layers {
		rc, err := l.Compressed() // verified against the digest at EOF
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
}

func TestFailedManifestPutPublishesNothing(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t)
	base := baseOn(t, reg.host)
	img, err := Build(base, Spec{Layer: newLayerFile(t), Created: time.Unix(0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	reg.fail = func(r *http.Request) bool {
		return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/")
	}
	dst := mustRef(t, reg.host+"/app:v1")
	if _, err := Push(ctx, img, base, dst, remote.WithRetryBackoff(remote.Backoff{Steps: 1})); err == nil {
		t.Fatal("push succeeded with every manifest PUT failing")
	}
	reg.fail = nil
	if _, err := remote.Head(dst); err == nil {
		t.Fatal("a manifest was published")
	}
	// The same push again succeeds.
	if _, err := Push(ctx, img, base, dst); err != nil {
		t.Fatal(err)
	}
}

func TestEmptyCommitAddsHistoryOnly(t *testing.T) {
	reg := newRegistry(t)
	base := baseOn(t, reg.host)
	img, err := Build(base, Spec{CreatedBy: "nothing changed", Created: time.Unix(0, 0),
		Edits: []func(*v1.Config) error{func(c *v1.Config) error { c.Cmd = []string{"/bin/true"}; return nil }}})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	if len(m.Layers) != len(base.Descriptors()) {
		t.Errorf("%d layers, the base has %d", len(m.Layers), len(base.Descriptors()))
	}
	cf, _ := img.ConfigFile()
	baseCf, _ := base.ConfigFile()
	if len(cf.History) != len(baseCf.History)+1 || !cf.History[len(cf.History)-1].EmptyLayer {
		t.Errorf("history %+v", cf.History)
	}
	if len(cf.RootFS.DiffIDs) != len(baseCf.RootFS.DiffIDs) || fmt.Sprint(cf.Config.Cmd) != "[/bin/true]" {
		t.Errorf("config %+v", cf)
	}
}

func TestDocker(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t)
	base := baseOn(t, reg.host) // eStargz: TOC annotations
	withTOC := newLayerFile(t)
	withTOC.Annotations = map[string]string{"containerd.io/snapshot/stargz/toc.digest": "sha256:" + strings.Repeat("0", 64)}
	if _, err := Build(base, Spec{Layer: withTOC, Docker: true}); err == nil || !strings.Contains(err.Error(), "annotations") {
		t.Errorf("--docker with a TOC-annotated layer: %v", err)
	}
	zstd := newLayerFile(t)
	zstd.MediaType = types.OCILayerZStd
	if _, err := Build(base, Spec{Layer: zstd, Docker: true}); err == nil || !strings.Contains(err.Error(), "zstd") {
		t.Errorf("--docker with a zstd layer: %v", err)
	}
	img, err := Build(base, Spec{Layer: newLayerFile(t), Docker: true, Created: time.Unix(0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.DockerManifestSchema2 || m.Config.MediaType != types.DockerConfigJSON {
		t.Errorf("manifest %s, config %s", m.MediaType, m.Config.MediaType)
	}
	for i, d := range base.Descriptors() {
		if m.Layers[i].Digest != d.Digest || m.Layers[i].MediaType != dockerLayerType(d.MediaType) || m.Layers[i].Annotations[estargzTOC] != d.Annotations[estargzTOC] {
			t.Errorf("base layer %d: %+v, base has %+v", i, m.Layers[i], d)
		}
	}
	if last := m.Layers[len(m.Layers)-1]; last.MediaType != types.DockerLayer {
		t.Errorf("new layer media type %s", last.MediaType)
	}
	if _, err := Push(ctx, img, base, mustRef(t, reg.host+"/docker:v1")); err != nil {
		t.Fatal(err)
	}
}

const estargzTOC = "containerd.io/snapshot/stargz/toc.digest"

func TestWriteLayoutReplacesTag(t *testing.T) {
	reg := newRegistry(t)
	base := baseOn(t, reg.host)
	dir := filepath.Join(t.TempDir(), "layout")
	for i := range 2 {
		img, err := Build(base, Spec{Layer: newLayerFile(t), Created: time.Unix(int64(i), 0)})
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteLayout(img, dir, "v1", nil); err != nil {
			t.Fatal(err)
		}
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 {
		t.Fatalf("%d images in the layout, want 1", len(im.Manifests))
	}
	img, err := p.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validateLayers(img); err != nil {
		t.Fatal(err)
	}
}

// TestWriteLayoutConcurrentWritersKeepTags: commits into one layout at
// once (a new one, then an existing one) keep every tag, and index.json is
// never seen half written.
func TestWriteLayoutConcurrentWritersKeepTags(t *testing.T) {
	reg := newRegistry(t)
	base := baseOn(t, reg.host)
	const writers = 6
	imgs := make([]v1.Image, writers)
	for i := range imgs {
		img, err := Build(base, Spec{Layer: newLayerFile(t), Created: time.Unix(int64(i), 0)})
		if err != nil {
			t.Fatal(err)
		}
		imgs[i] = img
	}
	for round, existing := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "layout")
		if existing {
			must(t, WriteLayout(imgs[0], dir, "first", nil))
		}
		stop := make(chan struct{})
		readErr := make(chan error, 1)
		go func() { // a reader all along
			defer close(readErr)
			for {
				select {
				case <-stop:
					return
				default:
				}
				data, err := os.ReadFile(filepath.Join(dir, "index.json"))
				if err == nil && !json.Valid(data) {
					readErr <- fmt.Errorf("index.json read half written: %q", data)
					return
				}
			}
		}()
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for i := range writers {
			wg.Go(func() { errs[i] = WriteLayout(imgs[i], dir, fmt.Sprintf("t%d", i), nil) })
		}
		wg.Wait()
		close(stop)
		if err := <-readErr; err != nil {
			t.Error(err)
		}
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, writer %d: %v", round, i, err)
			}
		}
		p, err := layout.FromPath(dir)
		must(t, err)
		idx, err := p.ImageIndex()
		must(t, err)
		im, err := idx.IndexManifest()
		must(t, err)
		var tags []string
		for _, d := range im.Manifests {
			tags = append(tags, d.Annotations[refNameAnnotation])
		}
		slices.Sort(tags)
		want := []string{"t0", "t1", "t2", "t3", "t4", "t5"}
		if existing {
			want = append([]string{"first"}, want...)
		}
		if !slices.Equal(tags, want) {
			t.Errorf("round %d: tags %q, want %q", round, tags, want)
		}
	}
}

// TestWriteLayoutFailedPublishNamesNothing: when the push between the
// blobs and the naming fails, an existing layout keeps its index as it was
// and a layout the call made is gone.
func TestWriteLayoutFailedPublishNamesNothing(t *testing.T) {
	reg := newRegistry(t)
	base := baseOn(t, reg.host)
	img, err := Build(base, Spec{Layer: newLayerFile(t), Created: time.Unix(1, 0)})
	must(t, err)
	img2, err := Build(base, Spec{Layer: newLayerFile(t), Created: time.Unix(2, 0)})
	must(t, err)
	failed := errors.New("push refused")
	published := func() error { return failed }

	fresh := filepath.Join(t.TempDir(), "new")
	if err := WriteLayout(img, fresh, "v1", published); !errors.Is(err, failed) {
		t.Fatalf("err = %v, want the publish's", err)
	}
	if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the layout made for a failed publish is left: %v", err)
	}

	dir := filepath.Join(t.TempDir(), "old")
	must(t, WriteLayout(img, dir, "v1", nil))
	before, err := os.ReadFile(filepath.Join(dir, "index.json"))
	must(t, err)
	if err := WriteLayout(img2, dir, "v1", published); !errors.Is(err, failed) {
		t.Fatalf("err = %v, want the publish's", err)
	}
	after, err := os.ReadFile(filepath.Join(dir, "index.json"))
	must(t, err)
	if !bytes.Equal(before, after) {
		t.Errorf("a failed publish changed index.json:\n%s\nto\n%s", before, after)
	}
	called := false
	must(t, WriteLayout(img2, dir, "v1", func() error { called = true; return nil }))
	if !called {
		t.Error("publish not called")
	}
}

func validateLayers(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

func mustRef(t testing.TB, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestBuildRefusesMoreLayersThanOverlayfsStacks: a layer on a base of 500
// layers would make an image no runtime mounts; an empty commit on it is
// fine.
func TestBuildRefusesMoreLayersThanOverlayfsStacks(t *testing.T) {
	var m v1.Manifest
	var cfg v1.ConfigFile
	m.SchemaVersion, m.MediaType = 2, types.OCIManifestSchema1
	for i := range kmount.MaxOverlayLayers {
		d := sha([]byte(fmt.Sprint("layer ", i)))
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.OCILayer, Size: 1, Digest: d})
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, d)
	}
	cfg.RootFS.Type, cfg.OS, cfg.Architecture = "layers", "linux", "amd64"
	config, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Config = v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(config)), Digest: sha(config)}
	manifest, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	base, err := NewBase(context.Background(), mustRef(t, "127.0.0.1:1/deep:v1").Context(), manifest, config, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Build(base, Spec{Layer: newLayerFile(t)})
	if !errors.Is(err, ErrTooManyLayers) || !strings.Contains(err.Error(), "501 layers") {
		t.Errorf("a 501st layer: %v, want ErrTooManyLayers", err)
	}
	if _, err := Build(base, Spec{CreatedBy: "nothing changed"}); err != nil {
		t.Errorf("an empty commit on 500 layers: %v", err)
	}
}

// A new image inherits none of its base manifest's annotations: they
// describe the base (org.opencontainers.image.base.* name the base's own
// base). Its base layer descriptors keep theirs.
func TestNewImageLeavesBaseManifestAnnotations(t *testing.T) {
	img, err := fixture.Build(context.Background(), fixture.Standard(), fixture.FormEStargz, fixture.WithTempDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	baseM, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	baseM = baseM.DeepCopy()
	baseM.MediaType = "" // optional in a manifest: the new one says it
	baseM.Annotations = map[string]string{
		"org.opencontainers.image.base.name":   "registry.example/grandparent:1",
		"org.opencontainers.image.base.digest": "sha256:" + strings.Repeat("1", 64),
		"org.opencontainers.image.created":     "2020-01-01T00:00:00Z",
	}
	raw, err := json.Marshal(baseM)
	if err != nil {
		t.Fatal(err)
	}
	config, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	base, err := NewBase(context.Background(), mustRef(t, "registry.example/base:1").Context(), raw, config, openerFor("registry.example"))
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range []Spec{
		{Layer: newLayerFile(t)},
		{}, // no changes
		{Layer: newLayerFile(t), Docker: true},
	} {
		got, err := Build(base, spec)
		if err != nil {
			t.Fatal(err)
		}
		m, err := got.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Annotations) > 0 {
			t.Errorf("docker=%v layer=%v: the new manifest has the base's annotations %v", spec.Docker, spec.Layer != nil, m.Annotations)
		}
		if want := map[bool]types.MediaType{false: types.OCIManifestSchema1, true: types.DockerManifestSchema2}[spec.Docker]; m.MediaType != want {
			t.Errorf("docker=%v: the new manifest's media type is %q, want %q", spec.Docker, m.MediaType, want)
		}
		for i, d := range baseM.Layers {
			if m.Layers[i].Digest != d.Digest || m.Layers[i].Annotations[estargzTOC] == "" || m.Layers[i].Annotations[estargzTOC] != d.Annotations[estargzTOC] {
				t.Errorf("docker=%v: base layer %d became %+v, was %+v", spec.Docker, i, m.Layers[i], d)
			}
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
