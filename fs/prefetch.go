package fs

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stratafs/strata/fs/index"
)

// Prefetch of a layer's prioritized files. An eStargz writer given the
// files a container reads when it starts (`strata convert --prioritize`,
// stargz-snapshotter's optimizer) stores them first, in the order they are
// read, and marks the end of that region with a prefetch landmark. Those
// files are fetched right after the mount, in order, as a few large
// requests in flight at once, instead of one round trip per file when the
// container opens it. A read of a file still on its way waits for that
// fetch (the streams are claimed) rather than asking again.
//
// Fetches of more than one request (a landmark's region, a recorded list,
// a read-ahead) are cut into pieces of at least prefetchPiece compressed
// bytes and asked for in order, the next as soon as less than
// prefetchAhead of the bytes asked for is still to come (see inOrder).
// Bytes still to come, not requests in flight, decide when to ask: the next
// piece's round trip hides behind the bytes still coming (prefetchAhead is
// two round trips of a 100 Mbit/s link at 20 ms), and few bytes of later
// pieces share the link with an earlier one, so the pieces arrive nearly in
// their order, the first, which is wanted first, at the link's full speed.
// With a fixed number of requests at a time, each let go when all its
// bytes were here, the requests shared the link and came in together: four
// made a start's first 3 MB stream take 0.75 s over a 100 Mbit/s link
// instead of 0.25 s; with two, the compiling step's recorded list (20.9 MB)
// took 2.06 s, the go binary's four chunks a second instead of half of one,
// and the compiler's last chunk came with the assembler and the linker.
// Small pieces bring the files a start reads first sooner (python's start
// from a gzip image with its list over wan: 1 MiB pieces 1.24 s, 256 KiB
// 1.19 s; `go version` with a recorded list over a far link, 100 ms:
// 1.52 → 1.41 s).
const (
	prefetchPiece = 256 << 10
	prefetchAhead = 512 << 10
	// maxAhead bounds what a link's estimate makes of prefetchAhead.
	maxAhead = 16 << 20
)

// linkEstimate is what in-order fetches learn of the link a layer comes
// over: how long the first bytes of a piece asked for on an idle link take
// to come (a round trip and one part), and how fast bytes come while
// pieces are on their way. Twice their product is how much to have asked
// for and not yet received so that the link never waits for a request:
// 512 KiB covers a 100 Mbit/s link at 20 ms, not one at 100 ms (`go
// version` with its list over such a link took 1.63 s instead of 1.41 s).
// The rate measured is at most what is ahead over the latency, so a low
// estimate doubles at every measure until the link, not the estimate, is
// what holds the rate. Only pieces asked for on an idle link give a
// latency: on a busy one their first bytes share the link with the others',
// and the estimate would feed itself.
type linkEstimate struct {
	mu      sync.Mutex
	latency float64 // seconds
	rate    float64 // bytes a second
}

// ahead is the bytes an in-order fetch keeps asked for ahead of what has
// come.
func (e *linkEstimate) ahead() int64 {
	if e == nil {
		return prefetchAhead
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return min(max(int64(2*e.rate*e.latency), prefetchAhead), maxAhead)
}

// note folds a latency or a rate (either may be 0: none) into the
// estimate.
func (e *linkEstimate) note(latency time.Duration, rate float64) {
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.latency = movingAverage(e.latency, latency.Seconds())
	e.rate = movingAverage(e.rate, rate)
}

// movingAverage folds v (none when not above 0) into avg (none yet when
// 0): recent values weigh most, one odd value little.
func movingAverage(avg, v float64) float64 {
	switch {
	case v <= 0:
		return avg
	case avg == 0:
		return v
	}
	return (3*avg + v) / 4
}

// withLink makes a Content share the link estimate l.
func withLink(l *linkEstimate) ContentOption {
	return func(c *Content) { c.link = l }
}

// rateSpan is the shortest while a rate is measured over.
const rateSpan = 50 * time.Millisecond

// inOrder calls fetch for each of len(sizes) pieces of sizes[i]
// compressed bytes, in order, each in a goroutine of its own, starting the
// next one as soon as less than link's ahead (prefetchAhead when link is
// nil) of the bytes of those started is still to come. fetch tells here
// the bytes as they arrive (see claimed.arrived) and returns when they are
// all here or have failed. Once stop is done no more are started; inOrder
// returns how many were, when they have all returned.
func inOrder(stop context.Context, link *linkEstimate, sizes []int64, fetch func(i int, here func(n int64))) int {
	var coming atomic.Int64 // bytes asked for and not yet here
	arrived := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	var rmu sync.Mutex // the rate measure: bytes in since mark
	var mark time.Time
	var in int64
	for i, size := range sizes {
		for coming.Load() >= link.ahead() && stop.Err() == nil {
			select {
			case <-arrived:
			case <-stop.Done():
			}
		}
		if stop.Err() != nil {
			return i
		}
		idle := coming.Add(size) == size
		wg.Add(1)
		start := time.Now()
		go func() {
			defer wg.Done()
			var mu sync.Mutex
			here := func(n int64) {
				mu.Lock()
				defer mu.Unlock()
				if n = min(n, size); n <= 0 {
					return
				}
				now := time.Now()
				if idle {
					idle = false
					link.note(now.Sub(start), 0)
				}
				rmu.Lock()
				if d := now.Sub(mark); mark.IsZero() || d > 10*rateSpan {
					mark, in = now, 0 // the first bytes, or after a pause
				} else if in += n; d >= rateSpan {
					link.note(0, float64(in)/d.Seconds())
					mark, in = now, 0
				}
				rmu.Unlock()
				size -= n
				coming.Add(-n)
				select {
				case arrived <- struct{}{}:
				default:
				}
			}
			defer func() { // what never came, or came for another fetch
				mu.Lock()
				defer mu.Unlock()
				coming.Add(-size)
				size = 0
				select {
				case arrived <- struct{}{}:
				default:
				}
			}()
			fetch(i, here)
		}()
	}
	return len(sizes)
}

// bytesOf is the compressed bytes of each piece's streams.
func bytesOf(pieces [][]index.BlobChunk) []int64 {
	out := make([]int64, len(pieces))
	for i, p := range pieces {
		for j, ch := range p {
			if j == 0 || p[j-1].BlobOffset != ch.BlobOffset {
				out[i] += ch.BlobLength
			}
		}
	}
	return out
}

// Prefetch fetches, verifies and caches, in the background, the chunks of
// the blob range [from, to) that are not cached yet, in blob order. It
// returns at once; unmounting the layer cancels it. While it runs, reads
// of chunks before to take no read-ahead of their own.
func (c *Content) Prefetch(from, to int64) {
	if to <= from {
		return
	}
	c.prefetchEnd.Store(to)
	c.goBackground(func(bg context.Context) {
		stop, cancel := context.WithCancel(bg)
		defer cancel()
		c.stopLandmark.Store(&cancel)
		defer c.prefetchEnd.Store(0)
		c.prefetch(bg, stop, from, to)
	})
}

// pieces cuts chunks (in blob order, a stream's chunks together) into
// runs of at least size compressed bytes each; a stream is never cut.
func pieces(chunks []index.BlobChunk, size int64) [][]index.BlobChunk {
	var out [][]index.BlobChunk
	var cur []index.BlobChunk
	var curBytes int64
	for i, ch := range chunks {
		// Chunks of one stream stay together: a stream is fetched whole.
		sameStream := i > 0 && chunks[i-1].BlobOffset == ch.BlobOffset
		if curBytes >= size && !sameStream {
			out, cur, curBytes = append(out, cur), nil, 0
		}
		if !sameStream {
			curBytes += ch.BlobLength
		}
		cur = append(cur, ch)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// prefetch fetches the uncached chunks of [from, to) under ctx (the
// layer's lifetime); once stop is done it starts no more pieces, but the
// pieces on their way arrive: their bytes are half across the link, and
// whoever stopped it (a recorded list's prefetch) likely wants them too.
func (c *Content) prefetch(ctx, stop context.Context, from, to int64) {
	chunks, _ := c.ahead.uncachedInBlob(from, to)
	pieces := pieces(chunks, prefetchPiece)
	inOrder(stop, c.link, bytesOf(pieces), func(i int, here func(int64)) {
		c.fetchPiece(ctx, pieces[i], here, "fs: prefetch failed")
	})
}

// fetchPiece claims, fetches, verifies and caches the uncached chunks of
// one piece of an in-order fetch (see inOrder), telling here of the bytes
// as they arrive, and returns, once they are done, how many streams it
// claimed and the compressed bytes of those that came. failed is the
// debug message of a stream that failed.
func (c *Content) fetchPiece(ctx context.Context, chunks []index.BlobChunk, here func(int64), failed string) (streams int, bytes int64) {
	_, cl := c.claim(chunks)
	if len(cl.offs) == 0 {
		return 0, 0
	}
	cl.arrived = here
	c.fetchStreams(ctx, cl)
	for i, sf := range cl.fetches {
		<-sf.done
		if sf.err != nil {
			slog.Debug(failed, "layer", c.digest, "error", sf.err)
			continue
		}
		bytes += cl.streams[cl.offs[i]][0].BlobLength
	}
	metricPrefetchedStreams.Add(float64(len(cl.offs)))
	return len(cl.offs), bytes
}
