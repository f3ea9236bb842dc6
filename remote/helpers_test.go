package remote_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

// anonymous keeps tests hermetic: the default keychain would read the
// host's docker config.
var anonymous = remote.WithKeychain(authn.NewMultiKeychain())

// fastRetry keeps retry tests quick while still exercising the backoff path.
var fastRetry = remote.WithRetry(5, time.Millisecond)

// startServer starts h on 127.0.0.1 and returns its "host:port".
func startServer(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// newRegistry is ggcr's in-memory registry, quiet.
func newRegistry() http.Handler {
	return registry.New(registry.Logger(log.New(io.Discard, "", 0)))
}

// isBlobGET matches the requests the fault injectors act on: blob reads, not
// the HEAD/POST/PUT of a push.
func isBlobGET(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
}

// injector wraps a registry; inject sees every blob GET with its 1-based
// number and returns true when it answered the request itself.
type injector struct {
	next   http.Handler
	gets   atomic.Int64
	inject func(w http.ResponseWriter, r *http.Request, n int64) bool
}

func (in *injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if isBlobGET(r) {
		n := in.gets.Add(1)
		if in.inject != nil && in.inject(w, r, n) {
			return
		}
	}
	in.next.ServeHTTP(w, r)
}

// blobFixture is a registry holding one random blob.
type blobFixture struct {
	host string
	repo name.Repository
	data []byte
	dgst digest.Digest
	inj  *injector
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n:n]
}

// newBlobFixture pushes size random bytes as a blob. wrap, if not nil, is
// put outside the injector (e.g. token auth).
func newBlobFixture(t *testing.T, size int, inject func(http.ResponseWriter, *http.Request, int64) bool, wrap func(http.Handler) http.Handler) *blobFixture {
	t.Helper()
	inj := &injector{next: newRegistry(), inject: inject}
	var h http.Handler = inj
	if wrap != nil {
		h = wrap(inj)
	}
	f := &blobFixture{host: startServer(t, h), data: randomBytes(uint64(size), size), inj: inj}
	repo, err := name.NewRepository(f.host + "/test/blob")
	if err != nil {
		t.Fatal(err)
	}
	f.repo = repo
	f.dgst = digest.FromBytes(f.data)
	// Pushed around the wrappers, straight into the same registry, so that
	// faults and auth only meet the code under test.
	raw, err := name.NewRepository(startServer(t, inj.next) + "/test/blob")
	if err != nil {
		t.Fatal(err)
	}
	pushBlob(t, raw, f.data)
	return f
}

func pushBlob(t *testing.T, repo name.Repository, data []byte, opts ...ggcrremote.Option) {
	t.Helper()
	if err := ggcrremote.WriteLayer(repo, static.NewLayer(data, types.OCILayer), opts...); err != nil {
		t.Fatalf("pushing blob: %v", err)
	}
}

func (f *blobFixture) reader(t *testing.T, opts ...remote.Option) *remote.BlobReader {
	t.Helper()
	opts = append([]remote.Option{anonymous, fastRetry}, opts...)
	br, err := remote.NewBlobReader(t.Context(), f.repo, f.dgst, int64(len(f.data)), opts...)
	if err != nil {
		t.Fatalf("NewBlobReader: %v", err)
	}
	t.Cleanup(func() { br.Close() })
	return br
}

// readCheck reads [off, off+n) and compares with the fixture's bytes. It
// reports with t.Errorf so that it may run on other goroutines.
func (f *blobFixture) readCheck(t *testing.T, br *remote.BlobReader, off, n int64) {
	t.Helper()
	p := make([]byte, n)
	got, err := br.ReadAtContext(t.Context(), p, off)
	if err != nil {
		t.Errorf("ReadAtContext(%d, %d): %v", off, n, err)
		return
	}
	if int64(got) != n || !bytes.Equal(p, f.data[off:off+n]) {
		t.Errorf("ReadAtContext(%d, %d): wrong bytes (n=%d)", off, n, got)
	}
}

// tokenAuth is a minimal Docker token-auth front: /token swaps basic
// credentials for a bearer token, everything else needs a live token.
type tokenAuth struct {
	next       http.Handler
	user, pass string
	issued     atomic.Int64
	mu         sync.Mutex
	live       map[string]bool
}

func newTokenAuth(user, pass string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return &tokenAuth{next: next, user: user, pass: pass, live: map[string]bool{}}
	}
}

func (a *tokenAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		u, p, ok := r.BasicAuth()
		if !ok || u != a.user || p != a.pass {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
			return
		}
		tok := fmt.Sprintf("tok-%d", a.issued.Add(1))
		a.mu.Lock()
		a.live[tok] = true
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": 300})
		return
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	a.mu.Lock()
	live := ok && a.live[tok]
	a.mu.Unlock()
	if !live {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test-registry"`, r.Host))
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}`, http.StatusUnauthorized)
		return
	}
	a.next.ServeHTTP(w, r)
}

// revoke expires every token, as a token lifetime ending would.
func (a *tokenAuth) revoke() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.live)
}

// testKeychain hands the test credentials to one host only.
type testKeychain struct {
	host, user, pass string
}

func (k testKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if k.user != "" && r.RegistryStr() == k.host {
		return authn.FromConfig(authn.AuthConfig{Username: k.user, Password: k.pass}), nil
	}
	return authn.Anonymous, nil
}

// withTimeout is a test context that cannot outlive the test by much.
func withTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
