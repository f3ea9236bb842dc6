package fs

import (
	"context"
	"log/slog"
	"sync"

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
const (
	// prefetchPiece is the compressed size of one prefetch request: small
	// enough that the first files arrive early, large enough that a
	// request's round trip is a small part of its time.
	prefetchPiece = 1 << 20
	// prefetchParallel requests are in flight at once. Two hide each
	// request's round trip behind the other's transfer; more would split
	// the link between pieces, and the first piece, which the start
	// needs first, would arrive later (measured: with four, a start's
	// first 3 MB stream took 0.75 s over a 100 Mbit/s link instead of
	// 0.25 s).
	prefetchParallel = 2
)

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
	slots := make(chan struct{}, prefetchParallel)
	var wg sync.WaitGroup
	for _, p := range pieces {
		select {
		case slots <- struct{}{}:
		case <-stop.Done():
		}
		if stop.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			_, cl := c.claim(p)
			if len(cl.offs) == 0 {
				return
			}
			c.fetchStreams(ctx, cl)
			for _, sf := range cl.fetches {
				<-sf.done
				if sf.err != nil {
					slog.Debug("fs: prefetch failed", "layer", c.digest, "error", sf.err)
				}
			}
			metricPrefetchedStreams.Add(float64(len(cl.offs)))
		}()
	}
	wg.Wait()
}
