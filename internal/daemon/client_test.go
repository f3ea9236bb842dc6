package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStreamCutShort: a daemon that stops in the middle of an answer (a
// crash, a stop) is said to have, and that what was asked may be asked
// again, not that "the answer ended early" alone.
func TestStreamCutShort(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"progress":"writing the new layer"}` + "\n" + `{"progr`)) //nolint:errcheck // the test's own answer
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	})}
	go srv.Serve(l) //nolint:errcheck // ends with the test
	t.Cleanup(func() { srv.Close() })
	var lines []string
	_, err = NewClient(sock).Commit(context.Background(), CommitRequest{Dir: "/x"}, func(s string) { lines = append(lines, s) })
	if err == nil || !strings.Contains(err.Error(), "stopped before answering") || !strings.Contains(err.Error(), "may be asked again") {
		t.Errorf("err = %v", err)
	}
	if len(lines) != 1 {
		t.Errorf("progress %q, want the one line sent", lines)
	}
}

// TestStreamInterrupted: an answer cut short by the caller (^C) is the
// context's error, which the command says as "interrupted", not that the
// answer ended early.
func TestStreamInterrupted(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.RawQuery, "silent") {
			<-r.Context().Done() // no answer at all yet
			return
		}
		w.Write([]byte(`{"progress":"pushing"}` + "\n")) //nolint:errcheck // the test's own answer
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})}
	go srv.Serve(l) //nolint:errcheck // ends with the test
	t.Cleanup(func() { srv.Close() })
	// In the middle of the answer.
	ctx, cancel := context.WithCancelCause(context.Background())
	_, err = NewClient(sock).Commit(ctx, CommitRequest{Dir: "/x"}, func(string) { cancel(errors.New("interrupt signal received")) })
	if !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "ended early") {
		t.Errorf("in the answer: err = %v, want the context's", err)
	}
	// Before it.
	ctx, cancel = context.WithCancelCause(context.Background())
	time.AfterFunc(50*time.Millisecond, func() { cancel(errors.New("interrupt signal received")) })
	var out struct{}
	err = NewClient(sock).do(ctx, http.MethodGet, "/v1/status?silent", nil, &out)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("before the answer: err = %v, want the context's", err)
	}
}
