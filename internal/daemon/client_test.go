package daemon

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
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
