package remote_test

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stratafs/strata/remote"
)

// blobStore stands in for S3/a CDN: it serves the blob only under the
// current signature, and records any Authorization it is sent.
type blobStore struct {
	t        *testing.T
	data     []byte
	hits     atomic.Int64
	sig      atomic.Int64 // the signature currently valid
	mu       sync.Mutex
	authSeen []string
}

func (s *blobStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	if a := r.Header.Get("Authorization"); a != "" {
		s.mu.Lock()
		s.authSeen = append(s.authSeen, a)
		s.mu.Unlock()
	}
	if r.URL.Query().Get("X-Amz-Signature") != fmt.Sprint(s.sig.Load()) {
		http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", http.StatusForbidden)
		return
	}
	http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(s.data))
}

// redirectTo makes the registry answer blob GETs with a redirect to the
// store, signed with the store's current signature.
func redirectTo(storeHost *string, store *blobStore) func(http.ResponseWriter, *http.Request, int64) bool {
	return func(w http.ResponseWriter, r *http.Request, n int64) bool {
		loc := fmt.Sprintf("http://%s/bucket/blob?X-Amz-Signature=%d", *storeHost, store.sig.Load())
		http.Redirect(w, r, loc, http.StatusTemporaryRedirect)
		return true
	}
}

func TestRedirectIsRememberedWithoutCredentials(t *testing.T) {
	store := &blobStore{t: t}
	store.sig.Store(1)
	var storeHost string
	f := newBlobFixture(t, 128<<10, redirectTo(&storeHost, store), newTokenAuth("alice", "s3cret"))
	store.data = f.data
	storeHost = startServer(t, store)

	br := f.reader(t, remote.WithKeychain(testKeychain{host: f.host, user: "alice", pass: "s3cret"}))
	f.readCheck(t, br, 0, 100)
	f.readCheck(t, br, 50000, 10000)
	f.readCheck(t, br, 128<<10-1, 1)
	if got := f.inj.gets.Load(); got != 1 {
		t.Fatalf("registry saw %d blob GETs, want 1 (the store URL is reused)", got)
	}
	if got := store.hits.Load(); got != 3 {
		t.Fatalf("store saw %d requests, want 3", got)
	}

	// The presigned URL expires: one 403 from the store, then the registry
	// hands out a fresh URL, and the read still succeeds.
	store.sig.Store(2)
	f.readCheck(t, br, 70000, 5000)
	if got := f.inj.gets.Load(); got != 2 {
		t.Fatalf("registry saw %d blob GETs after expiry, want 2", got)
	}
	if got := store.hits.Load(); got != 5 {
		t.Fatalf("store saw %d requests after expiry, want 5 (one 403, one fresh)", got)
	}
	f.readCheck(t, br, 1, 1)
	if got := f.inj.gets.Load(); got != 2 {
		t.Fatalf("registry saw %d blob GETs, want the fresh URL reused", got)
	}
	if st := br.Stats(); st.Retries != 0 || st.Errors != 0 {
		t.Fatalf("Stats = %+v: falling back from an expired URL is not a failure", st)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.authSeen) != 0 {
		t.Fatalf("blob store received Authorization headers: %q", store.authSeen)
	}
}

func TestErrorsRedactPresignedQuery(t *testing.T) {
	var storeHost string
	store := &blobStore{t: t}
	resetting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { resetConn(t, w) })
	f := newBlobFixture(t, 4096, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		loc := fmt.Sprintf("http://%s/bucket/blob?X-Amz-Credential=AKIASECRET&X-Amz-Signature=topsecret", storeHost)
		http.Redirect(w, r, loc, http.StatusTemporaryRedirect)
		return true
	}, nil)
	store.data = f.data
	storeHost = startServer(t, resetting)
	br := f.reader(t, remote.WithRetry(2, time.Millisecond), noKeepAlive)
	_, err := br.ReadAtContext(t.Context(), make([]byte, 10), 0)
	if err == nil {
		t.Fatal("read through a resetting blob store succeeded")
	}
	if msg := err.Error(); strings.Contains(msg, "topsecret") || strings.Contains(msg, "AKIASECRET") {
		t.Fatalf("error leaks presigned credentials: %s", msg)
	}
	wantTemporary(t, err, true, 0)
}
