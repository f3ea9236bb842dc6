package remote_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/stratafs/strata/remote"
)

// pingCounter counts the registry pings (GET /v2/) behind a handler.
type pingCounter struct {
	next  http.Handler
	pings atomic.Int64
}

func (p *pingCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" {
		p.pings.Add(1)
	}
	p.next.ServeHTTP(w, r)
}

// TestClientCacheSharesHandshake: readers of one repository sharing a
// ClientCache ping the registry once; without it, once each.
func TestClientCacheSharesHandshake(t *testing.T) {
	var pc *pingCounter
	f := newBlobFixture(t, 64<<10, nil, func(h http.Handler) http.Handler {
		pc = &pingCounter{next: h}
		return pc
	})
	cache := remote.NewClientCache()
	for i := 0; i < 3; i++ {
		br := f.reader(t, remote.WithClientCache(cache))
		f.readCheck(t, br, int64(i)*1000, 1000)
	}
	if got := pc.pings.Load(); got != 1 {
		t.Errorf("3 readers sharing a cache pinged %d times, want 1", got)
	}
	pc.pings.Store(0)
	for i := 0; i < 2; i++ {
		f.readCheck(t, f.reader(t), 0, 100)
	}
	if got := pc.pings.Load(); got != 2 {
		t.Errorf("2 readers without a cache pinged %d times, want 2", got)
	}
}

// basicAuth is a registry front that wants HTTP basic credentials, as a
// docker-registry with htpasswd does: the ping and every request without
// them get 401 and a basic challenge.
type basicAuth struct {
	next       http.Handler
	user, pass string
}

func (a basicAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if u, p, ok := r.BasicAuth(); !ok || u != a.user || p != a.pass {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	a.next.ServeHTTP(w, r)
}

// swapKeychain is a docker config that changes, as it does at `docker
// login`: it hands out whatever credentials it holds now.
type swapKeychain struct {
	host string
	pass atomic.Pointer[string]
}

func (k *swapKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	p := k.pass.Load()
	if p == nil || r.RegistryStr() != k.host {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: "alice", Password: *p}), nil
}

// TestClientCacheForgetsRefusedCredentials: a cached client the registry
// refused is not used again; the next reader resolves the credentials
// anew, so a mount tried before `docker login`, or with an old password,
// succeeds once the docker config is right, without a restart.
func TestClientCacheForgetsRefusedCredentials(t *testing.T) {
	f := newBlobFixture(t, 64<<10, nil, func(h http.Handler) http.Handler {
		return basicAuth{next: h, user: "alice", pass: "s3cret"}
	})
	kc := &swapKeychain{host: f.host}
	cache := remote.NewClientCache()
	open := func() error {
		br, err := remote.NewBlobReader(t.Context(), f.repo, f.dgst, int64(len(f.data)),
			remote.WithKeychain(kc), remote.WithClientCache(cache))
		if err != nil {
			return err
		}
		defer br.Close()
		p := make([]byte, 100)
		if _, err := br.ReadAtContext(t.Context(), p, 0); err != nil {
			return err
		}
		if !bytes.Equal(p, f.data[:100]) {
			t.Fatal("read the wrong bytes")
		}
		return nil
	}
	if err := open(); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("without credentials: %v, want errdefs.ErrUnauthenticated", err)
	}
	wrong := "wrong"
	kc.pass.Store(&wrong)
	if err := open(); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("with a wrong password: %v, want errdefs.ErrUnauthenticated", err)
	}
	right := "s3cret"
	kc.pass.Store(&right)
	if err := open(); err != nil {
		t.Fatalf("after the login, through the same cache: %v", err)
	}
	if err := open(); err != nil { // the good client is kept
		t.Fatal(err)
	}
}

// TestPullOptionsShareHandshake: ggcr reading with PullOptions after a
// reader made the handshake pings the registry no more.
func TestPullOptionsShareHandshake(t *testing.T) {
	var pc *pingCounter
	f := newBlobFixture(t, 64<<10, nil, func(h http.Handler) http.Handler {
		pc = &pingCounter{next: h}
		return pc
	})
	cache := remote.NewClientCache()
	f.readCheck(t, f.reader(t, remote.WithClientCache(cache)), 0, 100)
	for range 2 {
		opts := remote.PullOptions(t.Context(), f.repo, anonymous, remote.WithClientCache(cache))
		l, err := ggcrremote.Layer(f.repo.Digest(f.dgst.String()), opts...)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(b, f.data) {
			t.Fatalf("ggcr read %d bytes, %v", len(b), err)
		}
	}
	if got := pc.pings.Load(); got != 1 {
		t.Errorf("a reader and two ggcr reads sharing a cache pinged %d times, want 1", got)
	}
}

// rotatingAuth is basicAuth whose password the test changes, as an
// htpasswd file edited and the registry restarted.
type rotatingAuth struct {
	next http.Handler
	pass atomic.Pointer[string]
}

func (a *rotatingAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	basicAuth{next: a.next, user: "alice", pass: *a.pass.Load()}.ServeHTTP(w, r)
}

// TestReaderTakesNewCredentials: a reader made with credentials the
// registry later refuses (its password changed) reads again once the
// docker config has the new one: the same reader, as a mounted layer's
// is, without a new mount or a restart.
func TestReaderTakesNewCredentials(t *testing.T) {
	ra := &rotatingAuth{}
	old, changed := "old", "new"
	ra.pass.Store(&old)
	f := newBlobFixture(t, 64<<10, nil, func(h http.Handler) http.Handler {
		ra.next = h
		return ra
	})
	kc := &swapKeychain{host: f.host}
	kc.pass.Store(&old)
	for _, cache := range []*remote.ClientCache{nil, remote.NewClientCache()} {
		ra.pass.Store(&old)
		kc.pass.Store(&old)
		opts := []remote.Option{remote.WithKeychain(kc), fastRetry}
		if cache != nil {
			opts = append(opts, remote.WithClientCache(cache))
		}
		br, err := remote.NewBlobReader(t.Context(), f.repo, f.dgst, int64(len(f.data)), opts...)
		if err != nil {
			t.Fatal(err)
		}
		f.readCheck(t, br, 0, 100)
		ra.pass.Store(&changed)
		p := make([]byte, 100)
		if _, err := br.ReadAtContext(t.Context(), p, 1000); !errors.Is(err, errdefs.ErrUnauthenticated) {
			t.Fatalf("after the password changed: %v, want errdefs.ErrUnauthenticated", err)
		}
		kc.pass.Store(&changed) // docker login
		f.readCheck(t, br, 2000, 100)
		br.Close()
	}
}

// downFront answers every request with 503 while down is set, as a
// registry being restarted does (its proxy in front of it).
type downFront struct {
	next http.Handler
	down atomic.Bool
}

func (d *downFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if d.down.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	d.next.ServeHTTP(w, r)
}

// TestDeferredHandshake: a reader made with WithDeferredHandshake while
// the registry is down is made (a restored or taken-over layer whose bytes
// are cached needs no registry); its fetches fail while the registry is
// down and succeed once it is back, with no new reader.
func TestDeferredHandshake(t *testing.T) {
	df := &downFront{}
	f := newBlobFixture(t, 64<<10, nil, func(h http.Handler) http.Handler {
		df.next = h
		return df
	})
	df.down.Store(true)
	br, err := remote.NewBlobReader(t.Context(), f.repo, f.dgst, int64(len(f.data)), anonymous, fastRetry, remote.WithDeferredHandshake())
	if err != nil {
		t.Fatalf("a deferred handshake's reader, registry down: %v", err)
	}
	defer br.Close()
	if _, err := br.ReadAtContext(t.Context(), make([]byte, 100), 0); err == nil {
		t.Fatal("a read with the registry down succeeded")
	}
	df.down.Store(false)
	f.readCheck(t, br, 0, 100)
	// Without the option the reader is not made while it is down.
	df.down.Store(true)
	if _, err := remote.NewBlobReader(t.Context(), f.repo, f.dgst, int64(len(f.data)), anonymous, fastRetry); err == nil {
		t.Error("a reader made its handshake with the registry down")
	}
}
