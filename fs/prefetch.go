package fs

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

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
)

// inOrder calls fetch for each of len(sizes) pieces of sizes[i]
// compressed bytes, in order, each in a goroutine of its own, starting the
// next one as soon as less than prefetchAhead of the bytes of those started
// is still to come. fetch tells here the bytes as they arrive (see
// claimed.arrived) and returns when they are all here or have failed.
// Once stop is done no more are started; inOrder returns how many were,
// when they have all returned.
func inOrder(stop context.Context, sizes []int64, fetch func(i int, here func(n int64))) int {
	var coming atomic.Int64 // bytes asked for and not yet here
	arrived := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i, size := range sizes {
		for coming.Load() >= prefetchAhead && stop.Err() == nil {
			select {
			case <-arrived:
			case <-stop.Done():
			}
		}
		if stop.Err() != nil {
			return i
		}
		coming.Add(size)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mu sync.Mutex
			here := func(n int64) {
				mu.Lock()
				defer mu.Unlock()
				if n = min(n, size); n > 0 {
					size -= n
					coming.Add(-n)
					select {
					case arrived <- struct{}{}:
					default:
					}
				}
			}
			defer here(size) // what never came, or came for another fetch
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
	inOrder(stop, bytesOf(pieces), func(i int, here func(int64)) {
		_, cl := c.claim(pieces[i])
		if len(cl.offs) == 0 {
			return
		}
		cl.arrived = here
		c.fetchStreams(ctx, cl)
		for _, sf := range cl.fetches {
			<-sf.done
			if sf.err != nil {
				slog.Debug("fs: prefetch failed", "layer", c.digest, "error", sf.err)
			}
		}
		metricPrefetchedStreams.Add(float64(len(cl.offs)))
	})
}
