package remote

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/containerd/errdefs"
)

// Sentinel errors. Each wraps the errdefs class callers should map it to, so
// both errors.Is(err, ErrDigestMismatch) and errors.Is(err, errdefs.ErrDataLoss)
// hold.
var (
	// ErrUnsupportedMediaType: a manifest that is neither an OCI/Docker v2
	// image manifest nor an index/manifest list (schema1 included).
	ErrUnsupportedMediaType = fmt.Errorf("unsupported media type: %w", errdefs.ErrNotImplemented)
	// ErrDigestMismatch: bytes from the registry do not hash to the digest that names them.
	ErrDigestMismatch = fmt.Errorf("digest mismatch: %w", errdefs.ErrDataLoss)
	// ErrRangeMismatch: a 206 response whose Content-Range is not the range asked for.
	ErrRangeMismatch = fmt.Errorf("response range does not match request: %w", errdefs.ErrDataLoss)
	// ErrShortBody: the response ended before the bytes it promised.
	ErrShortBody = fmt.Errorf("response body shorter than requested: %w", errdefs.ErrDataLoss)
	// ErrNoMatchingPlatform: an index lists no manifest for the wanted
	// platform. Its text is the start of a sentence the platform ends
	// ("no manifest for platform linux/s390x: …"), so it carries the class
	// without a ": not found" of its own.
	ErrNoMatchingPlatform = errdefs.ErrNotFound.WithMessage("no manifest for platform")
	// ErrInvalidRange: a read outside the blob or with a negative offset/length.
	ErrInvalidRange = fmt.Errorf("invalid range: %w", errdefs.ErrInvalidArgument)
	// ErrTooLarge: a manifest or config larger than Strata accepts.
	ErrTooLarge = fmt.Errorf("content too large: %w", errdefs.ErrInvalidArgument)
	// ErrInvalidReference: the reference string or digest cannot be parsed.
	ErrInvalidReference = fmt.Errorf("invalid reference: %w", errdefs.ErrInvalidArgument)
)

// Error is one failed exchange with a registry or a blob store it redirected
// to. URL never carries query values or user info: presigned blob-store URLs
// hold credentials in their query string.
type Error struct {
	Method     string
	URL        string        // redacted
	StatusCode int           // 0 when no response was received
	RetryAfter time.Duration // from a 429/503 Retry-After header, 0 when absent
	Err        error         // the cause; nil for a plain bad status
	temporary  bool
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s %s", e.Method, e.URL)
	if e.StatusCode != 0 {
		msg += fmt.Sprintf(": status %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Temporary reports whether trying again may succeed: 408, 429, 5xx,
// connection failures, short bodies and range mismatches.
func (e *Error) Temporary() bool { return e.temporary }

// Unwrap exposes the cause and the errdefs class of the status code.
func (e *Error) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	if class := statusClass(e.StatusCode); class != nil {
		errs = append(errs, class)
	}
	return errs
}

func statusClass(code int) error {
	switch {
	case code == 0:
		return nil
	case code == http.StatusNotFound:
		return errdefs.ErrNotFound
	case code == http.StatusUnauthorized:
		return errdefs.ErrUnauthenticated
	case code == http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	case code == http.StatusTooManyRequests:
		return errdefs.ErrResourceExhausted
	case code == http.StatusRequestTimeout, code >= 500:
		return errdefs.ErrUnavailable
	case code >= 400:
		return errdefs.ErrInvalidArgument
	}
	return errdefs.ErrUnknown
}

func isTemporaryStatus(code int) bool {
	return code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500
}

// temporaryError is what isTemporary looks for; *Error implements it.
type temporaryError interface{ Temporary() bool }

func isTemporary(err error) bool {
	var te temporaryError
	return errors.As(err, &te) && te.Temporary()
}

// redactURL drops user info and replaces every query value, like ggcr's
// internal redact package, so that errors and logs never hold a signature.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	c := *u
	c.User = nil
	if q := c.Query(); len(q) > 0 {
		for k, vs := range q {
			for i := range vs {
				vs[i] = "REDACTED"
			}
			q[k] = vs
		}
		c.RawQuery = q.Encode()
	}
	return c.String()
}

// redactError rewrites the URL inside a *url.Error (what http.Client returns,
// and whose message quotes the full URL) so no credential survives.
func redactError(err error) error {
	var uerr *url.Error
	if !errors.As(err, &uerr) {
		return err
	}
	if u, perr := url.Parse(uerr.URL); perr == nil {
		uerr.URL = redactURL(u)
	} else {
		uerr.URL = "<unparseable URL>"
	}
	return err
}
