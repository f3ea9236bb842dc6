package fs

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// ProgressFunc hears, while a layer is read whole (to index a plain gzip
// or tar layer, or to fetch one that cannot be read lazily), how many of
// its total bytes have been read so far. It is called at most every
// progressEvery, from the reading goroutine.
type ProgressFunc func(layer digest.Digest, done, total int64)

type progressKey struct{}

// WithProgress returns a context under which the layers acquired report
// whole reads to f.
func WithProgress(ctx context.Context, f ProgressFunc) context.Context {
	return context.WithValue(ctx, progressKey{}, f)
}

const progressEvery = 500 * time.Millisecond

// progressMin is the size of the smallest layer whose reading is
// reported: progress is told in MB, and a smaller layer read slowly (a
// loaded machine) would say "0 of 0 MB".
const progressMin = 1 << 20

// progressReaderAt counts the bytes read through it for a ProgressFunc.
type progressReaderAt struct {
	r     io.ReaderAt
	layer digest.Digest
	total int64
	f     ProgressFunc

	mu   sync.Mutex
	done int64
	last time.Time
}

// withProgress wraps r to report to ctx's ProgressFunc, if it has one.
func withProgress(ctx context.Context, r io.ReaderAt, layer digest.Digest, total int64) io.ReaderAt {
	f, _ := ctx.Value(progressKey{}).(ProgressFunc)
	if f == nil || total < progressMin {
		return r
	}
	// The first report comes after progressEvery: a read that ends sooner
	// (a TOC's) needs none.
	return &progressReaderAt{r: r, layer: layer, total: total, f: f, last: time.Now()}
}

func (p *progressReaderAt) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.r.ReadAt(b, off)
	p.mu.Lock()
	p.done += int64(n)
	done, report := p.done, time.Since(p.last) >= progressEvery
	if report {
		p.last = time.Now()
	}
	p.mu.Unlock()
	if report {
		p.f(p.layer, min(done, p.total), p.total)
	}
	return n, err
}
