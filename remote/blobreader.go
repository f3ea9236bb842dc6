package remote

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"
)

// BlobReader reads one blob of one repository by HTTP Range requests.
// It is safe for concurrent use. See the package doc for the guarantees.
type BlobReader struct {
	// client is replaced by a new handshake when the registry refuses
	// its credentials (see redial); nil until the first fetch with
	// WithDeferredHandshake (see clientFor).
	client atomic.Pointer[client]
	dialMu sync.Mutex // one deferred handshake at a time
	repo   name.Repository
	digest digest.Digest
	size   int64
	o      *options

	sem *semaphore.Weighted // bounds concurrent HTTP requests

	flightMu sync.Mutex
	flights  map[string]*flight // identical in-flight ranges are fetched once

	// direct is the blob-store URL the registry last redirected to, or
	// the foreign URL that last served the blob; used without credentials
	// until it fails once.
	direct atomic.Pointer[url.URL]
	// foreign are the blob's other URLs (WithBlobURLs) that passed
	// foreignURLError, tried with foreignClient when the registry lacks
	// the blob.
	foreign       []*url.URL
	foreignClient *http.Client

	spoolMu sync.Mutex // serializes creating the spool; reads use spool
	spool   atomic.Pointer[spoolFile]
	closed  atomic.Bool

	stats counters
}

// Stats are cumulative counters of one BlobReader.
type Stats struct {
	Requests     int64 // HTTP requests sent (each attempt, each blob-store try)
	BytesFetched int64 // response body bytes received for blob data
	Retries      int64 // attempts made after a failed one
	Errors       int64 // reads (ReadAtContext calls, Fetch groups) that returned an error
}

type counters struct {
	requests, bytes, retries, errors atomic.Int64
}

// NewLayerReader is NewBlobReader for layer l of a manifest, which is also
// read from its descriptor's urls when the registry lacks it
// (WithBlobURLs).
func NewLayerReader(ctx context.Context, repo name.Repository, l Layer, opts ...Option) (*BlobReader, error) {
	return NewBlobReader(ctx, repo, l.Digest, l.Size, append(slices.Clone(opts), WithBlobURLs(l.URLs...))...)
}

// NewBlobReader prepares ranged reads of the blob dgst (size bytes) in repo.
// It resolves credentials and performs the registry's auth handshake (ping
// and, for bearer auth, a token exchange) but fetches no blob bytes.
func NewBlobReader(ctx context.Context, repo name.Repository, dgst digest.Digest, size int64, opts ...Option) (*BlobReader, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("%w: blob digest %q: %w", ErrInvalidReference, dgst, err)
	}
	if size < 0 {
		return nil, fmt.Errorf("%w: blob %s: negative size %d", ErrInvalidRange, dgst, size)
	}
	o := makeOptions(opts...)
	var c *client
	if !o.deferHandshake {
		var err error
		if c, err = newClient(ctx, repo, o); err != nil {
			return nil, err
		}
	}
	r := &BlobReader{
		repo:   repo,
		digest: dgst,
		size:   size,
		o:      o,
		sem:    semaphore.NewWeighted(int64(o.maxConcurrency)),
	}
	if c != nil {
		r.client.Store(c)
	}
	r.setForeign(repo)
	return r, nil
}

// clientFor returns the reader's client, making the handshake a reader
// with WithDeferredHandshake has not made yet (again after one failed).
func (r *BlobReader) clientFor(ctx context.Context) (*client, error) {
	if c := r.client.Load(); c != nil {
		return c, nil
	}
	return r.dial(ctx, nil)
}

// dial makes a new handshake to replace the client old (nil: none yet),
// one at a time: a client another read put in old's place meanwhile is
// returned as it is.
func (r *BlobReader) dial(ctx context.Context, old *client) (*client, error) {
	r.dialMu.Lock()
	defer r.dialMu.Unlock()
	if c := r.client.Load(); c != old {
		return c, nil
	}
	c, err := newClient(context.WithoutCancel(ctx), r.repo, r.o)
	if err != nil {
		return nil, err
	}
	r.client.Store(c)
	return c, nil
}

// Size is the blob size given to NewBlobReader.
func (r *BlobReader) Size() int64 { return r.size }

// Digest is the blob digest given to NewBlobReader.
func (r *BlobReader) Digest() digest.Digest { return r.digest }

// Stats returns a snapshot of the cumulative counters.
func (r *BlobReader) Stats() Stats {
	return Stats{
		Requests:     r.stats.requests.Load(),
		BytesFetched: r.stats.bytes.Load(),
		Retries:      r.stats.retries.Load(),
		Errors:       r.stats.errors.Load(),
	}
}

// Close releases the spool file, if one was needed. Reads after Close fail
// with os.ErrClosed. Close is idempotent.
func (r *BlobReader) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	r.spoolMu.Lock()
	defer r.spoolMu.Unlock()
	if sp := r.spool.Swap(nil); sp != nil {
		return sp.f.Close()
	}
	return nil
}

// ReadAtContext reads len(p) bytes at off with io.ReaderAt semantics: a read
// that reaches the end of the blob returns the bytes there and io.EOF.
// Bytes are not verified here (a range cannot be checked against the blob
// digest); callers verify chunks against their own digests.
func (r *BlobReader) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: blob %s: negative offset %d", ErrInvalidRange, r.digest, off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= r.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), r.size-off)
	data, err := r.readRange(ctx, off, n, nil)
	if err != nil {
		return 0, err
	}
	copy(p, data)
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// ReaderAt binds ctx to an io.ReaderAt for APIs that take one (archive
// readers, estargz). Holding a context in a struct is otherwise avoided; here
// the adapter's lifetime is the caller's operation, which ctx also bounds.
func (r *BlobReader) ReaderAt(ctx context.Context) io.ReaderAt {
	return &ctxReaderAt{ctx: ctx, r: r}
}

type ctxReaderAt struct {
	ctx context.Context //nolint:containedctx // see ReaderAt
	r   *BlobReader
}

func (a *ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	return a.r.ReadAtContext(a.ctx, p, off)
}

// readRange returns exactly n bytes at off (the range is already inside the
// blob). The returned slice may be shared with concurrent callers: read it,
// never write it. on, when not nil, is told as the bytes come in (see
// arrived); a caller that joins a fetch already under way is not.
//
// Identical ranges in flight are fetched once. The shared fetch runs on a
// context detached from the first caller, bounded by the request timeout,
// so one caller giving up does not fail the others; each caller still
// returns as soon as its own ctx ends, and when every caller has given up
// the fetch is cancelled: nobody wants its bytes, and they would take the
// link from reads that do.
func (r *BlobReader) readRange(ctx context.Context, off, n int64, on arrived) ([]byte, error) {
	if r.closed.Load() {
		return nil, fmt.Errorf("blob %s: %w", r.digest, os.ErrClosed)
	}
	if sp := r.spool.Load(); sp != nil {
		return sp.read(off, n)
	}
	key := rangeKey(off, n)
	r.flightMu.Lock()
	f := r.flights[key]
	if f == nil {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.o.requestTimeout)
		f = &flight{done: make(chan struct{}), cancel: cancel}
		if r.flights == nil {
			r.flights = map[string]*flight{}
		}
		r.flights[key] = f
		go func() {
			defer cancel()
			f.data, f.err = r.fetchWithRetry(fctx, off, n, on)
			r.flightMu.Lock()
			if r.flights[key] == f {
				delete(r.flights, key)
			}
			r.flightMu.Unlock()
			close(f.done)
		}()
	}
	f.callers++
	r.flightMu.Unlock()
	select {
	case <-f.done:
		if f.err != nil {
			r.stats.errors.Add(1)
			return nil, f.err
		}
		return f.data, nil
	case <-ctx.Done():
		r.flightMu.Lock()
		if f.callers--; f.callers == 0 {
			f.cancel()
			if r.flights[key] == f { // a later caller starts afresh
				delete(r.flights, key)
			}
		}
		r.flightMu.Unlock()
		r.stats.errors.Add(1)
		return nil, fmt.Errorf("blob %s range %d+%d: %w", r.digest, off, n, ctx.Err())
	}
}

// rangeKey names the fetch of n bytes at off among the flights.
func rangeKey(off, n int64) string {
	return strconv.FormatInt(off, 10) + "+" + strconv.FormatInt(n, 10)
}

// flight is one fetch of a range, shared by the callers that want it.
type flight struct {
	done    chan struct{} // closed when data and err are set
	data    []byte
	err     error
	callers int // waiting, under the reader's flightMu
	cancel  context.CancelFunc
}

func (r *BlobReader) fetchWithRetry(ctx context.Context, off, n int64, on arrived) ([]byte, error) {
	var data []byte
	err := r.o.retrier(&r.stats.retries).do(ctx, func(ctx context.Context) error {
		var err error
		data, err = r.attempt(ctx, off, n, on)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("blob %s range %d+%d: %w", r.digest, off, n, err)
	}
	return data, nil
}
