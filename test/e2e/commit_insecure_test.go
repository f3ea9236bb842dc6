package e2e

import (
	"context"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
)

// TestCommitInsecure pushes to a plain-HTTP registry that is not
// 127.0.0.1 (here 127.0.0.2, which registry clients treat as any other
// host: HTTPS unless told otherwise): without --insecure the push fails
// and publishes nothing; with --insecure, or with the registry in the
// daemon's insecure_registries, it goes through.
func TestCommitInsecure(t *testing.T) {
	requireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	srv := httptest.NewUnstartedServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	host := ln.Addr().String()

	ctx := context.Background()
	img, err := fixture.Build(ctx, fixture.Standard(), fixture.FormEStargz, fixture.WithTempDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	base := host + "/base:v1"
	if err := remote.Write(insecureRef(t, base), img, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}

	d := startDaemon(t, nil)
	dir := t.TempDir()
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := d.client.Mount(mctx, daemon.MountRequest{Ref: base, Dir: dir, Writable: true, Insecure: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.client.Unmount(context.Background(), dir, true) })
	if err := os.WriteFile(filepath.Join(dir, "etc", "insecure.txt"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: host + "/app:refused", Format: "gzip"}); err == nil {
		t.Error("a push to a plain-HTTP registry went through without --insecure")
	}
	if _, err := remote.Head(insecureRef(t, host+"/app:refused")); err == nil {
		t.Error("the refused push published a manifest")
	}
	if _, err := d.commit(t, daemon.CommitRequest{Dir: dir, Ref: host + "/app:flag", Format: "gzip", Insecure: true}); err != nil {
		t.Fatalf("commit --insecure: %v", err)
	}
	if _, err := remote.Head(insecureRef(t, host+"/app:flag")); err != nil {
		t.Errorf("commit --insecure published nothing: %v", err)
	}

	// The daemon's insecure_registries: no flag needed, for the mount or
	// the push.
	d2 := startDaemon(t, func(c *daemon.Config) { c.InsecureRegistries = []string{host} })
	dir2 := t.TempDir()
	if _, err := d2.client.Mount(mctx, daemon.MountRequest{Ref: base, Dir: dir2, Writable: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.client.Unmount(context.Background(), dir2, true) })
	res, err := d2.commit(t, daemon.CommitRequest{Dir: dir2, Ref: host + "/app:config", Format: "gzip"})
	if err != nil {
		t.Fatalf("commit to a registry in insecure_registries: %v", err)
	}
	if !strings.HasPrefix(res.Ref, host+"/app@sha256:") {
		t.Errorf("pushed %q", res.Ref)
	}
}

func insecureRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
