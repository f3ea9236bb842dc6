package remote_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

// TestLayerURLsServeWhatTheRegistryLacks: a layer the registry does not
// hold is read from the first of its urls that serves it, unusable ones
// skipped, and read from there again without asking the registry.
func TestLayerURLsServeWhatTheRegistryLacks(t *testing.T) {
	data := randomBytes(7, 300_000)
	var mu sync.Mutex
	asked := map[string]int{}
	count := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			asked[r.URL.Path]++
			mu.Unlock()
			h.ServeHTTP(w, r)
		})
	}
	files := http.NewServeMux()
	files.HandleFunc("/layer.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "layer.tar.gz", time.Time{}, bytes.NewReader(data))
	})
	srv := httptest.NewServer(count(files))
	t.Cleanup(srv.Close)
	host := startServer(t, count(newRegistry()))
	repo, err := name.NewRepository(host + "/test/foreign")
	if err != nil {
		t.Fatal(err)
	}
	l := remote.Layer{Digest: digest.FromBytes(data), Size: int64(len(data)),
		URLs: []string{"ftp://example.com/layer", "http://user:pw@127.0.0.1/layer", srv.URL + "/gone", srv.URL + "/layer.tar.gz"}}
	br, err := remote.NewLayerReader(t.Context(), repo, l, anonymous, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	for _, r := range [][2]int64{{0, 4096}, {100_000, 50_000}, {299_000, 1000}} {
		p := make([]byte, r[1])
		if _, err := br.ReadAtContext(t.Context(), p, r[0]); err != nil {
			t.Fatalf("read %v: %v", r, err)
		}
		if !bytes.Equal(p, data[r[0]:r[0]+r[1]]) {
			t.Fatalf("read %v: wrong bytes", r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	blobPath := "/v2/test/foreign/blobs/" + l.Digest.String()
	if asked[blobPath] != 1 || asked["/gone"] != 1 || asked["/layer.tar.gz"] != 3 {
		t.Errorf("requests %v: want the registry and the missing url once, then the serving url for every read", asked)
	}
}

// TestLayerWithoutURLsStaysNotFound: without urls, a blob the registry
// lacks is an error naming it, as before.
func TestLayerWithoutURLsStaysNotFound(t *testing.T) {
	repo, err := name.NewRepository(startServer(t, newRegistry()) + "/test/none")
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("nowhere")
	br, err := remote.NewLayerReader(t.Context(), repo, remote.Layer{Digest: digest.FromBytes(data), Size: int64(len(data))}, anonymous, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	if _, err := br.ReadAtContext(t.Context(), make([]byte, 3), 0); err == nil {
		t.Fatal("read a blob nobody has")
	}
}
