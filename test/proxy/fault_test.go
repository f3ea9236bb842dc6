package proxy

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/stratafs/strata/test/registry"
)

func TestFailN(t *testing.T) {
	reg := registry.StartInProcess(t)
	b := pushBlob(t, reg, "fail", 1000)
	p := newProxy(t, reg.URL())
	p.SetFault(FailN(2, http.StatusServiceUnavailable, IsBlob))
	if status, _, err := get(t, p.URL()+"/v2/", ""); err != nil || status != http.StatusOK {
		t.Fatalf("non-matching request: %d %v", status, err)
	}
	for i, want := range []int{503, 503, 200, 200} {
		status, body, err := get(t, p.URL()+b.path, "")
		if err != nil || status != want {
			t.Fatalf("blob request %d: %d %v, want %d", i, status, err, want)
		}
		if want == 200 && !bytes.Equal(body, b.data) {
			t.Fatalf("blob request %d: wrong body", i)
		}
	}
	s := p.Stats()
	if s.Requests != 5 || !s.Log[1].Fault || !s.Log[2].Fault || s.Log[3].Fault {
		t.Errorf("stats %+v", s)
	}
}

// FlipByte corrupts exactly one byte, at the offset within each response
// body, for whole and ranged reads alike.
func TestFlipByte(t *testing.T) {
	reg := registry.Start(t)
	b := pushBlob(t, reg, "flip", 200_000)
	p := newProxy(t, reg.URL())
	p.SetFault(FlipByte(IsBlob, 150_000))
	_, body, err := get(t, p.URL()+b.path, "")
	if err != nil {
		t.Fatal(err)
	}
	checkFlipped(t, body, b.data, 150_000)

	// The offset counts within each response: a 100000-byte range body
	// is shorter than 150000 and passes unchanged...
	_, body, err = get(t, p.URL()+b.path, "bytes=100000-199999")
	if err != nil || !bytes.Equal(body, b.data[100_000:]) {
		t.Fatalf("short range body changed (err %v)", err)
	}
	// ...and offset 10 of a range is blob byte 100010.
	p.SetFault(FlipByte(IsBlob, 10))
	_, body, err = get(t, p.URL()+b.path, "bytes=100000-199999")
	if err != nil {
		t.Fatal(err)
	}
	checkFlipped(t, body, b.data[100_000:], 10)

	p.SetFault(nil)
	if _, body, _ = get(t, p.URL()+b.path, ""); !bytes.Equal(body, b.data) {
		t.Fatal("body still corrupt after SetFault(nil)")
	}
}

func checkFlipped(t *testing.T, got, want []byte, at int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("length %d, want %d", len(got), len(want))
	}
	var diffs []int
	for i := range got {
		if got[i] != want[i] {
			diffs = append(diffs, i)
		}
	}
	if len(diffs) != 1 || diffs[0] != at || got[at] != ^want[at] {
		t.Fatalf("differences at %v, want exactly [%d] inverted", diffs, at)
	}
}

func TestDown(t *testing.T) {
	reg := registry.StartInProcess(t)
	p := newProxy(t, reg.URL())
	p.SetFault(Down())
	if status, _, err := get(t, p.URL()+"/v2/", ""); err == nil {
		t.Fatalf("got status %d from a down proxy", status)
	}
	p.SetFault(nil)
	if status, _, err := get(t, p.URL()+"/v2/", ""); err != nil || status != http.StatusOK {
		t.Fatalf("after clearing: %d %v", status, err)
	}
	// The dropped request is recorded before its connection closes: no
	// waiting for the handler to return.
	if s := p.Stats(); s.Requests < 2 || s.Log[0].Status != 0 || !s.Log[0].Fault || !s.Log[0].Done {
		t.Errorf("stats %+v", s)
	}
}

func TestNewRejectsBadTarget(t *testing.T) {
	for _, target := range []string{"", "127.0.0.1:5000", "https://127.0.0.1:5000", "http://"} {
		if p, err := New(target); err == nil {
			p.Close()
			t.Errorf("New(%q) succeeded", target)
		}
	}
}

func TestForwardOutsideFault(t *testing.T) {
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1/", nil)
	rec := &recorderWriter{header: http.Header{}}
	Forward(rec, req)
	if rec.status != http.StatusInternalServerError {
		t.Fatalf("status %d", rec.status)
	}
}

type recorderWriter struct {
	header http.Header
	status int
}

func (w *recorderWriter) Header() http.Header         { return w.header }
func (w *recorderWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *recorderWriter) WriteHeader(s int)           { w.status = s }
