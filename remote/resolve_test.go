package remote_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

// tamperer corrupts responses whose path contains match (when set), to play
// a registry or proxy serving bytes that are not what their digest says.
type tamperer struct {
	next  http.Handler
	match atomic.Pointer[string]
}

func (tp *tamperer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := tp.match.Load()
	if m == nil || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, *m) {
		tp.next.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	tp.next.ServeHTTP(rec, r)
	for k, vs := range rec.Header() {
		if k != "Content-Length" {
			w.Header()[k] = vs
		}
	}
	w.WriteHeader(rec.Code)
	body := rec.Body.Bytes()
	if strings.Contains(r.URL.Path, "/blobs/") && len(body) > 0 {
		// Same length, so only the digest can tell.
		body[len(body)/2] ^= 0x01
	} else {
		// Still valid JSON, and the same image, but not the same bytes.
		body = append(body, '\n')
	}
	w.Write(body)
}

// regFixture is a registry with a tampering front; pushes go around it.
type regFixture struct {
	host, raw string
	tp        *tamperer
}

func newRegFixture(t *testing.T) *regFixture {
	reg := newRegistry()
	tp := &tamperer{next: reg}
	return &regFixture{host: startServer(t, tp), raw: startServer(t, reg), tp: tp}
}

func (f *regFixture) tamper(path string) { f.tp.match.Store(&path) }

func (f *regFixture) push(t *testing.T, repoTag string, img v1.Image) {
	t.Helper()
	ref, err := name.ParseReference(f.raw + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(ref, img); err != nil {
		t.Fatalf("pushing %s: %v", repoTag, err)
	}
}

func (f *regFixture) pushIndex(t *testing.T, repoTag string, idx v1.ImageIndex) {
	t.Helper()
	ref, err := name.ParseReference(f.raw + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.WriteIndex(ref, idx); err != nil {
		t.Fatalf("pushing %s: %v", repoTag, err)
	}
}

// putManifest stores raw bytes under a tag with any media type, as an old
// or foreign client might have pushed them.
func (f *regFixture) putManifest(t *testing.T, repo, tag, mediaType, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, "http://"+f.raw+"/v2/"+repo+"/manifests/"+tag, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest: %s", resp.Status)
	}
}

func imageWithAnnotatedLayer(t *testing.T) v1.Image {
	t.Helper()
	l, err := random.Layer(2048, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:       l,
		Annotations: map[string]string{"containerd.io/snapshot/stargz/toc.digest": "sha256:0123"},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.AppendLayers(img, mustLayer(t, 1024))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg.OS, cfg.Architecture = "linux", "riscv64"
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return mutate.MediaType(img, types.OCIManifestSchema1)
}

func mustLayer(t *testing.T, size int64) v1.Layer {
	l, err := random.Layer(size, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func checkImage(t *testing.T, got *remote.Image, want v1.Image) {
	t.Helper()
	wd, _ := want.Digest()
	wm, _ := want.RawManifest()
	wc, _ := want.RawConfigFile()
	wmt, _ := want.MediaType()
	if got.Digest.String() != wd.String() || !bytes.Equal(got.Manifest, wm) || !bytes.Equal(got.Config, wc) || got.MediaType != wmt {
		t.Fatalf("Resolve gave digest %s type %s; want %s %s (manifest equal %v, config equal %v)",
			got.Digest, got.MediaType, wd, wmt, bytes.Equal(got.Manifest, wm), bytes.Equal(got.Config, wc))
	}
	mf, _ := want.Manifest()
	if len(got.Layers) != len(mf.Layers) {
		t.Fatalf("%d layers, want %d", len(got.Layers), len(mf.Layers))
	}
	for i, l := range mf.Layers {
		g := got.Layers[i]
		if g.Digest.String() != l.Digest.String() || g.Size != l.Size || g.MediaType != l.MediaType || len(g.Annotations) != len(l.Annotations) {
			t.Fatalf("layer %d = %+v, want %+v", i, g, l)
		}
		for k, v := range l.Annotations {
			if g.Annotations[k] != v {
				t.Fatalf("layer %d annotation %s = %q, want %q", i, k, g.Annotations[k], v)
			}
		}
	}
}

func TestResolveImageByTagAndDigest(t *testing.T) {
	f := newRegFixture(t)
	img := imageWithAnnotatedLayer(t)
	f.push(t, "test/img:v1", img)

	got, err := remote.Resolve(t.Context(), f.host+"/test/img:v1", anonymous)
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, got, img)
	if got.Platform.OS != "linux" || got.Platform.Architecture != "riscv64" {
		t.Fatalf("Platform = %+v, want the config's linux/riscv64", got.Platform)
	}
	if got.Repo.String() != f.host+"/test/img" || got.Ref.Identifier() != "v1" {
		t.Fatalf("Repo = %s, Ref = %s", got.Repo, got.Ref)
	}
	byDigest, err := remote.Resolve(t.Context(), f.host+"/test/img@"+got.Digest.String(), anonymous)
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, byDigest, img)
}

// pushPlatformIndex pushes an index of a random image for each platform
// and returns the images by platform.
func (f *regFixture) pushPlatformIndex(t *testing.T, ref string, platforms []v1.Platform) map[string]v1.Image {
	t.Helper()
	var idx v1.ImageIndex = empty.Index
	imgs := map[string]v1.Image{}
	for _, p := range platforms {
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		imgs[p.String()] = img
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	f.pushIndex(t, ref, idx)
	return imgs
}

func TestResolveIndexPicksPlatform(t *testing.T) {
	f := newRegFixture(t)
	platforms := []v1.Platform{
		{OS: "unknown", Architecture: "unknown"}, // like a buildx attestation
		{OS: "linux", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64", Variant: "v8"},
		{OS: "linux", Architecture: "s390x"},
	}
	imgs := f.pushPlatformIndex(t, "test/multi:v1", platforms)

	for _, want := range []v1.Platform{platforms[2], {OS: "linux", Architecture: "arm64"}, platforms[3]} {
		got, err := remote.Resolve(t.Context(), f.host+"/test/multi:v1", anonymous, remote.WithPlatform(want))
		if err != nil {
			t.Fatalf("platform %s: %v", want, err)
		}
		chosen := platforms[2]
		if want.Architecture == "s390x" {
			chosen = platforms[3]
		}
		checkImage(t, got, imgs[chosen.String()])
		if got.Platform.String() != chosen.String() {
			t.Fatalf("Platform = %s, want %s", got.Platform, chosen)
		}
	}
	_, err := remote.Resolve(t.Context(), f.host+"/test/multi:v1", anonymous, remote.WithPlatform(v1.Platform{OS: "windows", Architecture: "amd64"}))
	if !errors.Is(err, remote.ErrNoMatchingPlatform) || !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "no manifest for platform windows/amd64: index ") {
		t.Fatalf("err = %v, want ErrNoMatchingPlatform listing what is offered", err)
	}
}

// TestResolveIndexPlatformSpellings: platforms are matched as containerd
// spells them: linux/arm64/v8 is the arm64 entry without a variant,
// linux/arm/v7 the arm one without a variant, x86_64 is amd64.
func TestResolveIndexPlatformSpellings(t *testing.T) {
	f := newRegFixture(t)
	offered := []v1.Platform{
		{OS: "linux", Architecture: "arm64"},
		{OS: "linux", Architecture: "arm"},
		{OS: "linux", Architecture: "amd64"},
	}
	imgs := f.pushPlatformIndex(t, "test/spellings:v1", offered)
	for _, c := range []struct{ want, chosen v1.Platform }{
		{v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, offered[0]},
		{v1.Platform{OS: "linux", Architecture: "aarch64"}, offered[0]},
		{v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, offered[1]},
		{v1.Platform{OS: "linux", Architecture: "x86_64"}, offered[2]},
	} {
		want, chosen := c.want, c.chosen
		got, err := remote.Resolve(t.Context(), f.host+"/test/spellings:v1", anonymous, remote.WithPlatform(want))
		if err != nil {
			t.Errorf("platform %s: %v", want, err)
			continue
		}
		checkImage(t, got, imgs[chosen.String()])
	}
	if _, err := remote.Resolve(t.Context(), f.host+"/test/spellings:v1", anonymous,
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"})); !errors.Is(err, remote.ErrNoMatchingPlatform) {
		t.Errorf("linux/arm/v6 from an index whose arm entry is v7: %v", err)
	}
}

// TestResolveIndexPicksBestPlatform: every entry is weighed and the best
// taken, in containerd's order: the wanted variant before older ones
// listed first, an older variant when the wanted one is missing (arm/v7
// runs arm/v6; amd64/v2 runs amd64), never a newer one (plain amd64 does
// not take amd64/v4, the default on an amd64 machine).
func TestResolveIndexPicksBestPlatform(t *testing.T) {
	f := newRegFixture(t)
	p := func(arch, variant string) v1.Platform {
		return v1.Platform{OS: "linux", Architecture: arch, Variant: variant}
	}
	for _, c := range []struct {
		name    string
		offered []v1.Platform
		want    *v1.Platform // nil: the default, this machine's
		chosen  int          // index into offered; -1: none
	}{
		{"amd64 after amd64/v4", []v1.Platform{p("amd64", "v4"), p("amd64", ""), p("arm64", "")}, &v1.Platform{OS: "linux", Architecture: "amd64"}, 1},
		{"amd64/v2 takes amd64", []v1.Platform{p("arm64", ""), p("amd64", "")}, &v1.Platform{OS: "linux", Architecture: "amd64", Variant: "v2"}, 1},
		{"amd64/v3 takes v2 before amd64", []v1.Platform{p("amd64", ""), p("amd64", "v2"), p("amd64", "v4")}, &v1.Platform{OS: "linux", Architecture: "amd64", Variant: "v3"}, 1},
		{"amd64 only v4", []v1.Platform{p("amd64", "v4")}, &v1.Platform{OS: "linux", Architecture: "amd64"}, -1},
		{"arm/v7 takes v6", []v1.Platform{p("arm", "v6"), p("arm64", "")}, &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, 0},
		{"arm/v7 before v6 listed first", []v1.Platform{p("arm", "v5"), p("arm", "v6"), p("arm", "v7")}, &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, 2},
		{"arm/v6 not v7", []v1.Platform{p("arm", "v7")}, &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"}, -1},
		{"arm64/v8 is arm64", []v1.Platform{p("arm", "v7"), p("arm64", "")}, &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref := f.host + "/test/best:" + strings.NewReplacer(" ", "-", "/", "-").Replace(c.name)
			imgs := f.pushPlatformIndex(t, strings.TrimPrefix(ref, f.host+"/"), c.offered)
			opts := []remote.Option{anonymous}
			if c.want != nil {
				opts = append(opts, remote.WithPlatform(*c.want))
			}
			got, err := remote.Resolve(t.Context(), ref, opts...)
			if c.chosen < 0 {
				if !errors.Is(err, remote.ErrNoMatchingPlatform) {
					t.Fatalf("err = %v, want ErrNoMatchingPlatform", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkImage(t, got, imgs[c.offered[c.chosen].String()])
			if got.Platform.String() != c.offered[c.chosen].String() {
				t.Errorf("Platform = %s, want %s", got.Platform, c.offered[c.chosen])
			}
		})
	}
}

func TestPlatformMatches(t *testing.T) {
	p := func(s string) v1.Platform {
		pp, err := v1.ParsePlatform(s)
		if err != nil {
			t.Fatal(err)
		}
		return *pp
	}
	for _, c := range []struct {
		have, want string
		ok         bool
	}{
		{"linux/amd64", "linux/amd64", true},
		{"linux/x86_64", "linux/amd64", true},
		{"linux/amd64", "linux/amd64/v3", true},
		{"linux/amd64/v3", "linux/amd64", false},
		{"linux/386", "linux/amd64", true},
		{"linux/amd64", "linux/386", false},
		{"linux/arm64", "linux/arm64/v8", true},
		{"linux/aarch64", "linux/arm64", true},
		{"linux/arm", "linux/arm/v7", true},
		{"linux/arm/v6", "linux/arm/v7", true},
		{"linux/arm/v7", "linux/arm/v6", false},
		{"linux/arm/v7", "linux/arm64", true},
		{"linux/arm64", "linux/arm/v7", false},
		{"windows/amd64", "linux/amd64", false},
		{"linux/amd64:10.0.1", "linux/amd64:10.0.1", true},
		{"linux/amd64:10.0.2", "linux/amd64:10.0.1", false},
		{"linux/amd64:10.0.2", "linux/amd64", true},
	} {
		if got := remote.PlatformMatches(p(c.have), p(c.want)); got != c.ok {
			t.Errorf("PlatformMatches(%s, %s) = %v, want %v", c.have, c.want, got, c.ok)
		}
	}
}

// TestResolveIndexEntryWithoutPlatform: an index entry need not say its
// platform; the image's config says it, as containerd reads it.
func TestResolveIndexEntryWithoutPlatform(t *testing.T) {
	f := newRegFixture(t)
	var idx v1.ImageIndex = empty.Index
	imgs := map[string]v1.Image{}
	for _, arch := range []string{"s390x", "amd64"} {
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf.OS, cf.Architecture = "linux", arch
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		imgs[arch] = img
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img})
	}
	f.pushIndex(t, "test/noplatform:v1", idx)
	for _, arch := range []string{"amd64", "s390x"} {
		got, err := remote.Resolve(t.Context(), f.host+"/test/noplatform:v1", anonymous, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}))
		if err != nil {
			t.Errorf("%s: %v", arch, err)
			continue
		}
		checkImage(t, got, imgs[arch])
	}
	_, err := remote.Resolve(t.Context(), f.host+"/test/noplatform:v1", anonymous, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "riscv64"}))
	if !errors.Is(err, remote.ErrNoMatchingPlatform) || !strings.Contains(err.Error(), "linux/s390x") {
		t.Errorf("riscv64: %v, want ErrNoMatchingPlatform naming what the configs offer", err)
	}
}

func TestResolveRefusesSchema1AndUnknown(t *testing.T) {
	f := newRegFixture(t)
	f.putManifest(t, "test/old", "v1", string(types.DockerManifestSchema1Signed),
		`{"schemaVersion":1,"name":"test/old","tag":"v1","architecture":"amd64","fsLayers":[],"history":[]}`)
	_, err := remote.Resolve(t.Context(), f.host+"/test/old:v1", anonymous)
	if !errors.Is(err, remote.ErrUnsupportedMediaType) || !strings.Contains(err.Error(), "schema 1") {
		t.Fatalf("schema1: err = %v, want ErrUnsupportedMediaType mentioning schema 1", err)
	}
	const widget = "application/vnd.example.widget.v1+json"
	f.putManifest(t, "test/widget", "v1", widget, `{"schemaVersion":2,"mediaType":"`+widget+`"}`)
	_, err = remote.Resolve(t.Context(), f.host+"/test/widget:v1", anonymous)
	if !errors.Is(err, remote.ErrUnsupportedMediaType) || !strings.Contains(err.Error(), widget) {
		t.Fatalf("unknown: err = %v, want ErrUnsupportedMediaType naming the type", err)
	}
}

func TestResolveRefusesTamperedBytes(t *testing.T) {
	f := newRegFixture(t)
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	f.push(t, "test/img:v1", img)
	d, _ := img.Digest()
	cfg, _ := img.ConfigName()
	var plat v1.Platform = v1.Platform{OS: "linux", Architecture: "amd64"}
	f.pushIndex(t, "test/idx:v1", mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &plat}}))

	cases := []struct{ name, ref, tamper string }{
		{"manifest by digest", "test/img@" + d.String(), "/manifests/" + d.String()},
		{"manifest by tag vs Docker-Content-Digest", "test/img:v1", "/manifests/v1"},
		{"index entry", "test/idx:v1", "/manifests/" + d.String()},
		{"config", "test/img:v1", "/blobs/" + cfg.String()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f.tamper(c.tamper)
			_, err := remote.Resolve(t.Context(), f.host+"/"+c.ref, anonymous, remote.WithPlatform(plat), fastRetry)
			if !errors.Is(err, remote.ErrDigestMismatch) || !errors.Is(err, errdefs.ErrDataLoss) {
				t.Fatalf("err = %v, want ErrDigestMismatch", err)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	f := newRegFixture(t)
	if _, err := remote.Resolve(t.Context(), "Not A Ref!", anonymous); !errors.Is(err, remote.ErrInvalidReference) {
		t.Fatalf("bad ref: %v", err)
	}
	_, err := remote.Resolve(t.Context(), f.host+"/test/none:v1", anonymous, fastRetry)
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing tag: err = %v, want errdefs.ErrNotFound", err)
	}
}

func TestParseReferenceInsecure(t *testing.T) {
	for _, c := range []struct {
		ref, insecure, scheme string
	}{
		{"myreg.example:5000/a/b:v1", "", "https"},
		{"myreg.example:5000/a/b:v1", "myreg.example:5000", "http"},
		{"myreg.example:5000/a/b:v1", "myreg.example", "http"},
		{"myreg.example:5000/a/b:v1", "other.example:5000", "https"},
	} {
		r, err := remote.ParseReference(c.ref, remote.WithInsecureRegistries(c.insecure))
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Context().Scheme(); got != c.scheme {
			t.Errorf("ParseReference(%q) insecure %q: scheme %s, want %s", c.ref, c.insecure, got, c.scheme)
		}
	}
	if _, err := remote.ParseReference("UPPER/case"); !errors.Is(err, remote.ErrInvalidReference) {
		t.Fatalf("err = %v, want ErrInvalidReference", err)
	}
}

func TestImageFromBytes(t *testing.T) {
	img, err := random.Image(1000, 2)
	if err != nil {
		t.Fatal(err)
	}
	manifest, _ := img.RawManifest()
	config, _ := img.RawConfigFile()
	d, _ := img.Digest()
	ref, err := name.NewDigest("registry.example/app@" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.ImageFromBytes(ref, manifest, config)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest.String() != d.String() || len(got.Layers) != 2 || got.Repo.String() != "registry.example/app" {
		t.Errorf("image %+v", got)
	}
	if _, err := remote.ImageFromBytes(ref, append(bytes.Clone(manifest), ' '), config); !errors.Is(err, remote.ErrDigestMismatch) {
		t.Errorf("tampered manifest: %v", err)
	}
	if _, err := remote.ImageFromBytes(ref, manifest, append(bytes.Clone(config), ' ')); !errors.Is(err, remote.ErrDigestMismatch) {
		t.Errorf("tampered config: %v", err)
	}
	idx, _ := random.Index(100, 1, 1)
	raw, _ := idx.RawManifest()
	di, _ := idx.Digest()
	iref, _ := name.NewDigest("registry.example/app@" + di.String())
	if _, err := remote.ImageFromBytes(iref, raw, config); !errors.Is(err, remote.ErrUnsupportedMediaType) {
		t.Errorf("an index: %v", err)
	}
}

// TestResolveTakesConfigFromLocalBlobs: with WithLocalBlobs holding the
// config, Resolve of a tag asks the registry for the manifest only (the
// registry's config, tampered, is never read); bytes in the store that are
// not the config's are not taken.
func TestResolveTakesConfigFromLocalBlobs(t *testing.T) {
	f := newRegFixture(t)
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	f.push(t, "test/img:v1", img)
	cfgName, _ := img.ConfigName()
	raw, _ := img.RawConfigFile()
	f.tamper("/blobs/" + cfgName.String())
	local := map[digest.Digest][]byte{digest.Digest(cfgName.String()): raw}
	get := func(d digest.Digest) ([]byte, bool) { b, ok := local[d]; return b, ok }
	got, err := remote.Resolve(t.Context(), f.host+"/test/img:v1", anonymous, remote.WithLocalBlobs(get), fastRetry)
	if err != nil {
		t.Fatalf("Resolve with the config in the store: %v", err)
	}
	checkImage(t, got, img)
	local[digest.Digest(cfgName.String())] = []byte("not the config")
	if _, err := remote.Resolve(t.Context(), f.host+"/test/img:v1", anonymous, remote.WithLocalBlobs(get), fastRetry); !errors.Is(err, remote.ErrDigestMismatch) {
		t.Fatalf("with other bytes in the store: %v, want the registry's (tampered) config refused", err)
	}
}

// TestHandshakeWithARegistryThatNeverAnswers: a registry that accepts the
// connection and sends nothing fails the request within its timeout,
// rather than holding it (and a mount, or a daemon's start) for good.
func TestHandshakeWithARegistryThatNeverAnswers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	// Bounded by the test too, so that it fails rather than hangs.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err = remote.Resolve(ctx, ln.Addr().String()+"/test/img:v1", anonymous,
		remote.WithInsecureRegistries(ln.Addr().String()), remote.WithRequestTimeout(300*time.Millisecond), fastRetry)
	if err == nil {
		t.Fatal("Resolve against a registry that never answers succeeded")
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("Resolve took %v to give up (request timeout 300ms)", took)
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
}
