package proxy

import (
	"net/http"
	"sync/atomic"
)

// Fault is consulted for every request (after the first half of the RTT).
// It may answer the request itself and return true, or return false to let
// the proxy forward it. w counts and shapes like any response.
type Fault func(w http.ResponseWriter, r *http.Request) (handled bool)

// FailN answers the first n requests that match (nil matches all) with
// status and a registry-style error body; later ones pass through.
func FailN(n int, status int, match func(*http.Request) bool) Fault {
	var seen atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) bool {
		if match != nil && !match(r) {
			return false
		}
		if seen.Add(1) > int64(n) {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"errors":[{"code":"UNKNOWN","message":"strata test proxy: injected fault"}]}` + "\n"))
		return true
	}
}

// FlipByte forwards matching requests (nil matches all) but inverts the
// byte at offsetInBody of each response body, counted from the start of
// that response (so for a Range response, from the range start). A body
// shorter than that passes unchanged. Every matching request is corrupted.
func FlipByte(match func(*http.Request) bool, offsetInBody int64) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if match != nil && !match(r) {
			return false
		}
		Forward(&flipWriter{ResponseWriter: w, at: offsetInBody}, r)
		return true
	}
}

type flipWriter struct {
	http.ResponseWriter
	at, pos int64
}

func (w *flipWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *flipWriter) Write(b []byte) (int, error) {
	if rel := w.at - w.pos; rel >= 0 && rel < int64(len(b)) {
		// Copy: b belongs to the caller (ReverseProxy's buffer).
		c := append([]byte(nil), b...)
		c[rel] ^= 0xff
		b = c
	}
	n, err := w.ResponseWriter.Write(b)
	w.pos += int64(n)
	return n, err
}

// Down drops the connection without answering, as a crashed registry or a
// reset link does. Clients see EOF or a reset, never a status.
func Down() Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			// HTTP/2 cannot be hijacked; the proxy only serves HTTP/1.1.
			http.Error(w, "proxy: Down: "+err.Error(), http.StatusInternalServerError)
			return true
		}
		_ = conn.Close()
		return true
	}
}
