package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/containerd/errdefs"
)

// maxErrorBody bounds how much of an error response is read for its message.
const maxErrorBody = 4 << 10

// arrived is told, while a ranged response's body comes in, that the first
// have bytes of the range are in buf: they never change after that. A
// retry starts again from the range's first byte.
type arrived func(buf []byte, have int64)

// attempt makes one try at the range: through the remembered blob-store URL
// when there is one, else (or when that fails) through the registry.
func (r *BlobReader) attempt(ctx context.Context, off, n int64, on arrived) ([]byte, error) {
	if sp := r.spool.Load(); sp != nil {
		// Another read found a server that ignores Range while we waited.
		return sp.read(off, n)
	}
	if err := r.sem.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	defer r.sem.Release(1)

	cl, err := r.clientFor(ctx)
	if err != nil {
		return nil, err
	}
	if u := r.direct.Load(); u != nil {
		hc := cl.direct
		if slices.Contains(r.foreign, u) {
			hc = r.foreignClient // its redirects are checked too
		}
		data, err := r.get(ctx, hc, u, off, n, on)
		if err == nil || ctx.Err() != nil {
			return data, err
		}
		// Presigned URLs expire and CDNs forget; the registry will hand out
		// a fresh location, so this failure is not worth a backoff.
		r.direct.CompareAndSwap(u, nil)
		slog.Debug("blob store URL failed, going back to the registry",
			"blob", r.digest, "error", err)
	}
	data, err := r.get(ctx, cl.registry, cl.url("blobs", r.digest.String()), off, n, on)
	if refused(err) {
		// The credentials the handshake resolved were refused (a
		// password changed, a login since): a new handshake reads them
		// again, and this read tries once more with it.
		if nc := r.redial(ctx, cl); nc != nil {
			data, err = r.get(ctx, nc.registry, nc.url("blobs", r.digest.String()), off, n, on)
		}
	}
	if err == nil || !errors.Is(err, errdefs.ErrNotFound) || len(r.foreign) == 0 {
		return data, err
	}
	// A foreign or non-distributable layer: the registry need not have
	// it, its descriptor's urls do. The first that serves the range is
	// kept, as a redirect's blob-store URL is.
	errs := []error{err}
	for _, u := range r.foreign {
		data, err := r.get(ctx, r.foreignClient, u, off, n, on)
		if err == nil {
			r.direct.Store(u)
			return data, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// refused reports whether err is the registry refusing the credentials.
func refused(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden)
}

// redial replaces the reader's client old, which the registry refused,
// with a new handshake (credentials resolved again), and returns it; nil
// when the handshake fails too.
func (r *BlobReader) redial(ctx context.Context, old *client) *client {
	nc, err := r.dial(ctx, old)
	if err != nil {
		slog.Debug("new handshake after refused credentials failed", "blob", r.digest, "error", err)
		return nil
	}
	return nc
}

// get sends one ranged GET with hc and turns the response into exactly n
// bytes or an *Error, telling on as they arrive.
func (r *BlobReader) get(ctx context.Context, hc *http.Client, u *url.URL, off, n int64, on arrived) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, &Error{Method: http.MethodGet, URL: redactURL(u), Err: err}
	}
	// A closed range: open-ended ranges let a server send the rest of a
	// multi-gigabyte blob.
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	r.stats.requests.Add(1)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, transportError(ctx, req, err)
	}
	defer resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusPartialContent:
		data, err := r.readPartial(ctx, resp, off, n, on)
		if err == nil && hc == r.client.Load().registry {
			r.rememberRedirect(resp)
		}
		return data, err
	case http.StatusOK:
		sp, err := r.spoolFrom(ctx, resp)
		if err != nil {
			return nil, err
		}
		return sp.read(off, n)
	default:
		return nil, statusError(resp)
	}
}

func (r *BlobReader) rememberRedirect(resp *http.Response) {
	if final, ok := r.client.Load().redirected(resp); ok {
		u := *final
		r.direct.Store(&u)
	}
}

// readPartial checks that a 206 is the range asked for and reads it whole,
// telling on (when not nil) after every read from the body.
func (r *BlobReader) readPartial(ctx context.Context, resp *http.Response, off, n int64, on arrived) ([]byte, error) {
	cr, err := parseContentRange(resp.Header.Get("Content-Range"))
	if err != nil {
		return nil, responseError(resp, fmt.Errorf("%w: %w", ErrRangeMismatch, err), true)
	}
	want := contentRange{First: off, Last: off + n - 1, Size: r.size}
	if cr.First != want.First || cr.Last != want.Last {
		return nil, responseError(resp, fmt.Errorf("%w: asked %s, got %s", ErrRangeMismatch, want, cr), true)
	}
	if cr.Size >= 0 && cr.Size != r.size {
		// The descriptor and the registry disagree on the blob: retrying
		// will not change that.
		return nil, responseError(resp, fmt.Errorf("%w: blob size %d, server says %d", ErrRangeMismatch, r.size, cr.Size), false)
	}
	buf := make([]byte, n)
	got, err := readFull(resp.Body, buf, on)
	r.stats.bytes.Add(int64(got))
	if err != nil {
		if ctx.Err() != nil {
			return nil, responseError(resp, ctx.Err(), false)
		}
		return nil, responseError(resp, fmt.Errorf("%w: got %d of %d bytes: %w", ErrShortBody, got, n, err), true)
	}
	return buf, nil
}

// readFull is io.ReadFull telling on after every read that brought bytes.
func readFull(body io.Reader, buf []byte, on arrived) (int, error) {
	if on == nil {
		return io.ReadFull(body, buf)
	}
	got := 0
	for got < len(buf) {
		m, err := body.Read(buf[got:])
		got += m
		if m > 0 {
			on(buf, int64(got))
		}
		if err != nil {
			if err == io.EOF && got < len(buf) {
				err = io.ErrUnexpectedEOF
			}
			if got == len(buf) {
				err = nil
			}
			return got, err
		}
	}
	return got, nil
}

// transportError wraps a failure to get any response. Connection resets,
// EOFs and refusals are temporary; the caller's ctx ending is not.
func transportError(ctx context.Context, req *http.Request, err error) *Error {
	// *url.Error repeats the method and the full (unredacted) URL, which
	// the *Error already carries in redacted form; keep only its cause.
	var uerr *url.Error
	if errors.As(err, &uerr) && uerr.Err != nil {
		err = uerr.Err
	}
	return &Error{
		Method:    req.Method,
		URL:       redactURL(req.URL),
		Err:       redactError(err),
		temporary: ctx.Err() == nil,
	}
}

// responseError wraps a failure detected in a response; the URL is the one
// that finally answered (after redirects).
func responseError(resp *http.Response, cause error, temporary bool) *Error {
	e := &Error{Method: http.MethodGet, StatusCode: resp.StatusCode, Err: cause, temporary: temporary}
	if resp.Request != nil {
		e.Method = resp.Request.Method
		e.URL = redactURL(resp.Request.URL)
	}
	return e
}

// statusError describes an unexpected status, quoting (a sanitized prefix
// of) the body: registries explain 4xx answers there.
func statusError(resp *http.Response) *Error {
	e := responseError(resp, nil, isTemporaryStatus(resp.StatusCode))
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if msg := printable(body); msg != "" {
		e.Err = errors.New(msg)
	}
	return e
}

// printable keeps an untrusted body fit for a log line.
func printable(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, string(b))
	s = strings.TrimSpace(s)
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}
