package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/stratafs/strata/fs/index"
)

// Background fetch: once a workload reads a layer broadly (many files, or
// many bytes), what it has not read yet is likely to be read too, and one
// round trip per file or per read-ahead window leaves most of the link
// idle. The rest of the layer is then fetched in the background in a few
// large requests in flight at once, in blob order from where the reader
// is (a walk follows the blob's order), then from the start; every chunk
// is verified and cached as a read's would be.
//
// It never delays a demand read for long: no background request is sent
// while a read waits for a fetch of its own, and a read that waits for
// enough bytes for the link's share to matter (preemptBytes) cancels the
// background requests on the wire that hold nothing it waits for. Their
// streams that arrived whole are kept (Blob.FetchEach), the rest are
// fetched again by a later pass.
// In "auto" it pauses while the layer is idle (no read for bgIdle) and
// stops after the policy's budget; "all" fetches every layer whole in the
// background from its mount on; "off" never does. Recorded lists and
// prioritized files (prefetch.go, record.go) are separate and not
// affected.

// Prefetch modes (PrefetchPolicy.Mode).
const (
	PrefetchAuto = "auto"
	PrefetchOff  = "off"
	PrefetchAll  = "all"
)

// PrefetchPolicy says when a layer's remaining bytes are fetched in the
// background.
type PrefetchPolicy struct {
	Mode string // PrefetchAuto (the default), PrefetchOff or PrefetchAll
	// Budget bounds, in "auto", the compressed bytes one layer's
	// background fetch takes; 0 means no bound.
	Budget int64
}

// CheckPrefetchPolicy says what is wrong with p, if anything.
func CheckPrefetchPolicy(p PrefetchPolicy) error {
	switch p.Mode {
	case "", PrefetchAuto, PrefetchOff, PrefetchAll:
	default:
		return fmt.Errorf("prefetch must be auto, off or all, got %q", p.Mode)
	}
	if p.Budget < 0 {
		return fmt.Errorf("prefetch budget must not be negative, got %d", p.Budget)
	}
	return nil
}

// WithBackground sets the layer's background fetch policy. Default: off.
func WithBackground(p PrefetchPolicy) ContentOption {
	return func(c *Content) {
		if p.Mode == "" {
			p.Mode = PrefetchAuto
		}
		c.broad.policy = p
	}
}

const (
	// broadFiles distinct files missed, or broadBytes fetched for reads,
	// make a layer's reading broad.
	broadFiles = 64
	broadBytes = 32 << 20
	// bgPiece is the compressed size of one background request, and
	// bgParallel how many are in flight: large and few, so that the
	// round trips are a small part of the link's time.
	bgPiece    = 4 << 20
	bgParallel = 3
	// preemptBytes is the fewest compressed bytes a read must wait for
	// to cancel background requests: fewer are a round trip, little
	// slowed by sharing the link.
	preemptBytes = 256 << 10
	// bgPasses bounds the passes over the blob a background fetch makes
	// to fetch again what reads preempted.
	bgPasses = 16
	// bgIdle without a read pauses an "auto" background fetch.
	bgIdle = 10 * time.Second
)

var metricBackgroundBytes = promauto.NewCounter(prometheus.CounterOpts{
	Namespace: "strata", Subsystem: "fs", Name: "background_fetched_bytes_total",
	Help: "Compressed bytes fetched in the background once a layer was read broadly (the prefetch policy).",
})

// background is a layer's background fetch state.
type background struct {
	policy PrefetchPolicy

	mu      sync.Mutex
	started bool
	lastIno uint64
	files   int   // files missed (a change of file counts one; see demandStart)
	bytes   int64 // compressed bytes fetched for reads
	demand  int   // reads waiting for a fetch of their own
	clear   chan struct{}
	last    time.Time     // the last read that missed
	wake    chan struct{} // closed by the next read after an idle pause
	fetched int64         // bytes fetched in the background
	ended   chan struct{} // closed when the background fetch has ended
	// sent are the background requests on the wire; preempted says a
	// read cancelled one since the pass began.
	sent      map[*bgRequest]struct{}
	preempted bool
	// onEvent, a test hook, runs under mu at each read's start ("read")
	// and end ("done") and when a background request may go ("piece").
	onEvent func(ev string, off int64)
}

// errPreempted ends the streams of a background request that a read
// cancelled (see preemptBytes): their waiters fetch them again.
var errPreempted = errors.New("background request cancelled for a read")

// bgRequest is a background request on the wire.
type bgRequest struct {
	cancel  context.CancelCauseFunc
	streams []int64 // blob offsets of its streams
}

// demandStart notes a read waiting for its own fetch of n compressed
// bytes at blob offset at, in file ino, and starts the background fetch
// when the reading has turned broad. A read that waits for enough bytes
// (wait, its own fetch's or another's) preempts the background requests
// holding no stream it waits for (waitsFor). demandDone must follow.
func (c *Content) demandStart(ino uint64, at, n, wait int64, waitsFor func(bo int64) bool) {
	walking := n == 0 && c.ahead.walkedFar() // needed only then
	b := &c.broad
	b.mu.Lock()
	if wait >= preemptBytes {
		for req := range b.sent {
			if !slices.ContainsFunc(req.streams, waitsFor) {
				req.cancel(errPreempted)
				delete(b.sent, req)
				b.preempted = true
			}
		}
	}
	b.demand++
	if b.clear == nil {
		b.clear = make(chan struct{})
	}
	b.last = time.Now()
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
	if ino != b.lastIno && (n > 0 || walking) {
		// A read that waits for bytes a read-ahead has on the way is
		// the read-ahead's prediction coming true, not a miss (reading
		// a directory's files as they arrive counted each), unless the
		// reader has long walked the layer in its stored order (tar):
		// it reads it all.
		b.files++
		b.lastIno = ino
	}
	b.bytes += n
	if b.onEvent != nil {
		b.onEvent("read", at)
	}
	start := b.policy.Mode == PrefetchAuto && !b.started && (b.files >= broadFiles || b.bytes >= broadBytes)
	if start {
		b.started, b.ended = true, make(chan struct{})
	}
	b.mu.Unlock()
	if start {
		slog.Info("fs: layer read broadly; fetching the rest in the background", "layer", c.digest, "from", at)
		c.goBackground(func(ctx context.Context) { c.backgroundFetch(ctx, at) })
	}
}

// demandDone ends a demandStart.
func (c *Content) demandDone() {
	b := &c.broad
	b.mu.Lock()
	b.demand--
	if b.onEvent != nil {
		b.onEvent("done", 0)
	}
	if b.demand == 0 && b.clear != nil {
		close(b.clear)
		b.clear = nil
	}
	b.mu.Unlock()
}

// StartBackground starts the background fetch of the whole layer when the
// policy says "all" (the pool calls it after mounting), from blob offset
// from (the end of a prioritized region being prefetched, say).
func (c *Content) StartBackground(from int64) {
	b := &c.broad
	b.mu.Lock()
	start := b.policy.Mode == PrefetchAll && !b.started
	if start {
		b.started, b.ended = true, make(chan struct{})
	}
	b.mu.Unlock()
	if start {
		c.goBackground(func(ctx context.Context) { c.backgroundFetch(ctx, from) })
	}
}

// backgroundFetch fetches the uncached chunks of the blob from from to
// its end, then from its start to from, in pieces of bgPiece bytes,
// bgParallel at a time, each sent only when no read waits for a fetch.
func (c *Content) backgroundFetch(ctx context.Context, from int64) {
	defer close(c.broad.ended)
	start := time.Now()
	slots := make(chan struct{}, bgParallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	for pass := 0; pass < bgPasses; pass++ {
		c.broad.mu.Lock()
		c.broad.preempted = false
		c.broad.mu.Unlock()
		if !c.backgroundPass(ctx, from, slots, &wg) {
			return
		}
		wg.Wait()
		c.broad.mu.Lock()
		again := c.broad.preempted
		c.broad.mu.Unlock()
		if !again {
			break
		}
	}
	wg.Wait()
	c.broad.mu.Lock()
	fetched := c.broad.fetched
	c.broad.mu.Unlock()
	slog.Info("fs: background fetch done", "layer", c.digest, "bytes", fetched, "took", time.Since(start).Round(time.Millisecond))
}

// backgroundPass sends, in blob order from from to the end, then from
// the start to from, a request for each window's uncached chunks, when no
// read waits (waitForTurn), bgParallel at a time (slots); false when the
// background fetch must stop.
func (c *Content) backgroundPass(ctx context.Context, from int64, slots chan struct{}, wg *sync.WaitGroup) bool {
	size := c.blob.Size()
	for _, span := range [][2]int64{{from, size}, {0, from}} {
		for next := span[0]; next < span[1]; {
			chunks, after, err := c.uncachedStarting(next, min(next+bgPiece, span[1]))
			if err != nil {
				slog.Debug("fs: background fetch stopped", "layer", c.digest, "error", err)
				return false
			}
			next = after
			if len(chunks) == 0 {
				continue
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return false
			}
			if !c.waitForTurn(ctx, chunks[0].BlobOffset) {
				<-slots
				return false
			}
			_, cl := c.claim(chunks)
			if len(cl.offs) == 0 {
				<-slots
				continue
			}
			cl.idle = true
			var n int64
			for _, bo := range cl.offs {
				n += cl.streams[bo][0].BlobLength
			}
			if c.overBudget(n) {
				for i, bo := range cl.offs {
					c.finish(bo, cl.fetches[i], nil, context.Canceled)
				}
				<-slots
				slog.Info("fs: background fetch stopped at its budget", "layer", c.digest, "bytes", c.broad.policy.Budget)
				return false
			}
			rctx, cancel := context.WithCancelCause(ctx)
			req := &bgRequest{cancel: cancel, streams: cl.offs}
			c.broad.mu.Lock()
			if c.broad.sent == nil {
				c.broad.sent = map[*bgRequest]struct{}{}
			}
			c.broad.sent[req] = struct{}{}
			c.broad.mu.Unlock()
			wg.Add(1)
			go func() {
				defer func() {
					c.broad.mu.Lock()
					delete(c.broad.sent, req)
					c.broad.mu.Unlock()
					cancel(nil)
					<-slots
					wg.Done()
				}()
				c.fetchStreams(rctx, cl)
				for _, sf := range cl.fetches {
					<-sf.done
					if sf.err != nil && !errors.Is(sf.err, errPreempted) {
						slog.Debug("fs: background fetch failed", "layer", c.digest, "error", sf.err)
					}
				}
				metricBackgroundBytes.Add(float64(n))
			}()
		}
	}
	return true
}

// overBudget adds n to the background's bytes and says whether that is
// over an "auto" budget.
func (c *Content) overBudget(n int64) bool {
	b := &c.broad
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.policy.Mode == PrefetchAuto && b.policy.Budget > 0 && b.fetched+n > b.policy.Budget {
		return true
	}
	b.fetched += n
	return false
}

// waitForTurn waits until no read waits for a fetch of its own and, in
// "auto", until the layer is not idle, for the background request at
// blob offset off; false when ctx ends first. A read that starts after it
// returns comes after that request.
func (c *Content) waitForTurn(ctx context.Context, off int64) bool {
	b := &c.broad
	for {
		b.mu.Lock()
		var wait chan struct{}
		switch {
		case b.demand > 0:
			wait = b.clear
		case b.policy.Mode == PrefetchAuto && time.Since(b.last) > bgIdle:
			if b.wake == nil {
				b.wake = make(chan struct{})
			}
			wait = b.wake
		}
		if wait == nil && b.onEvent != nil && ctx.Err() == nil {
			b.onEvent("piece", off)
		}
		b.mu.Unlock()
		if wait == nil {
			return ctx.Err() == nil
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return false
		}
	}
}

// uncachedStarting returns the uncached chunks whose streams start in
// [from, to), and where the next window starts: to, or, when the window
// holds more chunks than one call takes, the offset of the first stream
// left out.
func (c *Content) uncachedStarting(from, to int64) ([]index.BlobChunk, int64, error) {
	more, err := c.idx.ChunksInBlob(from, to, maxWindowChunks)
	if err != nil {
		return nil, to, err
	}
	next := to
	if len(more) == maxWindowChunks {
		// Cut before the last stream, which may go on past the slice,
		// unless it is the only one (a gzip span of many small files).
		last := more[len(more)-1].BlobOffset
		if last > more[0].BlobOffset {
			for len(more) > 0 && more[len(more)-1].BlobOffset == last {
				more = more[:len(more)-1]
			}
			next = last
		} else {
			next = last + 1
		}
	}
	out := more[:0]
	for _, ch := range more {
		if !c.cache.Has(ch.Digest) {
			out = append(out, ch)
		}
	}
	return out, next, nil
}
