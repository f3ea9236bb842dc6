package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"time"
)

// chunkFor is how much one response writes per link reservation: about
// 20 ms of link time, between 1 KiB and 32 KiB, so concurrent responses
// interleave on the shared link and a slow link still trickles bytes.
func chunkFor(bps int64) int {
	if bps <= 0 {
		return 32 << 10
	}
	return int(min(32<<10, max(1<<10, bps/50)))
}

// shapedWriter applies the second half of the RTT before the first response
// byte, paces body bytes through the shared link, and counts them.
type shapedWriter struct {
	http.ResponseWriter
	p           *Proxy
	entry       *Entry
	start       time.Time
	done        <-chan struct{} // the request context's Done
	wroteHeader bool
	inFault     bool // a Fault is answering: what it sends is a fault
}

// Unwrap lets http.ResponseController reach Flush underneath (ReverseProxy
// flushes streamed bodies).
func (w *shapedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack records the request's outcome, then hands over the connection
// (Down hijacks). Once hijacked the proxy cannot see what the client sees,
// and the client may see the connection close before the handler returns,
// so the entry is final (Done, Status as sent so far) at the hijack.
// http.ResponseController finds this method before it tries Unwrap.
func (w *shapedWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.inFault {
		w.p.stats.markFault(w.entry)
	}
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.p.stats.end(w.entry, time.Since(w.start))
	return conn, brw, nil
}

func (w *shapedWriter) WriteHeader(status int) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	sleep(w.done, w.p.stop, w.p.link.current().RTT/2)
	w.p.stats.setStatus(w.entry, status, w.inFault)
	w.ResponseWriter.WriteHeader(status)
	// Headers travel at once on a real link; without a flush they would
	// wait in the server's buffer for the first paced body bytes.
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *shapedWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	bps := w.p.link.current().BandwidthBps
	size := chunkFor(bps)
	written := 0
	for written < len(b) {
		chunk := b[written:min(len(b), written+size)]
		if !pace(w.done, w.p.stop, w.p.link.reserve(down, len(chunk))) {
			return written, http.ErrAbortHandler
		}
		w.p.stats.addBytes(w.entry, int64(len(chunk)))
		n, err := w.ResponseWriter.Write(chunk)
		written += n
		if n < len(chunk) {
			w.p.stats.addBytes(w.entry, int64(n-len(chunk)))
		}
		if err != nil {
			return written, err
		}
		if bps > 0 {
			// Deliver paced bytes when they are due, not when a buffer fills.
			_ = http.NewResponseController(w.ResponseWriter).Flush()
		}
	}
	return written, nil
}

// Flush is explicit (not only via Unwrap) so code that type-asserts
// http.Flusher, as older middleware does, still works.
func (w *shapedWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// shapedBody paces a request body (an upload) through the link's up
// direction and counts it. The proxy reads it only as fast as the link
// would carry it, so the registry, and the client's wait for the answer,
// see the upload arrive at the link's rate.
type shapedBody struct {
	io.ReadCloser
	p     *Proxy
	entry *Entry
	done  <-chan struct{} // the request context's Done
}

func (b *shapedBody) Read(buf []byte) (int, error) {
	bps := b.p.link.current().BandwidthBps
	if size := chunkFor(bps); len(buf) > size {
		buf = buf[:size]
	}
	n, err := b.ReadCloser.Read(buf)
	if n > 0 {
		b.p.stats.addBytesIn(b.entry, int64(n))
		if !pace(b.done, b.p.stop, b.p.link.reserve(up, n)) {
			return n, http.ErrAbortHandler
		}
	}
	return n, err
}
