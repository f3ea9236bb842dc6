package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// Kinds of registry.
const (
	KindDistribution = "distribution" // docker-registry child process
	KindInProcess    = "ggcr"         // go-containerregistry pkg/registry
)

// Registry is a running registry on 127.0.0.1.
type Registry struct {
	kind string
	host string
	// Exactly one of proc and server is set.
	proc   *process
	server *httptest.Server
}

// Host is "127.0.0.1:port", the registry part of image references.
func (r *Registry) Host() string { return r.host }

// URL is "http://127.0.0.1:port".
func (r *Registry) URL() string { return "http://" + r.host }

// Kind is KindDistribution or KindInProcess; handy in subtest names.
func (r *Registry) Kind() string { return r.kind }

// Ref is the reference "host:port/repo:tag" of an image on this registry.
func (r *Registry) Ref(repo, tag string) string { return r.host + "/" + repo + ":" + tag }

// StorageDir is the distribution registry's storage root ("" in process).
func (r *Registry) StorageDir() string {
	if r.proc == nil {
		return ""
	}
	return r.proc.dir
}

// Close stops the registry. It is safe to call more than once.
func (r *Registry) Close() error {
	if r.server != nil {
		r.server.Close()
		return nil
	}
	return r.proc.stop()
}

// Start runs docker-registry (installing it with apt when missing) with
// storage under a t.TempDir, waits until /v2/ answers, and stops the
// process group when the test ends.
func Start(t testing.TB) *Registry {
	t.Helper()
	return start(t, nil)
}

// StartWithAuth is Start for a registry that requires auth (NewWithAuth).
func StartWithAuth(t testing.TB, auth Auth) *Registry {
	t.Helper()
	return start(t, &auth)
}

func start(t testing.TB, auth *Auth) *Registry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := EnsureInstalled(ctx); err != nil {
		t.Fatalf("registry: %v", err)
	}
	r, err := newRegistry(ctx, t.TempDir(), auth)
	if err != nil {
		t.Fatalf("registry: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("registry: %v", err)
		}
	})
	return r
}

// StartInProcess serves ggcr's in-memory registry on 127.0.0.1 until the
// test ends.
func StartInProcess(t testing.TB) *Registry {
	t.Helper()
	// ggcr logs every request at info level; tests only need failures.
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	r := &Registry{kind: KindInProcess, host: strings.TrimPrefix(srv.URL, "http://"), server: srv}
	if err := waitReady(context.Background(), r.URL(), nil, nil); err != nil {
		t.Fatalf("registry: %v", err)
	}
	return r
}

// ErrNotReady is wrapped when a registry did not answer /v2/ in time.
var ErrNotReady = errors.New("registry did not become ready")

// waitReady polls GET /v2/ (with auth's credentials, when set) until it
// returns 200, for at most 30 s; exited, when not nil, reports an early
// death of the process so a broken config fails at once rather than after
// the timeout.
func waitReady(ctx context.Context, base string, exited <-chan struct{}, auth *Auth) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/", nil)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNotReady, err)
		}
		if auth != nil {
			req.SetBasicAuth(auth.User, auth.Password)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w at %s: %v", ErrNotReady, base, lastErr)
		case <-exited:
			return fmt.Errorf("%w at %s: process exited", ErrNotReady, base)
		case <-tick.C:
		}
	}
}
