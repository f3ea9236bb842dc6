package proxy

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stratafs/strata/test/registry"
)

// Shaping tests assert lower bounds only: a loaded machine can make things
// slower, never faster than the link allows.

const tenMbit = 10_000_000 / 8

func TestBandwidthCap(t *testing.T) {
	reg := registry.StartInProcess(t)
	b := pushBlob(t, reg, "bw", 1<<20)
	p := newProxy(t, reg.URL(), WithProfile(Profile{Name: "10mbit", BandwidthBps: tenMbit}))
	start := time.Now()
	status, body, err := get(t, p.URL()+b.path, "")
	if err != nil || status != http.StatusOK || len(body) != 1<<20 {
		t.Fatalf("%d, %d bytes, %v", status, len(body), err)
	}
	// 1 MiB at 1.25 MB/s is 0.84 s.
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("1 MiB at 10 Mbit/s took %v, want > 0.5s", d)
	}
}

// The cap is one link: two concurrent 512 KiB responses together take as
// long as one 1 MiB response, not half of it.
func TestBandwidthShared(t *testing.T) {
	reg := registry.StartInProcess(t)
	b := pushBlob(t, reg, "shared", 512<<10)
	p := newProxy(t, reg.URL())
	p.SetProfile(Profile{Name: "10mbit", BandwidthBps: tenMbit})
	start := time.Now()
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, body, err := get(t, p.URL()+b.path, ""); err != nil || len(body) != 512<<10 {
				t.Errorf("%d, %d bytes, %v", status, len(body), err)
			}
		}()
	}
	wg.Wait()
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("2 x 512 KiB concurrently at 10 Mbit/s took %v, want > 0.5s", d)
	}
}

func TestRTT(t *testing.T) {
	reg := registry.StartInProcess(t)
	p := newProxy(t, reg.URL(), WithProfile(Profile{Name: "slow", RTT: 60 * time.Millisecond}))
	start := time.Now()
	for range 10 {
		if status, _, err := get(t, p.URL()+"/v2/", ""); err != nil || status != http.StatusOK {
			t.Fatalf("%d %v", status, err)
		}
	}
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("10 requests at 60ms RTT took %v, want > 0.5s", d)
	}
	p.SetProfile(ProfileLo)
	if s := p.Stats(); s.Requests != 10 {
		t.Errorf("%d requests counted", s.Requests)
	}
}

func TestProfiles(t *testing.T) {
	for _, pr := range []Profile{ProfileLo, ProfileLAN, ProfileWAN} {
		if pr.Name == "" {
			t.Errorf("unnamed profile %+v", pr)
		}
	}
	if ProfileLAN.BandwidthBps != 125_000_000 || ProfileWAN.BandwidthBps != 12_500_000 ||
		ProfileLAN.RTT != time.Millisecond || ProfileWAN.RTT != 20*time.Millisecond || ProfileLo != (Profile{Name: "lo"}) {
		t.Errorf("profiles differ from the documented links: %+v %+v %+v", ProfileLo, ProfileLAN, ProfileWAN)
	}
}

// Close must abort a response that is being paced at a crawl instead of
// waiting for it.
func TestCloseAbortsSlowResponse(t *testing.T) {
	reg := registry.StartInProcess(t)
	b := pushBlob(t, reg, "crawl", 1<<20)
	p, err := New(reg.URL(), WithProfile(Profile{Name: "crawl", BandwidthBps: 10_000}))
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: time.Minute}
		resp, err := client.Get(p.URL() + b.path)
		close(started)
		if err == nil {
			_, err = resp.Body.Read(make([]byte, 1<<20))
			resp.Body.Close()
		}
		done <- err
	}()
	<-started
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("client still reading 30s after Close")
	}
	if _, err := http.Get(p.URL() + "/v2/"); err == nil {
		t.Fatal("proxy answers after Close")
	}
}

// Uploads are paced on their own half of the link: 1 MiB pushed at
// 10 Mbit/s takes at least as long as 1 MiB pulled.
func TestUploadBandwidthCap(t *testing.T) {
	reg := registry.StartInProcess(t)
	p := newProxy(t, reg.URL(), WithProfile(Profile{Name: "10mbit", BandwidthBps: tenMbit}))
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	r, err := name.NewRepository(p.Host() + "/up/capped")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := remote.WriteLayer(r, static.NewLayer(data, types.OCILayer)); err != nil {
		t.Fatal(err)
	}
	// 1 MiB at 1.25 MB/s is 0.84 s.
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("1 MiB pushed at 10 Mbit/s took %v, want > 0.5s", d)
	}
	if s := p.Stats(); s.BytesIn != 1<<20 {
		t.Errorf("BytesIn %d, want %d", s.BytesIn, 1<<20)
	}
}

// The link clock: a writer that comes back a little after its last piece
// was sent loses no link time (up to linkBurst of it); one that comes back
// after a longer pause gets no more than linkBurst of credit; pieces asked
// for together queue one after another.
func TestLinkClock(t *testing.T) {
	l := &link{profile: ProfileWAN} // 12.5 MB/s: 125 kB take 10 ms
	const piece = 125_000
	t0 := time.Unix(1000, 0)
	if got := l.reserveAt(down, piece, t0); !got.Equal(t0.Add(10*time.Millisecond - linkBurst)) {
		t.Fatalf("first piece on an idle link sent at %v, want t0+%v", got.Sub(t0), 10*time.Millisecond-linkBurst)
	}
	if got := l.reserveAt(down, piece, t0); !got.Equal(t0.Add(20*time.Millisecond - linkBurst)) {
		t.Fatalf("second piece asked for at once sent at %v, want after the first", got.Sub(t0))
	}
	// Back 2 ms after the second piece was sent: no time lost.
	late := t0.Add(22*time.Millisecond - linkBurst)
	if got := l.reserveAt(down, piece, late); !got.Equal(t0.Add(30*time.Millisecond - linkBurst)) {
		t.Fatalf("piece asked for 2 ms late sent at %v, want right after the second", got.Sub(t0))
	}
	// A second later the link has been idle: only linkBurst of credit.
	later := t0.Add(time.Second)
	if got := l.reserveAt(down, piece, later); !got.Equal(later.Add(10*time.Millisecond - linkBurst)) {
		t.Fatalf("piece after an idle second sent at %v after asking, want %v", got.Sub(later), 10*time.Millisecond-linkBurst)
	}
	// Uploads have their own half of the link.
	if got := l.reserveAt(up, piece, later); !got.Equal(later.Add(10*time.Millisecond - linkBurst)) {
		t.Fatalf("upload waited for the downloads: sent at %v", got.Sub(later))
	}
	// No cap: sent at once.
	free := &link{profile: ProfileLo}
	if got := free.reserveAt(down, piece, t0); !got.Equal(t0) {
		t.Fatalf("uncapped link sent at %v", got.Sub(t0))
	}
}
