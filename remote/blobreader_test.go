package remote_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

func TestReadAtRanges(t *testing.T) {
	f := newBlobFixture(t, 256<<10, nil, nil)
	br := f.reader(t)
	if br.Size() != int64(len(f.data)) {
		t.Fatalf("Size() = %d, want %d", br.Size(), len(f.data))
	}
	f.readCheck(t, br, 0, 1)
	f.readCheck(t, br, 1000, 70000)
	f.readCheck(t, br, int64(len(f.data))-10, 10)

	// Past the end: the bytes there and io.EOF, as io.ReaderAt requires.
	p := make([]byte, 100)
	n, err := br.ReadAtContext(t.Context(), p, int64(len(f.data))-40)
	if n != 40 || err != io.EOF || !bytes.Equal(p[:40], f.data[len(f.data)-40:]) {
		t.Fatalf("read across end: n=%d err=%v", n, err)
	}
	if n, err := br.ReadAtContext(t.Context(), p, int64(len(f.data))); n != 0 || err != io.EOF {
		t.Fatalf("read at end: n=%d err=%v, want 0, EOF", n, err)
	}
	if _, err := br.ReadAtContext(t.Context(), p, -1); !errors.Is(err, remote.ErrInvalidRange) {
		t.Fatalf("negative offset: err=%v, want ErrInvalidRange", err)
	}
	st := br.Stats()
	if st.Requests != 4 || st.BytesFetched != 1+70000+10+40 || st.Retries != 0 || st.Errors != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	if got := f.inj.gets.Load(); got != 4 {
		t.Fatalf("server saw %d blob GETs, want 4", got)
	}
}

func TestReaderAtAdapter(t *testing.T) {
	f := newBlobFixture(t, 20000, nil, nil)
	br := f.reader(t)
	got, err := io.ReadAll(io.NewSectionReader(br.ReaderAt(t.Context()), 0, br.Size()))
	if err != nil || !bytes.Equal(got, f.data) {
		t.Fatalf("ReadAll through ReaderAt: err=%v, equal=%v", err, bytes.Equal(got, f.data))
	}
}

func TestRequestsUseClosedRanges(t *testing.T) {
	var ranges []string
	var mu sync.Mutex
	f := newBlobFixture(t, 5000, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		mu.Unlock()
		return false
	}, nil)
	br := f.reader(t)
	f.readCheck(t, br, 100, 50)
	f.readCheck(t, br, 4990, 10)
	want := []string{"bytes=100-149", "bytes=4990-4999"}
	if strings.Join(ranges, ",") != strings.Join(want, ",") {
		t.Fatalf("Range headers %q, want %q", ranges, want)
	}
}

// A server that answers Range with the whole blob: correct bytes, and the
// blob is downloaded once, not once per read.
func TestServerIgnoringRangeIsSpooledOnce(t *testing.T) {
	f := newBlobFixture(t, 300<<10, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		r.Header.Del("Range")
		return false
	}, nil)
	dir := t.TempDir()
	br := f.reader(t, remote.WithSpoolDir(dir))
	f.readCheck(t, br, 10, 100)
	f.readCheck(t, br, 200<<10, 50<<10)
	if _, err := br.Fetch(t.Context(), []remote.Range{{Off: 5, Len: 5}, {Off: 290 << 10, Len: 1}}); err != nil {
		t.Fatal(err)
	}
	if got := f.inj.gets.Load(); got != 1 {
		t.Fatalf("server saw %d blob GETs, want 1 (later reads served from the spool)", got)
	}
	if st := br.Stats(); st.BytesFetched != int64(len(f.data)) {
		t.Fatalf("BytesFetched = %d, want %d", st.BytesFetched, len(f.data))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("spool dir holds %d entries; the spool file must be unlinked", len(ents))
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := br.ReadAtContext(t.Context(), make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("read after Close: %v, want os.ErrClosed", err)
	}
}

// A full body that does not hash to the blob digest is never served.
func TestSpooledBlobIsVerified(t *testing.T) {
	var f *blobFixture
	f = newBlobFixture(t, 10000, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		bad := bytes.Clone(f.data)
		bad[len(bad)/2] ^= 0xff
		w.WriteHeader(http.StatusOK)
		w.Write(bad)
		return true
	}, nil)
	br := f.reader(t, remote.WithSpoolDir(t.TempDir()))
	_, err := br.ReadAtContext(t.Context(), make([]byte, 10), 0)
	if !errors.Is(err, remote.ErrDigestMismatch) || !errors.Is(err, errdefs.ErrDataLoss) {
		t.Fatalf("err = %v, want ErrDigestMismatch", err)
	}
	if got := f.inj.gets.Load(); got != 1 {
		t.Fatalf("server saw %d GETs; a digest mismatch must not be retried", got)
	}
}

func TestClosedReaderRefusesReads(t *testing.T) {
	f := newBlobFixture(t, 100, nil, nil)
	br := f.reader(t)
	br.Close()
	if _, err := br.ReadAtContext(t.Context(), make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("err = %v, want os.ErrClosed", err)
	}
}

func TestNewBlobReaderRejectsBadInput(t *testing.T) {
	f := newBlobFixture(t, 100, nil, nil)
	if _, err := remote.NewBlobReader(t.Context(), f.repo, digest.Digest("sha256:nothex"), 100, anonymous); !errors.Is(err, remote.ErrInvalidReference) {
		t.Fatalf("bad digest: %v", err)
	}
	if _, err := remote.NewBlobReader(t.Context(), f.repo, f.dgst, -1, anonymous); !errors.Is(err, remote.ErrInvalidRange) {
		t.Fatalf("negative size: %v", err)
	}
}

func TestCallerCancelReturnsPromptly(t *testing.T) {
	release := make(chan struct{})
	f := newBlobFixture(t, 1000, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		select {
		case <-release:
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return false
	}, nil)
	t.Cleanup(func() { close(release) })
	br := f.reader(t)
	ctx := withTimeout(t, 100*time.Millisecond)
	start := time.Now()
	_, err := br.ReadAtContext(ctx, make([]byte, 10), 0)
	if !errors.Is(err, ctx.Err()) || ctx.Err() == nil {
		t.Fatalf("err = %v, want the context's error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancelled read returned after %v", d)
	}
	if br.Stats().Errors != 1 {
		t.Fatalf("Errors = %d, want 1", br.Stats().Errors)
	}
}

// hold blocks a handler for at most d, so no test can hang on it.
func hold(r *http.Request, d time.Duration) {
	select {
	case <-r.Context().Done():
	case <-time.After(d):
	}
}

func TestMaxConcurrencyBoundsRequests(t *testing.T) {
	var inflight, peak atomic.Int64
	f := newBlobFixture(t, 64<<10, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		cur := inflight.Add(1)
		defer inflight.Add(-1)
		for {
			p := peak.Load()
			if cur <= p || peak.CompareAndSwap(p, cur) {
				break
			}
		}
		hold(r, 50*time.Millisecond)
		return false
	}, nil)
	br := f.reader(t, remote.WithMaxConcurrency(2))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { f.readCheck(t, br, int64(i)*4096, 100) })
	}
	wg.Wait()
	if p := peak.Load(); p != 2 {
		t.Fatalf("peak concurrent requests = %d, want exactly 2", p)
	}
}

func TestIdenticalConcurrentReadsFetchedOnce(t *testing.T) {
	arrived := make(chan struct{}, 16)
	release := make(chan struct{})
	f := newBlobFixture(t, 64<<10, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		return false
	}, nil)
	br := f.reader(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { f.readCheck(t, br, 1234, 5000) })
	}
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("no request reached the server")
	}
	// The other readers join the flight before it lands.
	for deadline := time.Now().Add(5 * time.Second); remote.FlightCallers(br, 1234, 5000) < 8; {
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("%d of 8 readers joined the fetch in flight", remote.FlightCallers(br, 1234, 5000))
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if got := f.inj.gets.Load(); got != 1 {
		t.Fatalf("server saw %d GETs for 8 identical concurrent reads, want 1", got)
	}
}

// A fetch whose every caller has given up is cancelled, so that its bytes
// stop taking the link; one caller giving up leaves it to the others.
func TestAbandonedFetchIsCancelled(t *testing.T) {
	arrived := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	f := newBlobFixture(t, 64<<10, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		if n > 1 {
			return false // later requests are answered at once
		}
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
			cancelled <- struct{}{}
			return true
		case <-time.After(10 * time.Second):
			return false
		}
	}, nil)
	br := f.reader(t)
	wait := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal(what)
		}
	}
	read := func(ctx context.Context, errs chan<- error) {
		_, err := br.ReadAtContext(ctx, make([]byte, 100), 0)
		errs <- err
	}

	// Two callers of one range; the first gives up, the request goes on
	// for the second.
	ctx1, cancel1 := context.WithCancel(t.Context())
	ctx2, cancel2 := context.WithCancel(t.Context())
	errs1, errs2 := make(chan error, 1), make(chan error, 1)
	go read(ctx1, errs1)
	wait(arrived, "no request reached the server")
	go read(ctx2, errs2)
	for deadline := time.Now().Add(5 * time.Second); remote.FlightCallers(br, 0, 100) < 2; {
		if time.Now().After(deadline) {
			t.Fatal("the second caller did not join the fetch in flight")
		}
		time.Sleep(time.Millisecond)
	}
	cancel1()
	if err := <-errs1; !errors.Is(err, context.Canceled) {
		t.Fatalf("first caller: %v, want context.Canceled", err)
	}
	select {
	case <-cancelled:
		t.Fatal("the request was cancelled while a caller still waited for it")
	case <-time.After(200 * time.Millisecond):
	}
	// Now the second gives up too: the request is cancelled.
	cancel2()
	if err := <-errs2; !errors.Is(err, context.Canceled) {
		t.Fatalf("second caller: %v, want context.Canceled", err)
	}
	wait(cancelled, "the request went on with no caller left")

	// A later read of the same range starts afresh and succeeds.
	f.readCheck(t, br, 0, 100)
	if n := f.inj.gets.Load(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
}
