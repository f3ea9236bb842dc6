package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/registry"
)

// TestPrivateRegistries mounts, commits, pushes and builds with private
// registries, whose credentials the daemon finds as a mount does: in the
// docker config of its user (an "auths" entry for one registry, a
// credential helper for the other). A commit to another repository of the
// base's registry mounts the base's blobs; one to the other registry
// streams them through with both registries' credentials; `strata build
// --push` does the same. Without credentials, or with wrong ones, the
// mount or the push fails with the registry's refusal and publishes
// nothing.
func TestPrivateRegistries(t *testing.T) {
	requireRoot(t)
	authA := registry.Auth{User: "alice", Password: "a-s3cret"}
	authB := registry.Auth{User: "bob", Password: "b-s3cret"}
	regA := registry.StartWithAuth(t, authA)
	regB := registry.StartWithAuth(t, authB)
	ctx := context.Background()

	layers, err := fixture.Busybox()
	must(t, err)
	img, err := fixture.Build(ctx, layers, fixture.FormEStargz, fixture.WithTempDir(t.TempDir()),
		fixture.WithConfig(fixture.BusyboxConfig()))
	must(t, err)
	base := regA.Ref("private-base", "v1")
	_, err = fixture.Push(ctx, img, base, basicAuth(authA))
	must(t, err)

	// A docker config with nothing for these registries first.
	cfgDir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", cfgDir)
	must(t, os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(`{}`), 0o600))
	d := startDaemon(t, nil)
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err = d.client.Mount(mctx, daemon.MountRequest{Ref: base, Dir: t.TempDir(), Writable: true})
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "unauthorized") || !strings.Contains(err.Error(), "docker login") {
		t.Fatalf("a mount without credentials: %v, want the registry's refusal (unauthorized) and where credentials come from", err)
	}
	t.Logf("a mount without credentials: %v", err)
	// The same through the progress stream, as the CLI mounts.
	_, err = d.client.MountProgress(mctx, daemon.MountRequest{Ref: base, Dir: t.TempDir(), Writable: true}, func(string) {})
	if err == nil || !strings.Contains(err.Error(), "docker login") {
		t.Fatalf("a mount without credentials, with progress: %v, want where credentials come from", err)
	}

	// Credentials for A inline, for B from a helper on PATH.
	helperDir := t.TempDir()
	helper := fmt.Sprintf("#!/bin/sh\nread server\nprintf '{\"ServerURL\":\"%%s\",\"Username\":\"%s\",\"Secret\":\"%s\"}' \"$server\"\n",
		authB.User, authB.Password)
	must(t, os.WriteFile(filepath.Join(helperDir, "docker-credential-strata-e2e"), []byte(helper), 0o755))
	t.Setenv("PATH", helperDir+":"+os.Getenv("PATH"))
	cred := base64.StdEncoding.EncodeToString([]byte(authA.User + ":" + authA.Password))
	cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}, "credHelpers": {%q: "strata-e2e"}}`, regA.Host(), cred, regB.Host())
	must(t, os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(cfg), 0o600))

	dir, _ := d.mountRW(t, base)
	must(t, os.WriteFile(filepath.Join(dir, "private.txt"), []byte("private\n"), 0o644))

	sameHost := regA.Ref("private-app", "v1")
	res, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: sameHost})
	if err != nil {
		t.Fatalf("commit to the base's private registry: %v", err)
	}
	if res.StreamedBytes != 0 {
		t.Errorf("a push to the base's own registry streamed %d bytes of the base; it should mount them", res.StreamedBytes)
	}
	otherHost := regB.Ref("private-app", "v1")
	res, err = d.commit(t, daemon.CommitRequest{Dir: dir, Ref: otherHost})
	if err != nil {
		t.Fatalf("commit to another private registry: %v", err)
	}
	if res.StreamedBytes == 0 {
		t.Error("a push to another registry streamed none of the base's bytes")
	}

	// Wrong credentials for B: refused, nothing published.
	bad := strings.Replace(helper, authB.Password, "wrong", 1)
	must(t, os.WriteFile(filepath.Join(helperDir, "docker-credential-strata-e2e"), []byte(bad), 0o755))
	refused := regB.Ref("private-app", "refused")
	_, err = d.commit(t, daemon.CommitRequest{Dir: dir, Ref: refused})
	t.Logf("a push with wrong credentials: %v", err)
	if err == nil ||
		!strings.Contains(strings.ToLower(err.Error()), "unauthorized") || strings.Count(err.Error(), "docker login "+regB.Host()) != 1 {
		t.Errorf("a push with wrong credentials: %v, want the registry's refusal (unauthorized) and once where credentials come from", err)
	}
	if _, err := remote.Head(mustRef(t, refused), basicAuth(authB)); err == nil {
		t.Error("the refused push published a manifest")
	}
	must(t, os.WriteFile(filepath.Join(helperDir, "docker-credential-strata-e2e"), []byte(helper), 0o755))

	// `strata build --push` from A to B.
	bb := &buildBench{d: d, bin: buildStrata(t), base: base}
	ctxDir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("ARG BASE\nFROM $BASE\nUSER root\nRUN echo built > /built.txt\n"), 0o644))
	built := regB.Ref("private-built", "v1")
	bb.mustBuild(t, ctxDir, "-t", built, "--push")

	// What was pushed to B is whole there: a daemon with a new state root
	// mounts it (every blob from B) and reads the base's files and the new.
	fresh := startDaemon(t, nil)
	for ref, want := range map[string]string{otherHost: "private.txt", built: "built.txt"} {
		mnt, _ := fresh.mount(t, ref)
		for _, f := range []string{want, "bin/busybox"} {
			if _, err := os.ReadFile(filepath.Join(mnt, f)); err != nil {
				t.Errorf("%s of %s: %v", f, ref, err)
			}
		}
	}
	for _, ref := range []string{sameHost} {
		if _, err := remote.Image(mustRef(t, ref), basicAuth(authA)); err != nil {
			t.Errorf("%s: %v", ref, err)
		}
	}
}

func basicAuth(a registry.Auth) remote.Option {
	return remote.WithAuth(&authn.Basic{Username: a.User, Password: a.Password})
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}
