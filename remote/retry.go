package remote

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

const (
	// maxRetryAfter caps how long a registry may make us wait; a longer
	// Retry-After is treated as "not within this request's budget".
	maxRetryAfter = 10 * time.Second
	// maxBackoff caps the exponential growth of the wait between attempts.
	maxBackoff = 5 * time.Second
	// maxRangeMismatches: a wrong Content-Range may be a confused cache, so
	// it gets one more try; twice means the server is broken.
	maxRangeMismatches = 2
)

// retrier runs one logical request with bounded attempts. It is shared by
// blob reads and manifest/config fetches so both back off the same way.
type retrier struct {
	attempts int
	base     time.Duration
	retries  *atomic.Int64 // counts retries (attempts after the first); may be nil
}

func (o *options) retrier(counter *atomic.Int64) retrier {
	return retrier{attempts: o.retryAttempts, base: o.retryBase, retries: counter}
}

// do calls fn until it succeeds, fails permanently, runs out of attempts, or
// ctx ends (ctx carries the request timeout). The last error is returned;
// when ctx ended it is wrapped together with ctx.Err().
func (r retrier) do(ctx context.Context, fn func(ctx context.Context) error) error {
	mismatches := 0
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if cerr := ctx.Err(); cerr != nil {
			if errors.Is(err, cerr) {
				return err
			}
			return fmt.Errorf("%w (attempt %d): %w", cerr, attempt, err)
		}
		if !isTemporary(err) || attempt >= r.attempts {
			return err
		}
		if errors.Is(err, ErrRangeMismatch) {
			if mismatches++; mismatches >= maxRangeMismatches {
				return err
			}
		}
		wait := r.backoff(attempt)
		if ra := retryAfterOf(err); ra > 0 {
			if ra > maxRetryAfter {
				return fmt.Errorf("server asked to wait %v, more than %v: %w", ra, maxRetryAfter, err)
			}
			wait = max(wait, ra)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return fmt.Errorf("no time left to retry within the request timeout: %w", err)
		}
		if r.retries != nil {
			r.retries.Add(1)
		}
		if serr := sleep(ctx, wait); serr != nil {
			return fmt.Errorf("%w (waiting to retry after attempt %d): %w", serr, attempt, err)
		}
	}
}

// backoff is base·2^(attempt-1), capped, with "equal jitter": a random wait
// in [d/2, d] so that many readers failing together do not retry together.
func (r retrier) backoff(attempt int) time.Duration {
	if r.base <= 0 {
		return 0
	}
	d := r.base << min(attempt-1, 20)
	if d <= 0 || d > maxBackoff {
		d = maxBackoff
	}
	half := d / 2
	return half + rand.N(half+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func retryAfterOf(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date
// (RFC 9110 §10.2.3). Unparseable or negative values mean "no hint".
func parseRetryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(h, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(time.Hour/time.Second) {
			return time.Hour // "a long time"; the caller caps it anyway
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
