package e2e

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stratafs/strata/internal/daemon"
	"github.com/stratafs/strata/test/fixture"
	"github.com/stratafs/strata/test/proxy"
)

// rangeStart is where a request's Range header starts, -1 without one.
func rangeStart(r *http.Request) int64 {
	v, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !ok {
		return -1
	}
	from, _, _ := strings.Cut(v, "-")
	n, err := strconv.ParseInt(from, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// TestBackgroundFetchYieldsToReads: with prefetch = "all" a fresh mount
// of fixture.Big(200) fetches the whole layer in the background, in large
// requests. A demand read of a small file (stored after the 200 MiB file)
// is held at the registry; while it waits, the background fetch sends
// nothing new: at most the requests it had queued before the read, where
// without the rule it would send dozens (the link is fast). Once the read
// is let go, the background fetch goes on, and reading any file afterwards
// moves nothing. An ordering check on the proxy's log, not a timing one.
func TestBackgroundFetchYieldsToReads(t *testing.T) {
	reg, ref := bigImage(t)
	p := startProxy(t, reg)
	const bigEnd = 200 << 20
	var background atomic.Int64 // background requests seen (the big file's region)
	demandArrived := make(chan struct{}, 16)
	release := make(chan struct{})
	var once sync.Once
	d := startDaemon(t, func(c *daemon.Config) { c.Prefetch = "all" })
	dir, m := d.mount(t, viaProxy(ref, reg, p)) // reads the TOC, at the blob's end
	defer once.Do(func() { close(release) })
	p.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if !proxy.IsBlob(r) || r.Method != http.MethodGet {
			return false
		}
		switch at := rangeStart(r); {
		case at < 0:
		case at < bigEnd-(1<<20):
			background.Add(1)
		default:
			demandArrived <- struct{}{}
			<-release
		}
		return false
	})
	defer p.SetFault(nil)

	deadline := time.Now().Add(30 * time.Second)
	for background.Load() < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("the background fetch made %d requests in 30s", background.Load())
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		readChecked(t, dir, "small/a/4k.bin", fixture.Big(200))
	}()
	select {
	case <-demandArrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the read's request did not reach the registry")
	}
	before := background.Load()
	time.Sleep(500 * time.Millisecond) // a fast link: an unruly background fetch sends dozens
	during := background.Load() - before
	once.Do(func() { close(release) })
	<-done
	t.Logf("background requests before the read: %d; while it waited: %d", before, during)
	if during > 3 {
		t.Errorf("%d background requests went out while a read waited for its own", during)
	}

	// The background fetch completes the layer: then nothing moves.
	size := m.Layers[0].Size
	deadline = time.Now().Add(60 * time.Second)
	for p.Stats().BlobBytes < size {
		if time.Now().After(deadline) {
			t.Fatalf("the background fetch moved %d of %d bytes in 60s", p.Stats().BlobBytes, size)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the last pieces are decoded and cached
	p.ResetStats()
	for _, f := range []string{"small/b/4k.bin", "other/4k.bin", fixture.BigFile} {
		readChecked(t, dir, f, fixture.Big(200))
	}
	if s := p.Stats(); s.BlobBytes != 0 {
		t.Errorf("reading after the background fetch moved %d bytes in %d requests", s.BlobBytes, s.BlobRequests)
	}
}

// TestPrefetchOffFetchesOnlyReads: with prefetch = "off" a mount fetches
// what is read and its read-ahead, however broadly it is read.
func TestPrefetchOffFetchesOnlyReads(t *testing.T) {
	reg, ref := bigImage(t)
	p := startProxy(t, reg)
	d := startDaemon(t, func(c *daemon.Config) { c.Prefetch = "off" })
	dir, m := d.mount(t, viaProxy(ref, reg, p))
	for _, f := range []string{"small/a/4k.bin", "small/b/4k.bin", "other/4k.bin"} {
		readChecked(t, dir, f, fixture.Big(200))
	}
	time.Sleep(200 * time.Millisecond) // a background fetch, were there one, would be on its way
	if s := p.Stats(); s.BlobBytes > m.Layers[0].Size/10 {
		t.Errorf("moved %d of %d bytes with prefetch off", s.BlobBytes, m.Layers[0].Size)
	}
	if strings.Contains(logs.String(), "fetching the rest in the background") {
		t.Error("a background fetch started with prefetch off")
	}
}
