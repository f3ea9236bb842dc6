package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/test/registry"
)

// blob is a blob pushed to a registry: its URL path and bytes.
type blob struct {
	path string
	data []byte
}

// pushBlob writes size random bytes as a blob of repo directly to reg.
func pushBlob(t *testing.T, reg *registry.Registry, repo string, size int) blob {
	t.Helper()
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(size), 1))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	layer := static.NewLayer(data, types.OCILayer)
	r, err := name.NewRepository(reg.Host() + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(r, layer); err != nil {
		t.Fatal(err)
	}
	d, _ := layer.Digest()
	return blob{path: "/v2/" + repo + "/blobs/" + d.String(), data: data}
}

func newProxy(t *testing.T, target string, opts ...Option) *Proxy {
	t.Helper()
	p, err := New(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// get fetches url with an optional Range header and returns status and body.
func get(t *testing.T, url, rng string) (int, []byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// TestCountingExact reads a blob whole and by range through the proxy in
// front of the distribution registry, and checks every counter exactly.
func TestCountingExact(t *testing.T) {
	reg := registry.Start(t)
	b := pushBlob(t, reg, "count/me", 100_000)
	p := newProxy(t, reg.URL())

	status, body, err := get(t, p.URL()+b.path, "")
	if err != nil || status != http.StatusOK || !bytes.Equal(body, b.data) {
		t.Fatalf("whole blob: %d, %d bytes, %v", status, len(body), err)
	}
	status, body, err = get(t, p.URL()+b.path, "bytes=1000-1999")
	if err != nil || status != http.StatusPartialContent || !bytes.Equal(body, b.data[1000:2000]) {
		t.Fatalf("range: %d, %d bytes, %v", status, len(body), err)
	}
	status, body, err = get(t, p.URL()+"/v2/", "")
	if err != nil || status != http.StatusOK {
		t.Fatalf("/v2/: %d %v", status, err)
	}
	s := p.Stats()
	wantOut := int64(100_000 + 1000 + len(body))
	if s.Requests != 3 || s.BlobRequests != 2 || s.BlobBytes != 101_000 || s.BytesOut != wantOut {
		t.Fatalf("stats %+v, want 3 requests, 2 blob, 101000 blob bytes, %d out", s, wantOut)
	}
	if len(s.Log) != 3 {
		t.Fatalf("log has %d entries", len(s.Log))
	}
	e := s.Log[1]
	if e.Method != http.MethodGet || e.Path != b.path || e.Range != "bytes=1000-1999" ||
		e.Status != http.StatusPartialContent || e.Bytes != 1000 || !e.Blob {
		t.Errorf("range entry %+v", e)
	}
	p.ResetStats()
	if s := p.Stats(); s.Requests != 0 || s.BytesOut != 0 || len(s.Log) != 0 {
		t.Errorf("after reset: %+v", s)
	}
}

// TestPushThroughProxy: a push follows the registry's upload Location
// URLs; they must lead back through the proxy, and the image must arrive.
func TestPushThroughProxy(t *testing.T) {
	reg := registry.Start(t)
	p := newProxy(t, reg.URL())
	img, err := random.Image(50_000, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(p.Host() + "/via/proxy:v1")
	if err := remote.Write(ref, img, remote.WithTransport(http.DefaultTransport.(*http.Transport).Clone())); err != nil {
		t.Fatal(err)
	}
	methods := map[string]int{}
	for _, e := range p.Stats().Log {
		methods[e.Method]++
	}
	if methods[http.MethodPut] < 4 { // 2 layers + config + manifest
		t.Errorf("only %d PUTs went through the proxy: %v", methods[http.MethodPut], methods)
	}
	// Uploads are counted as request bytes: at least the image's blobs.
	var want int64
	layers, _ := img.Layers()
	for _, l := range layers {
		n, _ := l.Size()
		want += n
	}
	raw, _ := img.RawManifest()
	cfg, _ := img.RawConfigFile()
	want += int64(len(raw) + len(cfg))
	st := p.Stats()
	if st.BytesIn < want {
		t.Errorf("BytesIn = %d, want at least the %d bytes of the image's blobs and manifest", st.BytesIn, want)
	}
	digests := 0
	for _, e := range st.Log {
		if e.Method == http.MethodPut && strings.Contains(e.Query, "digest=") {
			digests++
		}
	}
	if digests < 3 {
		t.Errorf("%d upload PUTs logged with their digest= query, want 3 (2 layers + config)", digests)
	}
	direct, _ := name.ParseReference(reg.Host() + "/via/proxy:v1")
	got, err := remote.Image(direct)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := digestOf(t, got.Digest), digestOf(t, img.Digest); a != b {
		t.Errorf("pushed %s, registry has %s", b, a)
	}
}

func digestOf[T fmt.Stringer](t *testing.T, f func() (T, error)) string {
	t.Helper()
	d, err := f()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// TestConcurrentCounting checks counters stay exact under parallel reads.
func TestConcurrentCounting(t *testing.T) {
	reg := registry.StartInProcess(t)
	b := pushBlob(t, reg, "par", 33_333)
	p := newProxy(t, reg.URL(), WithProfile(ProfileLAN))
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, body, err := get(t, p.URL()+b.path, "")
			if err == nil && (status != http.StatusOK || len(body) != len(b.data)) {
				err = fmt.Errorf("status %d, %d bytes", status, len(body))
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if s := p.Stats(); s.BlobRequests != n || s.BlobBytes != n*33_333 {
		t.Fatalf("stats %+v", s)
	}
}

// TestUploadCounted: request body bytes (a push's blob upload) are counted
// exactly, apart from the response bytes, in the totals and per request.
func TestUploadCounted(t *testing.T) {
	reg := registry.Start(t)
	p := newProxy(t, reg.URL())
	layer := static.NewLayer(bytes.Repeat([]byte("strata"), 20_000), types.OCILayer)
	r, err := name.NewRepository(p.Host() + "/up/load")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(r, layer, remote.WithTransport(http.DefaultTransport.(*http.Transport).Clone())); err != nil {
		t.Fatal(err)
	}
	s := p.Stats()
	var perRequest int64
	for _, e := range s.Log {
		perRequest += e.BytesIn
	}
	if s.BytesIn != 120_000 || perRequest != s.BytesIn {
		t.Fatalf("BytesIn %d (log sums to %d), want 120000", s.BytesIn, perRequest)
	}
	if s.BytesOut >= 120_000 {
		t.Errorf("BytesOut %d: the upload was counted as a download", s.BytesOut)
	}
}
