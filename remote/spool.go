package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
)

// spoolFile is a whole blob kept on local disk after a server answered a
// Range request with the full body. Downloading once and serving every later
// read from the file keeps memory bounded and stops a Range-ignoring server
// from costing a full download per read.
type spoolFile struct {
	f    *os.File
	size int64
}

// read returns exactly n bytes at off (already inside the blob).
func (s *spoolFile) read(off, n int64) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := s.f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("reading spooled blob at %d+%d: %w", off, n, err)
	}
	return buf, nil
}

// spoolFrom adopts a 200 response as the whole blob: streamed to a temp file
// while hashed, then checked for size and digest before anything is served
// from it. Only one goroutine spools; others that also got a 200 meanwhile
// drop their body and use the finished file.
func (r *BlobReader) spoolFrom(ctx context.Context, resp *http.Response) (*spoolFile, error) {
	r.spoolMu.Lock()
	defer r.spoolMu.Unlock()
	if r.closed.Load() {
		return nil, fmt.Errorf("blob %s: %w", r.digest, os.ErrClosed)
	}
	if sp := r.spool.Load(); sp != nil {
		return sp, nil
	}
	if resp.ContentLength >= 0 && resp.ContentLength != r.size {
		return nil, responseError(resp, fmt.Errorf("%w: full-body answer of %d bytes for a blob of %d",
			ErrRangeMismatch, resp.ContentLength, r.size), false)
	}
	f, err := os.CreateTemp(r.o.spoolDir, "strata-blob-*")
	if err != nil {
		return nil, fmt.Errorf("creating spool file: %w", err)
	}
	// Unlinked at once: the open descriptor keeps the data, and no crash or
	// forgotten Close can leave a stray copy of the blob behind.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlinking spool file: %w", err)
	}
	if err := r.fillSpool(ctx, resp, f); err != nil {
		f.Close()
		return nil, err
	}
	sp := &spoolFile{f: f, size: r.size}
	r.spool.Store(sp)
	return sp, nil
}

func (r *BlobReader) fillSpool(ctx context.Context, resp *http.Response, f *os.File) error {
	d := r.digest.Algorithm().Digester()
	// One byte beyond the size tells "too long" from "exactly right".
	copied, err := io.Copy(io.MultiWriter(f, d.Hash()), io.LimitReader(resp.Body, r.size+1))
	r.stats.bytes.Add(copied)
	switch {
	case err != nil && ctx.Err() != nil:
		return responseError(resp, ctx.Err(), false)
	case err != nil && !errors.Is(err, io.ErrUnexpectedEOF):
		return responseError(resp, redactError(err), true)
	case err != nil || copied < r.size:
		return responseError(resp, fmt.Errorf("%w: got %d of %d bytes", ErrShortBody, copied, r.size), true)
	case copied > r.size:
		return responseError(resp, fmt.Errorf("%w: body longer than the blob size %d", ErrRangeMismatch, r.size), false)
	}
	if got := d.Digest(); got != r.digest {
		return responseError(resp, fmt.Errorf("%w: blob %s: got %s", ErrDigestMismatch, r.digest, got), false)
	}
	return nil
}
