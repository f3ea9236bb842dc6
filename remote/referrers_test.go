package remote_test

import (
	"context"
	"io"
	"log"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

// TestReferrers: an artifact pushed with a subject is listed from the
// referrers API where the registry has it, and from the referrers tag
// where it has not (the tag asked for at the same time as the API, before
// its 404 came back); an image nothing refers to has an empty list.
func TestReferrers(t *testing.T) {
	for _, api := range []bool{true, false} {
		t.Run(map[bool]string{true: "api", false: "tag scheme"}[api], func(t *testing.T) {
			var apiCalls, tagCalls, tagWhileAPI atomic.Int64
			var apiAnswered atomic.Bool
			var mu sync.Mutex
			tagSeen := make(chan struct{})
			reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(api))
			host := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case strings.Contains(r.URL.Path, "/referrers/"):
					apiCalls.Add(1)
					// The answer waits (a while at most) for the tag's
					// request: asked for side by side, it comes meanwhile.
					mu.Lock()
					seen := tagSeen
					mu.Unlock()
					select {
					case <-seen:
					case <-time.After(5 * time.Second):
					}
					reg.ServeHTTP(w, r)
					apiAnswered.Store(true)
					return
				case strings.Contains(r.URL.Path, "/manifests/sha256-"):
					tagCalls.Add(1)
					if !apiAnswered.Load() {
						tagWhileAPI.Add(1)
					}
					mu.Lock()
					select {
					case <-tagSeen:
					default:
						close(tagSeen)
					}
					mu.Unlock()
				}
				reg.ServeHTTP(w, r)
			}))
			rearm := func() {
				mu.Lock()
				tagSeen = make(chan struct{})
				mu.Unlock()
				apiCalls.Store(0)
				tagCalls.Store(0)
				tagWhileAPI.Store(0)
				apiAnswered.Store(false)
			}
			repo, err := name.NewRepository(host+"/img", name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			img, err := random.Image(100, 1)
			if err != nil {
				t.Fatal(err)
			}
			if err := ggcrremote.Write(repo.Tag("v1"), img); err != nil {
				t.Fatal(err)
			}
			subject, err := img.Digest()
			if err != nil {
				t.Fatal(err)
			}
			sd := digest.Digest(subject.String())
			opts := []remote.Option{anonymous, remote.WithInsecureRegistries(host)}

			got, err := remote.Referrers(context.Background(), repo, sd, opts...)
			if err != nil || len(got.Manifests) != 0 {
				t.Fatalf("before any referrer: %+v, %v; want an empty list", got, err)
			}

			desc, err := ggcrremote.Head(repo.Tag("v1"))
			if err != nil {
				t.Fatal(err)
			}
			art := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), "application/vnd.example.test")
			art = mutate.Subject(art, *desc).(v1.Image)
			ad, err := art.Digest()
			if err != nil {
				t.Fatal(err)
			}
			if err := ggcrremote.Write(repo.Digest(ad.String()), art); err != nil {
				t.Fatal(err)
			}
			rearm()
			got, err = remote.Referrers(context.Background(), repo, sd, opts...)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Manifests) != 1 || got.Manifests[0].Digest != ad || got.Manifests[0].ArtifactType != "application/vnd.example.test" {
				t.Fatalf("referrers %+v, want the artifact %s", got.Manifests, ad)
			}
			// The tag is asked for while the API's answer is on its way
			// (with the API, it may not be: the listing returns first).
			if apiCalls.Load() != 1 || !api && (tagCalls.Load() != 1 || tagWhileAPI.Load() != 1) || tagCalls.Load() > 1 {
				t.Errorf("%d referrers API and %d tag requests (%d while the API answered), want one API request and the tag side by side",
					apiCalls.Load(), tagCalls.Load(), tagWhileAPI.Load())
			}
			if _, err := remote.Referrers(context.Background(), repo, "sha256:nothex", opts...); err == nil {
				t.Error("a malformed subject digest was taken")
			}
		})
	}
}
