package remote_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

// noKeepAlive stops net/http from transparently retrying a request on a
// reused connection, so that only the reader's own retries are measured.
var noKeepAlive = remote.WithTransport(&http.Transport{DisableKeepAlives: true})

// requestedRange parses the closed Range header the reader sends.
func requestedRange(t *testing.T, r *http.Request) (first, last int64) {
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err != nil {
		t.Errorf("unexpected Range %q: %v", r.Header.Get("Range"), err)
	}
	return first, last
}

// resetConn drops the connection with a TCP RST.
func resetConn(t *testing.T, w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		tcp.SetLinger(0)
	}
	conn.Close()
}

func wantTemporary(t *testing.T, err error, temporary bool, status int) {
	t.Helper()
	var e *remote.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v (%T), want a *remote.Error", err, err)
	}
	if e.Temporary() != temporary || e.StatusCode != status {
		t.Fatalf("err = %v: Temporary()=%v status=%d, want %v %d", err, e.Temporary(), e.StatusCode, temporary, status)
	}
}

func TestRetries503ThenSucceeds(t *testing.T) {
	f := newBlobFixture(t, 4096, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		if n <= 2 {
			http.Error(w, "try later", http.StatusServiceUnavailable)
			return true
		}
		return false
	}, nil)
	br := f.reader(t)
	f.readCheck(t, br, 100, 200)
	if got, st := f.inj.gets.Load(), br.Stats(); got != 3 || st.Retries != 2 || st.Errors != 0 {
		t.Fatalf("gets=%d stats=%+v, want 3 gets and 2 retries", got, st)
	}
}

func TestPersistent5xxGivesUpAfterAttempts(t *testing.T) {
	f := newBlobFixture(t, 4096, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		http.Error(w, "broken", http.StatusBadGateway)
		return true
	}, nil)
	br := f.reader(t, remote.WithRetry(3, time.Millisecond))
	_, err := br.ReadAtContext(t.Context(), make([]byte, 10), 0)
	wantTemporary(t, err, true, http.StatusBadGateway)
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("err = %v, want errdefs.ErrUnavailable quoting the body", err)
	}
	if got := f.inj.gets.Load(); got != 3 {
		t.Fatalf("gets = %d, want 3 attempts", got)
	}
}

func TestNotFoundIsNotRetried(t *testing.T) {
	f := newBlobFixture(t, 100, nil, nil)
	missing := digest.FromString("not pushed")
	br, err := remote.NewBlobReader(t.Context(), f.repo, missing, 100, anonymous, fastRetry)
	if err != nil {
		t.Fatal(err)
	}
	_, err = br.ReadAtContext(t.Context(), make([]byte, 10), 0)
	wantTemporary(t, err, false, http.StatusNotFound)
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), missing.String()) {
		t.Fatalf("err = %v, want errdefs.ErrNotFound naming the blob", err)
	}
	if got := f.inj.gets.Load(); got != 1 || br.Stats().Retries != 0 {
		t.Fatalf("gets = %d retries = %d, want a single attempt", got, br.Stats().Retries)
	}
}

func TestConnectionResetIsRetried(t *testing.T) {
	f := newBlobFixture(t, 4096, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		if n <= 2 {
			resetConn(t, w)
			return true
		}
		return false
	}, nil)
	br := f.reader(t, noKeepAlive)
	f.readCheck(t, br, 0, 4096)
	if got, st := f.inj.gets.Load(), br.Stats(); got != 3 || st.Retries != 2 {
		t.Fatalf("gets=%d stats=%+v, want 3 gets and 2 retries", got, st)
	}
}

func TestShortBodyIsRetried(t *testing.T) {
	var f *blobFixture
	f = newBlobFixture(t, 4096, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		if n > 1 {
			return false
		}
		first, last := requestedRange(t, r)
		half := (last - first + 1) / 2
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(f.data)))
		w.Header().Set("Content-Length", fmt.Sprint(half))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(f.data[first : first+half])
		return true
	}, nil)
	br := f.reader(t)
	f.readCheck(t, br, 1000, 1000)
	if got, st := f.inj.gets.Load(), br.Stats(); got != 2 || st.Retries != 1 {
		t.Fatalf("gets=%d stats=%+v, want 2 gets and 1 retry", got, st)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	var mu sync.Mutex
	var seen []time.Time
	f := newBlobFixture(t, 4096, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		mu.Lock()
		seen = append(seen, time.Now())
		mu.Unlock()
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return true
		}
		return false
	}, nil)
	br := f.reader(t) // 1ms backoff: only Retry-After can explain a 1s gap
	f.readCheck(t, br, 0, 10)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("server saw %d requests, want 2", len(seen))
	}
	if gap := seen[1].Sub(seen[0]); gap < 900*time.Millisecond {
		t.Fatalf("retried after %v, want >= 1s as Retry-After asked", gap)
	}
}

func TestRetryAfterBeyondCapFailsFast(t *testing.T) {
	f := newBlobFixture(t, 4096, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		w.Header().Set("Retry-After", "3600")
		http.Error(w, "come back tomorrow", http.StatusTooManyRequests)
		return true
	}, nil)
	br := f.reader(t)
	start := time.Now()
	_, err := br.ReadAtContext(t.Context(), make([]byte, 10), 0)
	if !errors.Is(err, errdefs.ErrResourceExhausted) || time.Since(start) > 2*time.Second {
		t.Fatalf("err = %v after %v, want a prompt ErrResourceExhausted", err, time.Since(start))
	}
}

func wrongRange(t *testing.T, f **blobFixture, times int64) func(http.ResponseWriter, *http.Request, int64) bool {
	return func(w http.ResponseWriter, r *http.Request, n int64) bool {
		if n > times {
			return false
		}
		first, last := requestedRange(t, r)
		data := (*f).data
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first+1, last+1, len(data)))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[first+1 : last+2])
		return true
	}
}

func TestWrongContentRangeRetriedOnce(t *testing.T) {
	var f *blobFixture
	f = newBlobFixture(t, 4096, wrongRange(t, &f, 1), nil)
	br := f.reader(t)
	f.readCheck(t, br, 10, 20)
	if got := f.inj.gets.Load(); got != 2 {
		t.Fatalf("gets = %d, want 2", got)
	}
}

func TestWrongContentRangeFailsOnSecond(t *testing.T) {
	var f *blobFixture
	f = newBlobFixture(t, 4096, wrongRange(t, &f, 100), nil)
	br := f.reader(t) // 5 attempts allowed, but a mismatch only gets one retry
	_, err := br.ReadAtContext(t.Context(), make([]byte, 20), 10)
	if !errors.Is(err, remote.ErrRangeMismatch) || !errors.Is(err, errdefs.ErrDataLoss) {
		t.Fatalf("err = %v, want ErrRangeMismatch", err)
	}
	if got := f.inj.gets.Load(); got != 2 {
		t.Fatalf("gets = %d, want 2 (retry once, then fail)", got)
	}
}

func TestRequestTimeoutBoundsRetries(t *testing.T) {
	f := newBlobFixture(t, 4096, func(w http.ResponseWriter, r *http.Request, n int64) bool {
		hold(r, 5*time.Second)
		return true
	}, nil)
	br := f.reader(t, remote.WithRequestTimeout(300*time.Millisecond))
	start := time.Now()
	_, err := br.ReadAtContext(t.Context(), make([]byte, 10), 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	t.Log(err)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("read took %v with a 300ms request timeout", d)
	}
}
