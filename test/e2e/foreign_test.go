package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/treecmp"
)

// TestForeignLayerReadFromItsURLs mounts an image whose top layer is
// non-distributable: the registry does not hold it (the push leaves it
// out, as pushes of such layers do), its descriptor's urls name a server
// of its own. The mount reads it from there and shows the tree the layer
// specs give. A server that serves other bytes under that digest gets
// the mount refused.
func TestForeignLayerReadFromItsURLs(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	layers := fixture.Standard()[:2]
	img, err := fixture.Build(ctx, layers, fixture.FormGzip, fixture.WithTempDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[1].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	var corrupt atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		body := blob
		if corrupt.Load() {
			body = bytes.Clone(blob)
			body[len(body)/2] ^= 0xff
		}
		http.ServeContent(w, r, "layer.tar.gz", time.Time{}, bytes.NewReader(body)) // answers Range
	}))
	t.Cleanup(srv.Close)

	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	base = mutate.MediaType(mutate.ConfigMediaType(base, types.OCIConfigJSON), types.OCIManifestSchema1)
	foreign, err := mutate.Append(base,
		mutate.Addendum{Layer: ls[0], MediaType: types.OCILayer},
		mutate.Addendum{Layer: restricted{ls[1]}, MediaType: types.OCIRestrictedLayer, URLs: []string{srv.URL + "/layers/top.tar.gz"}})
	if err != nil {
		t.Fatal(err)
	}
	ref := shared.reg.Ref(uniqueRepo("foreign"), "v1")
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(r, foreign); err != nil {
		t.Fatalf("push: %v", err)
	}
	topDigest, err := ls[1].Digest()
	if err != nil {
		t.Fatal(err)
	}
	if st := blobStatus(t, r.Context(), topDigest); st != http.StatusNotFound {
		t.Fatalf("the registry answers %d for the foreign layer: the test needs it absent", st)
	}

	d := startDaemon(t, nil)
	dir, m := d.mount(t, ref)
	if len(m.Layers) != 2 || len(m.Layers[1].URLs) != 1 {
		t.Fatalf("mounted layers %+v, want two, the second with its url", m.Layers)
	}
	if hits.Load() == 0 {
		t.Fatal("the foreign layer's server was never asked")
	}
	checkTreeIsSpecs(t, dir, layers)

	// A build step on it: the pushed image keeps the foreign descriptor,
	// urls and all, and its blob stays out of the registry; an OCI layout
	// holds every blob, so the layer is read from its url into it.
	// On a daemon of its own: a writable mount's layers are described to
	// its snapshots by labels, which must carry the urls too.
	dw := startDaemon(t, nil)
	wdir, _ := dw.mountWith(t, daemon.MountRequest{Ref: ref, Writable: true})
	if err := os.WriteFile(filepath.Join(wdir, "step.txt"), []byte("a step\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	newRef := shared.reg.Ref(uniqueRepo("foreign-built"), "v1")
	layoutDir := t.TempDir()
	if _, err := dw.commit(t, daemon.CommitRequest{Dir: wdir, Ref: newRef, OCILayout: layoutDir}); err != nil {
		t.Fatalf("commit: %v", err)
	}
	man, err := remoteImage(t, newRef).Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(man.Layers) != 3 || man.Layers[1].MediaType != types.OCIRestrictedLayer || len(man.Layers[1].URLs) != 1 || man.Layers[1].Digest != topDigest {
		t.Fatalf("pushed layers %+v: want the foreign one kept as it was", man.Layers)
	}
	if st := blobStatus(t, mustRepo(t, newRef), topDigest); st != http.StatusNotFound {
		t.Errorf("the push put the foreign layer in the registry (status %d)", st)
	}
	if got, err := os.ReadFile(filepath.Join(layoutDir, "blobs", "sha256", topDigest.Hex)); err != nil || !bytes.Equal(got, blob) {
		t.Errorf("the OCI layout's foreign blob: %d bytes, %v; want the layer's %d", len(got), err, len(blob))
	}

	// Another machine, and a server that lies about the layer.
	corrupt.Store(true)
	d2 := startDaemon(t, nil)
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err = d2.client.Mount(mctx, daemon.MountRequest{Ref: ref, Dir: t.TempDir()})
	if err == nil {
		t.Fatal("mounted a foreign layer whose server sent other bytes")
	}
	// Refused at the first sign: a broken stream, or at its end the digest.
	if !strings.Contains(err.Error(), topDigest.String()) {
		t.Errorf("mount refused with %q, which does not name the layer", err)
	}
}

// restricted is a layer that says it is non-distributable, so that a push
// leaves it out.
type restricted struct{ v1.Layer }

func (restricted) MediaType() (types.MediaType, error) { return types.OCIRestrictedLayer, nil }

// blobStatus is the status of a HEAD of blob d in repo.
func blobStatus(t *testing.T, repo name.Repository, d v1.Hash) int {
	t.Helper()
	resp, err := http.Head("http://" + repo.RegistryStr() + "/v2/" + repo.RepositoryStr() + "/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func mustRepo(t *testing.T, ref string) name.Repository {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r.Context()
}

// checkTreeIsSpecs checks the tree at dir entry by entry against the tree
// the layer specs give.
func checkTreeIsSpecs(t *testing.T, dir string, layers []fixture.LayerSpec) {
	t.Helper()
	got, err := treecmp.Walk(dir)
	if err != nil {
		t.Fatal(err)
	}
	want, err := treecmp.Expected(layers)
	if err != nil {
		t.Fatal(err)
	}
	for _, diff := range treecmp.Diff(want, got) {
		t.Errorf("mount differs from the layer specs: %s", diff)
	}
}
