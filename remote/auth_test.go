package remote_test

import (
	"bytes"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	ggcrremote "github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

// authFixture is a blob fixture behind token auth, with the auth front kept
// so tests can revoke tokens.
func authFixture(t *testing.T) (*blobFixture, *tokenAuth) {
	var ta *tokenAuth
	f := newBlobFixture(t, 64<<10, nil, func(h http.Handler) http.Handler {
		ta = newTokenAuth("alice", "s3cret")(h).(*tokenAuth)
		return ta
	})
	return f, ta
}

func TestBearerAuthForRangedReads(t *testing.T) {
	f, ta := authFixture(t)
	br := f.reader(t, remote.WithKeychain(testKeychain{host: f.host, user: "alice", pass: "s3cret"}))
	f.readCheck(t, br, 0, 100)
	f.readCheck(t, br, 30000, 3000)
	if got := ta.issued.Load(); got != 1 {
		t.Fatalf("token endpoint issued %d tokens, want 1 (reused across reads)", got)
	}
	// Tokens expire mid-mount: the next read gets a fresh one and succeeds.
	ta.revoke()
	f.readCheck(t, br, 60000, 10)
	if got := ta.issued.Load(); got != 2 {
		t.Fatalf("token endpoint issued %d tokens after revocation, want 2", got)
	}
	if st := br.Stats(); st.Errors != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestBearerAuthBadCredentials(t *testing.T) {
	f, _ := authFixture(t)
	_, err := remote.NewBlobReader(t.Context(), f.repo, f.dgst, int64(len(f.data)),
		remote.WithKeychain(testKeychain{host: f.host, user: "alice", pass: "wrong"}))
	if !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("err = %v, want errdefs.ErrUnauthenticated", err)
	}
}

// RemoteOptions gives ggcr the same credentials: a push through token auth
// works with them and fails without.
func TestRemoteOptionsCarryCredentials(t *testing.T) {
	f, _ := authFixture(t)
	creds := remote.WithKeychain(testKeychain{host: f.host, user: "alice", pass: "s3cret"})
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := remote.ParseReference(f.host+"/test/pushed:v1", creds)
	if err != nil {
		t.Fatal(err)
	}
	if err := ggcrremote.Write(ref, img, remote.RemoteOptions(t.Context(), anonymous)...); err == nil {
		t.Fatal("anonymous push to a token-auth registry succeeded")
	}
	if err := ggcrremote.Write(ref, img, remote.RemoteOptions(t.Context(), creds, remote.WithUserAgent("strata-test"))...); err != nil {
		t.Fatalf("push with credentials: %v", err)
	}
	got, err := remote.Resolve(t.Context(), ref.String(), creds)
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, got, img)

	// And the pushed layer reads back by range through the same auth.
	l := got.Layers[0]
	repo, _ := name.NewRepository(f.host + "/test/pushed")
	br, err := remote.NewBlobReader(t.Context(), repo, l.Digest, l.Size, creds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	parts, err := br.Fetch(t.Context(), []remote.Range{{Off: 0, Len: 2}, {Off: l.Size - 2, Len: 2}})
	if err != nil || len(parts[0]) != 2 || parts[0][0] != 0x1f || parts[0][1] != 0x8b {
		t.Fatalf("Fetch: err=%v parts=%x, want the gzip magic first", err, parts)
	}
}

// A TLS registry with a self-signed certificate is usable only when listed
// by WithInsecureRegistries.
func TestInsecureRegistrySkipsTLSVerification(t *testing.T) {
	reg := newRegistry()
	tlsSrv := httptest.NewUnstartedServer(reg)
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	host := strings.TrimPrefix(tlsSrv.URL, "https://")
	raw, err := name.NewRepository(startServer(t, reg) + "/test/tls")
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(7, 1000)
	pushBlob(t, raw, data)
	repo, err := name.NewRepository(host + "/test/tls")
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(data)
	_, err = remote.NewBlobReader(t.Context(), repo, d, 1000, anonymous)
	if err == nil {
		t.Fatal("unverified TLS accepted for a registry not listed as insecure")
	}
	// Said as what it is (a loopback registry's plain-HTTP retry answered
	// 400, which read as an invalid argument), with the ways out.
	if !strings.Contains(err.Error(), "TLS certificate is not trusted") || !strings.Contains(err.Error(), "--insecure") ||
		errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unverified certificate: %v", err)
	}
	br, err := remote.NewBlobReader(t.Context(), repo, d, 1000, anonymous, remote.WithInsecureRegistries(host))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	p := make([]byte, 100)
	if _, err := br.ReadAtContext(t.Context(), p, 900); err != nil || !bytes.Equal(p, data[900:]) {
		t.Fatalf("read over TLS: %v", err)
	}
}
