package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/proxy"
	"github.com/stratafs/strata/test/registry"
)

// TestCommitPushIsLazy commits a 1 MiB change on the 200 MiB eStargz
// image and counts, at the registry side, what the commit and push moved:
// to another repository of the base's registry the base layer is mounted
// across repositories, never downloaded nor uploaded; to a second registry
// it is streamed through and the image arrives whole. The new image then
// mounts with its layer, config and manifest from the local store.
func TestCommitPushIsLazy(t *testing.T) {
	reg, ref := bigImage(t)
	p := startProxy(t, reg)
	d := startDaemon(t, nil)
	dir, m := d.mountRW(t, viaProxy(ref, reg, p))
	change := readAll(t, fixture.Content(1<<20, 1313))
	if err := os.WriteFile(filepath.Join(dir, "small/a/change.bin"), change, 0o644); err != nil {
		t.Fatal(err)
	}
	baseLayer := m.Layers[0].Digest.String()

	p.ResetStats()
	// A repository of this run's own: the registry outlives the test
	// (go test -count=N), and a blob already there would not be mounted.
	repo := "big-commit-" + runID(t)
	target := viaProxy(reg.Ref(repo, "v1"), reg, p)
	res, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: target, SourceDateEpoch: epoch()})
	if err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	raw, cfgSize := manifestOf(t, reg.Ref(repo, "v1"))
	t.Logf("commit moved %d bytes down, %d up in %d requests; new layer %d bytes, config %d, manifest %d",
		st.BytesOut, st.BytesIn, st.Requests, res.LayerSize, cfgSize, len(raw))
	if res.StreamedBytes != 0 {
		t.Errorf("the commit read %d bytes of base layers; it needs none", res.StreamedBytes)
	}
	mounted := false
	for _, e := range st.Log {
		q, _ := url.ParseQuery(e.Query)
		switch {
		case e.Method == http.MethodGet && e.Blob && !strings.HasSuffix(e.Path, m.Config.String()):
			t.Errorf("downloaded a blob that is not the base's config: %s %s (%d bytes)", e.Method, e.Path, e.Bytes)
		case e.Method == http.MethodPost && q.Get("mount") == baseLayer:
			mounted = e.Status == http.StatusCreated && q.Get("from") == "big"
		case q.Get("digest") == baseLayer:
			t.Errorf("uploaded the base layer: %s %s?%s", e.Method, e.Path, e.Query)
		}
	}
	if !mounted {
		t.Errorf("the base layer was not mounted from the base's repository (no 201 to POST ...?mount=%s)", baseLayer)
	}
	if limit := res.LayerSize + cfgSize + int64(len(raw)); st.BytesIn > limit {
		t.Errorf("uploaded %d bytes, more than new layer + config + manifest (%d)", st.BytesIn, limit)
	}

	t.Run("another registry", func(t *testing.T) {
		reg2 := registry.Start(t)
		p2 := startProxy(t, reg2)
		p.ResetStats()
		res2, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: viaProxy(reg2.Ref(repo, "v1"), reg2, p2), SourceDateEpoch: epoch()})
		if err != nil {
			t.Fatal(err)
		}
		if res2.Digest != res.Digest {
			t.Errorf("the same commit pushed to another registry has digest %s, to the first %s", res2.Digest, res.Digest)
		}
		if res2.StreamedBytes < m.Layers[0].Size {
			t.Errorf("streamed %d bytes of base layers to the other registry, want the whole %d-byte base layer", res2.StreamedBytes, m.Layers[0].Size)
		}
		if got := p.Stats().BlobBytes; got < m.Layers[0].Size {
			t.Errorf("the base registry sent %d blob bytes, less than the base layer streamed through", got)
		}
		// skopeo copies every blob and checks its digest.
		skopeo(t, "copy", "--quiet", "--src-tls-verify=false", "docker://"+reg2.Ref(repo, "v1"), "oci:"+filepath.Join(t.TempDir(), "copy")+":v1")
	})

	t.Run("mount the new image", func(t *testing.T) {
		p.ResetStats()
		dir2, m2 := d.mountRW(t, res.Ref)
		got, err := os.ReadFile(filepath.Join(dir2, "small/a/change.bin"))
		if err != nil || string(got) != string(change) {
			t.Fatalf("the new image's mount lacks the change: %v", err)
		}
		if m2.Digest != res.Digest || len(m2.Layers) != 2 {
			t.Fatalf("mounted %s with %d layers, want %s with 2", m2.Digest, len(m2.Layers), res.Digest)
		}
		for _, e := range p.Stats().Log {
			switch {
			case e.Method == http.MethodGet && strings.Contains(e.Path, res.Layer.String()):
				t.Errorf("mounting the image just pushed downloaded its new layer: %s %s (%d bytes)", e.Method, e.Path, e.Bytes)
			case e.Method == http.MethodGet && (strings.Contains(e.Path, m2.Config.String()) || strings.Contains(e.Path, res.Digest.String())):
				// A digest reference whose manifest and config the
				// commit kept needs nothing from the registry.
				t.Errorf("mounting the image just pushed downloaded %s %s (%d bytes)", e.Method, e.Path, e.Bytes)
			}
		}
		t.Logf("mount of the new image: %d requests, %d bytes down", p.Stats().Requests, p.Stats().BytesOut)
	})
}

// manifestOf returns the raw manifest of ref (read from the registry
// directly) and its config's size.
func manifestOf(t *testing.T, ref string) ([]byte, int64) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	return desc.Manifest, m.Config.Size
}

// hasManifest reports whether the registry answers for ref.
func hasManifest(t *testing.T, ref string) bool {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	_, err = remote.Head(r)
	return err == nil
}

// checkStore checks that every blob in the daemon's store hashes to its
// name and that no ingest is left behind.
func checkStore(t *testing.T, root string) {
	t.Helper()
	dir := filepath.Join(root, "blobs", "sha256")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil || hex.EncodeToString(h.Sum(nil)) != e.Name() {
			t.Errorf("store blob %s is torn or corrupt (%v)", e.Name(), err)
		}
	}
	if left, _ := os.ReadDir(filepath.Join(root, "tmp")); len(left) > 0 {
		t.Errorf("the store's ingest directory keeps %d files after the failed commit", len(left))
	}
}

// TestCommitFaults: a registry that fails the manifest PUT, and a
// connection dropped in the middle of the layer upload, fail the commit
// with no manifest at the reference and the store consistent; once the
// registry behaves, the same commit succeeds with the digest of a commit
// that never failed.
func TestCommitFaults(t *testing.T) {
	requireRoot(t)
	base := push(t, shared.reg, "commit-faults", "base", fixture.Standard(), fixture.FormEStargz)
	p := startProxy(t, shared.reg)
	d := startDaemon(t, nil)
	dir, _ := d.mountRW(t, viaProxy(base, shared.reg, p))
	if err := os.WriteFile(filepath.Join(dir, "etc/payload.bin"), readAll(t, fixture.Content(2<<20, 99)), 0o644); err != nil {
		t.Fatal(err)
	}
	good, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: tagged(base, "good"), SourceDateEpoch: epoch()})
	if err != nil {
		t.Fatal(err)
	}
	faults := []struct {
		name  string
		fault proxy.Fault
	}{
		{"manifest PUT 500", proxy.FailN(1<<30, http.StatusInternalServerError, isManifestPut)},
		{"connection dropped mid-upload", dropMidUpload(64 << 10)},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			// A repository of its own: in the base's one the new layer
			// is already there (from the good commit) and nothing
			// would be uploaded.
			tag := strings.ToLower(strings.ReplaceAll(f.name, " ", "-"))
			// (and of this run: the registry outlives the test, and a
			// manifest left by an earlier run would be found)
			target := strings.Replace(tagged(base, tag), "/commit-faults:", "/commit-faults-"+tag+"-"+runID(t)+":", 1)
			p.ResetStats()
			p.SetFault(f.fault)
			_, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: viaProxy(target, shared.reg, p), SourceDateEpoch: epoch()})
			p.SetFault(nil)
			if err == nil {
				t.Fatal("the commit succeeded through the fault")
			}
			t.Logf("commit failed as it should: %v", err)
			if !slices.ContainsFunc(p.Stats().Log, func(e proxy.Entry) bool { return e.Fault }) {
				t.Fatal("the commit failed before it met the fault")
			}
			if hasManifest(t, target) {
				t.Errorf("a manifest is at %s after a failed commit", target)
			}
			checkStore(t, d.cfg.Root)
			again, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: viaProxy(target, shared.reg, p), SourceDateEpoch: epoch()})
			if err != nil {
				t.Fatalf("the rerun failed: %v", err)
			}
			if again.Digest != good.Digest {
				t.Errorf("the rerun made %s, an undisturbed commit %s", again.Digest, good.Digest)
			}
		})
	}
}

// TestCommitLayoutDiskFullPushesNothing: a commit to a registry and an
// OCI layout whose filesystem is full fails, and the registry has no
// manifest: the push comes last, after everything that can fail.
func TestCommitLayoutDiskFullPushesNothing(t *testing.T) {
	requireRoot(t)
	base := push(t, shared.reg, "commit-layout-full", "base", fixture.Standard(), fixture.FormEStargz)
	d := startDaemon(t, nil)
	dir, _ := d.mountRW(t, base)
	if err := os.WriteFile(filepath.Join(dir, "etc/payload.bin"), readAll(t, fixture.Content(1<<20, 7)), 0o644); err != nil {
		t.Fatal(err)
	}
	full := t.TempDir()
	if err := unix.Mount("tmpfs", full, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(full, unix.MNT_DETACH) })
	target := strings.Replace(tagged(base, "v1"), "/commit-layout-full:", "/commit-layout-full-"+runID(t)+":", 1)
	_, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: target, OCILayout: filepath.Join(full, "layout") + ":v1"})
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("commit with the layout's disk full: %v, want ENOSPC", err)
	}
	if hasManifest(t, target) {
		t.Errorf("a manifest is at %s after the commit failed", target)
	}
	checkStore(t, d.cfg.Root)
	// The same commit without the full disk goes through.
	if _, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: target}); err != nil {
		t.Fatal(err)
	}
	if !hasManifest(t, target) {
		t.Errorf("no manifest at %s after the commit", target)
	}
}

func isManifestPut(r *http.Request) bool {
	return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/")
}

// dropMidUpload reads n bytes of every upload's body, then drops the
// connection, as a link that dies in the middle of a blob does.
func dropMidUpload(n int64) proxy.Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/blobs/uploads/") || (r.Method != http.MethodPatch && r.Method != http.MethodPut) || r.ContentLength == 0 {
			return false
		}
		var head bytes.Buffer
		if got, _ := io.CopyN(&head, r.Body, n); got < n {
			// A small blob (the config): let it through whole.
			r.Body = io.NopCloser(io.MultiReader(&head, r.Body))
			proxy.Forward(w, r)
			return true
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return true
	}
}

// runID is a name part no other run of the test uses.
func runID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
