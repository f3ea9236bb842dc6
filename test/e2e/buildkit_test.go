package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	tcontainerd "github.com/stratafs/strata/test/containerd"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/proxy"
	"github.com/stratafs/strata/test/registry"
)

// TestBuildKitOnStrata builds with BuildKit's containerd worker, Strata
// being containerd's snapshotter under the name "stargz", FROM an eStargz
// base of more than 200 MB with a RUN that reads a few of its files, and
// pushes the result with store=false: every base layer must be mounted
// lazily (none unpacked), the registry must serve under 10% of the base,
// and the result must run under containerd from a plain full pull. The
// same again from a private registry, whose credentials the daemon has in
// its docker config (BuildKit's session has them too; Strata does not ask
// the session).
func TestBuildKitOnStrata(t *testing.T) {
	// Last, one at a time: BuildKit's binaries may be building meanwhile.
	t.Parallel()
	buildKitSerial.Lock()
	defer buildKitSerial.Unlock()
	e := startCtdEnv(t)
	auth := registry.Auth{User: "builder", Password: "s3cret"}
	preg := registry.StartWithAuth(t, auth)
	pproxy := startProxy(t, preg)
	bk := startBuildKitd(t, e, tcontainerd.StargzName, preg.Host(), pproxy.Host())
	busybox, err := fixture.Busybox()
	must(t, err)
	// base builds an eStargz base of big's layer and busybox's.
	base := func(big []fixture.LayerSpec) (v1.Image, int64, int) {
		img, err := fixture.Build(context.Background(), append(big, busybox...), fixture.FormEStargz,
			fixture.WithTempDir(t.TempDir()), fixture.WithConfig(fixture.BusyboxConfig()))
		must(t, err)
		size := imageSize(t, img)
		if size < 200<<20 {
			t.Fatalf("the base is %d bytes, want ≥ 200 MiB", size)
		}
		return img, size, len(big) + len(busybox)
	}

	t.Run("public", func(t *testing.T) {
		big := fixture.Big(200)
		img, size, layers := base(big)
		_, err := fixture.Push(context.Background(), img, e.reg.Ref("bk-big", "v1"))
		must(t, err)
		base := e.proxy.Host() + "/bk-big:v1"
		ref := tagged(base, "bk-built")
		e.proxy.ResetStats()
		bk.buildLazy(t, e, base, ref)
		checkLazy(t, e, e.proxy, base, size, layers)
		runBuiltLazy(t, e, strings.Replace(ref, e.proxy.Host(), e.reg.Host(), 1), big, "bk-lazy")
	})

	t.Run("private", func(t *testing.T) {
		// Layers of its own, so that nothing comes from the public
		// build's snapshots or BuildKit's cache.
		big := fixture.Big(201)
		img, size, layers := base(big)
		basic := remote.WithAuth(&authn.Basic{Username: auth.User, Password: auth.Password})
		_, err := fixture.Push(context.Background(), img, preg.Ref("bk-private", "v1"), basic)
		must(t, err)
		base := pproxy.Host() + "/bk-private:v1"
		ref := pproxy.Host() + "/bk-private:built"
		// One docker config for the daemon (its credentials) and buildctl
		// (the build session's).
		cred := base64.StdEncoding.EncodeToString([]byte(auth.User + ":" + auth.Password))
		cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}, %q: {"auth": %q}}}`, pproxy.Host(), cred, preg.Host(), cred)
		must(t, os.WriteFile(filepath.Join(e.dockerConfig, "config.json"), []byte(cfg), 0o600))
		pproxy.ResetStats()
		bk.buildLazy(t, e, base, ref)
		checkLazy(t, e, pproxy, base, size, layers)
		runBuiltLazy(t, e, strings.Replace(ref, pproxy.Host(), preg.Host(), 1), big, "bk-private",
			"--user", auth.User+":"+auth.Password)
	})
}

// buildLazy builds testdata/build/lazy FROM base and pushes it to ref
// with store=false, so that BuildKit never needs the base's blobs.
func (b *buildKitd) buildLazy(t *testing.T, e *ctdEnv, base, ref string) {
	t.Helper()
	dir := contextDir(t, "lazy")
	_, err := b.buildctl(context.Background(), []string{"DOCKER_CONFIG=" + e.dockerConfig},
		"build", "--progress", "plain", "--frontend", "dockerfile.v0",
		"--local", "context="+dir, "--local", "dockerfile="+dir,
		"--opt", "build-arg:BASE="+base, "--opt", "build-arg:BIG=/"+fixture.BigFile,
		"--output", "type=image,name="+ref+",push=true,store=false,registry.insecure=true")
	if err != nil {
		t.Fatalf("%v\ndaemon log:\n%s", err, e.daemonLog())
	}
}

// checkLazy checks, after a build FROM base (size bytes, layers layers)
// through p, that the registry sent under 10% of the base, that no layer
// fell back to unpacking, and that strata ls lists every layer of the base
// as served for the stargz label set with the base's reference (BuildKit
// names it pinned: REF@DIGEST).
func checkLazy(t *testing.T, e *ctdEnv, p *proxy.Proxy, base string, size int64, layers int) {
	t.Helper()
	st := p.Stats()
	t.Logf("BuildKit build and push moved %d blob bytes in %d requests of a %d-byte base (%.2f%%)",
		st.BlobBytes, st.BlobRequests, size, 100*float64(st.BlobBytes)/float64(size))
	if st.BlobBytes*10 >= size {
		t.Errorf("build and push moved %d blob bytes of a %d-byte base, want under 10%%", st.BlobBytes, size)
		for _, r := range st.Log {
			if r.Blob && r.Bytes > 0 {
				t.Logf("%s %s %s: %d bytes", r.Method, r.Path, r.Range, r.Bytes)
			}
		}
	}
	if log := e.daemonLog(); strings.Contains(log, "unpacking locally") {
		t.Errorf("a base layer fell back to unpacking:\n%s", log)
	}
	ls, err := exec.Command(e.bin, "ls", "--config", e.cfg, "--socket", e.control).CombinedOutput()
	if err != nil {
		t.Fatalf("strata ls: %v\n%s", err, ls)
	}
	n := 0
	for line := range strings.Lines(string(ls)) {
		if strings.Contains(line, " "+base+"@sha256:") && strings.Contains(line, " (stargz) ") {
			n++
		}
	}
	if n != layers {
		t.Errorf("strata ls lists %d layers served for %s (stargz), want %d:\n%s", n, base, layers, ls)
	}
}
