package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/store"
)

// Blob is where a layer's compressed bytes come from: a *remote.BlobReader
// in production.
type Blob interface {
	Size() int64
	// FetchEach hands got exactly the bytes of each range, each as soon
	// as they are in, one call at a time and never after it returns (see
	// remote.BlobReader.FetchEach). On an error, the ranges not handed
	// over have failed.
	FetchEach(ctx context.Context, ranges []remote.Range, got func(i int, data []byte)) error
}

// DefaultReadAhead is how many bytes of a file's following chunks are
// fetched along with a missed chunk, so sequential readers of one file
// wait for one round trip per few MiB rather than one per chunk (see
// readahead.go for the whole policy).
const DefaultReadAhead = 8 << 20

// Content reads regular files of one layer: from the chunk cache when it
// has the chunk, otherwise fetched, decoded and verified, then cached. It
// is the layer's fetching; what a fetch takes beyond what was asked is
// its readAhead's to say, and the whole local files passthrough opens are
// its wholeFiles' to keep. The format is the index view's business: a
// chunk's encoding says how its fetched bytes decode.
type Content struct {
	digest digest.Digest
	idx    View
	blob   Blob
	cache  *store.Chunks
	whole  *wholeFiles // nil: no whole files (see WithWholeFiles)
	ahead  *readAhead
	link   *linkEstimate // see inOrder; shared by the layers of a registry
	// lastChunks is what cached found for the read that follows it.
	lastChunks atomic.Pointer[chunksOf]

	mu      sync.Mutex
	pending map[int64]*streamFetch // by stream BlobOffset

	asyncBusy atomic.Bool // a background read-ahead is running
	// broad is the background fetch of the rest of the layer once it is
	// read broadly (see background.go).
	broad background
	// prefetchEnd is where the prefetch of prioritized files running now
	// ends in the blob (0 when none runs); see prefetch.go.
	prefetchEnd atomic.Int64
	// stopLandmark cancels that prefetch: a recorded list, when there is
	// one, says better what a workload reads first (see record.go).
	stopLandmark atomic.Pointer[context.CancelFunc]
	// listed counts the recorded-list prefetches running on this layer
	// (see record.go); recording, the recorders its opens go to.
	listed    atomic.Int32
	recording recorders

	*lifetime
}

// lifetime is a layer's background work (read-ahead, decoding, whole
// files): it outlives the read that started it but not the layer, so
// nothing is fetched or written to the cache after an unmount. Its
// context is the one kept in a struct: it is the layer's lifetime.
type lifetime struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newLifetime() *lifetime {
	ctx, cancel := context.WithCancel(context.Background())
	return &lifetime{ctx: ctx, cancel: cancel}
}

// goBackground runs fn in the background, under the layer's lifetime.
func (l *lifetime) goBackground(fn func(ctx context.Context)) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn(l.ctx)
	}()
}

// Close stops the layer's background work and waits for it to end.
func (c *Content) Close() {
	c.cancel()
	c.wg.Wait()
	prefixes.drop(c)
	if c.whole != nil {
		c.whole.closeAssemblers()
	}
}

// streamFetch is one in-flight fetch of a compressed stream; concurrent
// readers of chunks in it wait for it instead of fetching it again.
type streamFetch struct {
	done   chan struct{}
	length int64 // compressed bytes fetched from the stream's start
	// after is the fetch of the same stream's shorter start that was on
	// its way when this one was claimed: this one waits for it and
	// fetches only what it lacks (see spanPrefixes).
	after  *streamFetch
	chunks map[digest.Digest][]byte // decoded and verified
	err    error
}

// streamLen is the compressed bytes that decode all of chunks, which are
// of one stream: the stream whole, or for a gzip span the longest of the
// chunks' prefixes of it.
func streamLen(chunks []index.BlobChunk) int64 {
	var n int64
	for _, ch := range chunks {
		n = max(n, ch.BlobLength)
	}
	return n
}

// NewContent returns the content reader of the layer dgst.
func NewContent(dgst digest.Digest, idx View, blob Blob, cache *store.Chunks, opts ...ContentOption) *Content {
	c := &Content{digest: dgst, idx: idx, blob: blob, cache: cache, ahead: &readAhead{idx: idx, cache: cache, bytes: DefaultReadAhead},
		pending: map[int64]*streamFetch{}, lifetime: newLifetime(), link: &linkEstimate{}}
	for _, o := range opts {
		o(c)
	}
	if w := c.whole; w != nil {
		w.digest, w.idx, w.cache, w.life = dgst, idx, cache, c.lifetime
		w.busy, w.assemblers = map[wholeJob]bool{}, map[uint64]*assembler{}
	}
	return c
}

// cached says whether every chunk of n bytes of file e at off is cached.
// The chunks are kept for the read that follows (see chunks).
func (c *Content) cached(e index.Entry, off, n int64) bool {
	n = min(n, e.Size-off)
	chunks, err := c.idx.Chunks(e.Ino, off, n)
	if err != nil {
		return true // an error, answered at once
	}
	c.lastChunks.Store(&chunksOf{e.Ino, off, n, chunks})
	for _, ch := range chunks {
		if !c.cache.Has(ch.Digest) {
			return false
		}
	}
	return true
}

// chunksOf is the chunks of n bytes of inode ino at off.
type chunksOf struct {
	ino    uint64
	off, n int64
	chunks []index.Chunk
}

// chunks returns the chunks of n bytes of inode ino at off: those cached
// found for the same read, or the index's.
func (c *Content) chunks(ino uint64, off, n int64) ([]index.Chunk, error) {
	if p := c.lastChunks.Load(); p != nil && p.ino == ino && p.off == off && p.n == n {
		return p.chunks, nil
	}
	return c.idx.Chunks(ino, off, n)
}

// ReadAt fills dst with the content of file e at off. It returns the
// number of bytes read, short only at the end of the file.
func (c *Content) ReadAt(ctx context.Context, e index.Entry, dst []byte, off int64) (int, error) {
	if off >= e.Size || len(dst) == 0 {
		return 0, nil
	}
	n := int64(len(dst))
	if off+n > e.Size {
		n = e.Size - off
	}
	chunks, err := c.chunks(e.Ino, off, n)
	if err != nil {
		return 0, err
	}
	var missing []index.Chunk
	covered := off
	for _, ch := range chunks {
		if ch.FileOffset > covered {
			return 0, fmt.Errorf("inode %d: %w: no chunk covers offset %d", e.Ino, index.ErrInvalid, covered)
		}
		covered = ch.End()
		c.noteRead(e.Ino, ch)
		c.ahead.noteRead(ch)
		part, inChunk := window(ch, dst, off, n)
		if _, ok, err := c.cache.ReadAt(ch.Digest, part, inChunk); err != nil {
			return 0, err
		} else if ok {
			metricChunkReads.WithLabelValues("cache").Inc()
			if inChunk == 0 {
				c.readAheadAsync(e, ch)
			}
			continue
		}
		missing = append(missing, ch)
	}
	if covered < off+n {
		return 0, fmt.Errorf("inode %d: %w: chunks end at %d before %d", e.Ino, index.ErrInvalid, covered, off+n)
	}
	if len(missing) > 0 {
		got, err := c.load(ctx, e, missing)
		if err != nil {
			return 0, err
		}
		for _, ch := range missing {
			part, inChunk := window(ch, dst, off, n)
			copy(part, got[ch.Digest][inChunk:])
			metricChunkReads.WithLabelValues("fetch").Inc()
		}
	}
	return int(n), nil
}

// window returns the part of dst (which holds [off, off+n) of the file)
// that chunk ch covers, and where that part starts inside the chunk.
func window(ch index.Chunk, dst []byte, off, n int64) ([]byte, int64) {
	start, end := max(off, ch.FileOffset), min(off+n, ch.End())
	return dst[start-off : end-off], start - ch.FileOffset
}

// load fetches, verifies and caches the missing chunks of file e, plus
// read-ahead chunks (of this file, and of the blob when the reader walks
// it in order), and returns the decoded bytes of at least the missing ones.
func (c *Content) load(ctx context.Context, e index.Entry, missing []index.Chunk) (map[digest.Digest][]byte, error) {
	want := make([]index.BlobChunk, 0, len(missing))
	for _, ch := range missing {
		want = append(want, index.BlobChunk{Ino: e.Ino, Chunk: ch})
	}
	if missing[0].BlobOffset >= c.prefetchEnd.Load() {
		// Inside a running prefetch, what comes next is on its way.
		want = append(want, c.ahead.fileReadAhead(e, missing[0], missing[len(missing)-1])...)
		if c.listed.Load() == 0 {
			// While a recorded list is fetched, the list says what comes
			// next better than the blob's order does.
			want = append(want, c.ahead.blobReadAhead(e.Ino, want)...)
			want = append(want, c.ahead.neighbourhood(want)...)
		}
	}

	want = append(want, c.restOfSpans(want, c.ahead.walking())...)

	waits, claimed := c.claim(want)
	if slog.Default().Enabled(ctx, slog.LevelDebug) {
		start := time.Now()
		defer func() {
			slog.DebugContext(ctx, "fs: read missed", "layer", shortDigest(c.digest), "inode", e.Ino,
				"offset", missing[0].FileOffset, "chunks", len(missing), "readAhead", len(want)-len(missing),
				"claimed", len(claimed.offs), "waited", time.Since(start))
		}()
	}
	// The reader waits for its own streams only: they are fetched on
	// their own, while the read-ahead streams go in the background in a
	// few pieces, each releasing its waiters when it arrives. One fetch
	// of both would keep the reader waiting for every read-ahead byte
	// (an exec's first page of a binary waited for 8 MiB of it).
	mine, ahead := claimed.split(missing)
	// The read waits from here: no background fetch starts meanwhile.
	var demandBytes, waitBytes int64
	for _, bo := range mine.offs {
		demandBytes += streamLen(mine.streams[bo])
	}
	for i, ch := range missing {
		// A stream's chunks (a gzip span's) come one after another.
		if _, ok := waits[ch.BlobOffset]; ok && (i == 0 || missing[i-1].BlobOffset != ch.BlobOffset) {
			waitBytes += ch.BlobLength
		}
	}
	c.demandStart(e.Ino, missing[0].BlobOffset, demandBytes, waitBytes, func(bo int64) bool { _, ok := waits[bo]; return ok })
	defer c.demandDone()
	if len(ahead.offs) > 0 {
		c.goBackground(func(bg context.Context) { c.fetchInPieces(bg, ahead) })
	}
	if len(mine.offs) > 0 {
		c.fetchStreams(ctx, mine)
	}
	out := map[digest.Digest][]byte{}
	for _, ch := range missing {
		sf, ok := waits[ch.BlobOffset]
		if !ok {
			// Its stream arrived between the read's look into the cache
			// and the claim: it is cached now.
			var err error
			if out, err = c.loadAgain(ctx, e, ch, out); err != nil {
				return nil, err
			}
			continue
		}
		select {
		case <-sf.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if sf.err != nil {
			if ctx.Err() == nil && (errors.Is(sf.err, errPreempted) || errors.Is(sf.err, context.Canceled)) {
				// Fetched for a background request a read cancelled, or
				// for a reader that gave up: ours is fetched again.
				var err error
				if out, err = c.loadAgain(ctx, e, ch, out); err != nil {
					return nil, err
				}
				continue
			}
			return nil, sf.err
		}
		data, ok := sf.chunks[ch.Digest]
		if !ok {
			// Another reader fetched this stream for other chunks of it;
			// ours is in the cache now or must be fetched again.
			var err error
			if out, err = c.loadAgain(ctx, e, ch, out); err != nil {
				return nil, err
			}
			continue
		}
		out[ch.Digest] = data
	}
	return out, nil
}

// restOfSpans returns, for each gzip span of want whose start was fetched
// lately for other reads (see spanPrefixes), or every span of want when
// the reader walks the layer in order (walking), the uncached chunks of
// the rest of it. A program that comes back to a span reads more of it (a
// package's modules, a directory's files), and a walk reads all of it:
// one fetch of the rest costs one round trip where fetching on file by
// file would cost one a file, and no more bytes than the span's first
// read would have moved had it taken the span whole.
func (c *Content) restOfSpans(want []index.BlobChunk, walking bool) []index.BlobChunk {
	var out []index.BlobChunk
	seen := map[int64]bool{}
	for _, ch := range want {
		bo := ch.BlobOffset
		if ch.Encoding != index.EncodingDeflate || seen[bo] || !walking && !prefixes.has(spanKey{c, bo}) {
			continue
		}
		seen[bo] = true
		all, err := c.idx.ChunksInBlob(bo, bo+1, maxSpanChunks)
		if err != nil {
			continue // the read goes on with what it asked for
		}
		for _, a := range all {
			if !c.cache.Has(a.Digest) {
				out = append(out, a)
			}
		}
	}
	return out
}

// claimed is the set of streams one caller fetches, with their chunks.
type claimed struct {
	offs    []int64
	fetches []*streamFetch
	streams map[int64][]index.BlobChunk
	// idle says the streams are the background fetch's: decoded one at a
	// time, never ahead of a read's (see idleDecodeSlot).
	idle bool
	// arrived, when set, is told the compressed bytes fetched as they
	// arrive, in parts of at most progressPart bytes.
	arrived func(n int64)
}

// split divides the claimed streams into those holding a chunk of
// missing (the reader's own) and the others (read-ahead), in claim order.
func (cl *claimed) split(missing []index.Chunk) (mine, ahead *claimed) {
	own := make(map[int64]bool, len(missing))
	for _, ch := range missing {
		own[ch.BlobOffset] = true
	}
	mine, ahead = &claimed{streams: cl.streams}, &claimed{streams: cl.streams}
	for i, bo := range cl.offs {
		to := ahead
		if own[bo] {
			to = mine
		}
		to.offs, to.fetches = append(to.offs, bo), append(to.fetches, cl.fetches[i])
	}
	return mine, ahead
}

// aheadPieces is how many pieces, at most, a read-ahead is fetched in
// (at least prefetchPiece bytes each, in order: see inOrder): few enough
// that its requests cost little, enough that the reader, which comes right
// behind, finds the first piece there early.
const aheadPieces = 4

// fetchInPieces fetches the claimed streams cl, in claim order, as a few
// pieces (see aheadPieces). Every claimed stream is finished, with ctx's
// error when ctx ends first, so that no waiter is left hanging.
func (c *Content) fetchInPieces(ctx context.Context, cl *claimed) {
	var chunks []index.BlobChunk
	var total int64
	for _, bo := range cl.offs {
		chunks = append(chunks, cl.streams[bo]...)
		total += streamLen(cl.streams[bo])
	}
	byOff := make(map[int64]*streamFetch, len(cl.offs))
	for i, bo := range cl.offs {
		byOff[bo] = cl.fetches[i]
	}
	ps := pieces(chunks, max(prefetchPiece, total/aheadPieces))
	subs := make([]*claimed, len(ps))
	for i, p := range ps {
		subs[i] = &claimed{streams: cl.streams}
		for j, ch := range p {
			if j == 0 || p[j-1].BlobOffset != ch.BlobOffset {
				subs[i].offs, subs[i].fetches = append(subs[i].offs, ch.BlobOffset), append(subs[i].fetches, byOff[ch.BlobOffset])
			}
		}
	}
	started := inOrder(ctx, c.link, bytesOf(ps), func(i int, here func(int64)) {
		subs[i].arrived = here
		c.fetchStreams(ctx, subs[i])
	})
	for _, sub := range subs[started:] {
		for i, bo := range sub.offs {
			c.finish(bo, sub.fetches[i], nil, ctx.Err())
		}
	}
}

// claim groups chunks by compressed stream and claims the streams nobody
// is fetching yet. It returns, for every stream, the fetch to wait for; a
// stream whose chunks are all cached (a fetch that ended after the caller
// looked) gets none and is not claimed. A gzip span that is on its way
// only up to a shorter length than the uncached chunks need is claimed
// again, to fetch the rest once that fetch is done.
func (c *Content) claim(want []index.BlobChunk) (map[int64]*streamFetch, *claimed) {
	streams := map[int64][]index.BlobChunk{}
	var order []int64
	for _, ch := range want {
		if _, ok := streams[ch.BlobOffset]; !ok {
			order = append(order, ch.BlobOffset)
		}
		streams[ch.BlobOffset] = append(streams[ch.BlobOffset], ch)
	}
	cl := &claimed{streams: streams}
	waits := make(map[int64]*streamFetch, len(order))
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, bo := range order {
		prev, ok := c.pending[bo]
		if ok && prev.length >= streamLen(streams[bo]) {
			waits[bo] = prev
			continue
		}
		// Checked under the lock: a fetch caches its chunks before it
		// leaves pending, so a stream neither pending nor cached here
		// is not on its way.
		cached := func(ch index.BlobChunk) bool { return c.cache.Has(ch.Digest) }
		uncached := streams[bo]
		if slices.ContainsFunc(uncached, cached) { // rare: copy only then
			uncached = slices.DeleteFunc(slices.Clone(uncached), cached)
		}
		if len(uncached) == 0 {
			continue
		}
		if ok && prev.length >= streamLen(uncached) {
			waits[bo] = prev
			continue
		}
		streams[bo] = uncached
		sf := &streamFetch{done: make(chan struct{}), length: streamLen(uncached), after: prev}
		c.pending[bo] = sf
		waits[bo] = sf
		cl.offs = append(cl.offs, bo)
		cl.fetches = append(cl.fetches, sf)
	}
	return waits, cl
}

// loadAgain handles the rare case where a stream another reader fetched
// did not include the chunk we need (streams shared between files).
func (c *Content) loadAgain(ctx context.Context, e index.Entry, ch index.Chunk, out map[digest.Digest][]byte) (map[digest.Digest][]byte, error) {
	buf := make([]byte, ch.Length)
	if _, ok, err := c.cache.ReadAt(ch.Digest, buf, 0); err == nil && ok {
		out[ch.Digest] = buf
		return out, nil
	}
	got, err := c.load(ctx, e, []index.Chunk{ch})
	if err != nil {
		return nil, err
	}
	out[ch.Digest] = got[ch.Digest]
	return out, nil
}

// fetchStreams fetches the claimed streams in one coalesced call and, as
// each stream's bytes arrive, decodes, verifies and caches it in the
// background, releasing its waiters as soon as it is done: a reader waits
// for its own chunks, not for the read-ahead fetched or decoded with them.
func (c *Content) fetchStreams(ctx context.Context, cl *claimed) {
	offs, sfs, streams := cl.offs, cl.fetches, cl.streams
	ranges := make([]remote.Range, len(offs))
	starts := make([][]byte, len(offs))
	for i, bo := range offs {
		if sfs[i].after != nil {
			select {
			case <-sfs[i].after.done:
			case <-ctx.Done():
			}
		}
		starts[i] = prefixes.take(spanKey{c, bo})
		ranges[i] = remote.Range{Off: bo + int64(len(starts[i])), Len: max(0, sfs[i].length-int64(len(starts[i])))}
	}
	start := time.Now()
	handed := make([]bool, len(offs))
	err := c.fetchRest(ctx, ranges, starts, cl.arrived, func(i int, raw []byte) {
		handed[i] = true
		metricFetchedBytes.Add(float64(ranges[i].Len))
		bo, sf := offs[i], sfs[i]
		c.goBackground(func(bg context.Context) {
			if cl.idle {
				idleDecodeSlot <- struct{}{}
				defer func() { <-idleDecodeSlot }()
			}
			decodeSlots <- struct{}{}
			defer func() { <-decodeSlots }()
			chunks, err := c.decode(bg, streams[bo], raw)
			c.finish(bo, sf, chunks, err)
		})
	})
	if err != nil && ctx.Err() != nil {
		err = context.Cause(ctx) // errPreempted, say
	}
	if slog.Default().Enabled(ctx, slog.LevelDebug) {
		var n int64
		for _, r := range ranges {
			n += r.Len
		}
		slog.DebugContext(ctx, "fs: fetched", "layer", shortDigest(c.digest), "streams", len(ranges),
			"bytes", n, "from", ranges[0].Off, "inode", streams[offs[0]][0].Ino, "took", time.Since(start), "error", err)
	}
	for i, bo := range offs {
		if !handed[i] {
			if err == nil {
				err = errors.New("no bytes") // a Blob breaking its contract
			}
			c.finish(bo, sfs[i], nil, fmt.Errorf("layer %s: fetching %d bytes at %d: %w", c.digest, ranges[i].Len, bo, err))
		}
	}
}

// maxSpanChunks bounds the chunks one gzip span's decoding caches.
const maxSpanChunks = 1 << 16

// decodeSpan decodes the start of a span of a plain gzip layer (see
// index.DecodeSpan), raw, fetched for the chunks want. The start fetched
// is decoded whole anyway, so every chunk it decodes is verified and
// cached, not only those wanted: files that share a span (a directory's
// small files, stored together) cost one fetch. When the span goes on
// past raw, raw is kept for a while (see spanPrefixes): a later read
// further into the span fetches only the rest.
func (c *Content) decodeSpan(ctx context.Context, want []index.BlobChunk, raw []byte) (map[digest.Digest][]byte, error) {
	bo := want[0].BlobOffset
	fail := func(err error) (map[digest.Digest][]byte, error) {
		if errors.Is(err, index.ErrDigestMismatch) {
			metricVerifyFailures.Inc()
		}
		slog.ErrorContext(ctx, "fs: gzip span failed verification; not served, not cached",
			"layer", c.digest, "inode", want[0].Ino, "fileOffset", want[0].FileOffset, "blobOffset", bo, "error", err)
		return nil, fmt.Errorf("layer %s inode %d chunk at %d (gzip span at %d): %w", c.digest, want[0].Ino, want[0].FileOffset, bo, err)
	}
	cp, err := c.idx.Checkpoint(bo)
	if err != nil {
		return fail(err)
	}
	all, err := c.idx.ChunksInBlob(bo, bo+1, maxSpanChunks)
	if err != nil {
		all = nil // the wanted ones alone, then
	}
	seen := make(map[digest.Digest]bool, len(all)+len(want))
	var chunks []index.Chunk
	more := false // chunks of the span lie past raw
	for i, ch := range slices.Concat(want, all) {
		switch {
		case seen[ch.Digest]:
		case i >= len(want) && c.cache.Has(ch.Digest):
			// Decoded through on the way, not hashed or cached again
			// (the rest of a span whose start came before).
			seen[ch.Digest] = true
		case ch.BlobLength > int64(len(raw)):
			more = true
		default:
			seen[ch.Digest] = true
			chunks = append(chunks, ch.Chunk)
		}
	}
	if len(chunks) == 0 {
		return nil, nil // a waiter whose chunk is not here fetches it again
	}
	data, err := index.DecodeSpan(cp, raw, chunks)
	if err != nil {
		return fail(err)
	}
	if more {
		prefixes.put(spanKey{c, bo}, raw)
	}
	out := make(map[digest.Digest][]byte, len(chunks))
	for i, ch := range chunks {
		if err := c.cache.Put(ch.Digest, data[i]); err != nil {
			slog.WarnContext(ctx, "fs: chunk not cached", "layer", c.digest, "error", err)
		}
		out[ch.Digest] = data[i]
	}
	return out, nil
}

// shortDigest is the start of d's hex, for log lines.
func shortDigest(d digest.Digest) string {
	e := d.Encoded()
	return e[:min(len(e), 12)]
}

// decodeSlots bounds concurrent chunk decoding (decompress and hash) to
// the CPUs there are; idleDecodeSlot lets the background fetch, which no
// read waits for, take one of them at most, so that it leaves the others
// to reads and its CPU to the workload (a compiler on a small machine).
var (
	decodeSlots    = make(chan struct{}, runtime.GOMAXPROCS(0))
	idleDecodeSlot = make(chan struct{}, 1)
)

// finish publishes a stream's result and releases its waiters.
func (c *Content) finish(bo int64, sf *streamFetch, chunks map[digest.Digest][]byte, err error) {
	sf.chunks, sf.err = chunks, err
	c.mu.Lock()
	if c.pending[bo] == sf { // not replaced by a longer fetch of it
		delete(c.pending, bo)
	}
	c.mu.Unlock()
	close(sf.done)
}

// progressPart is the largest part of a stream whose arrival fetchRest
// reports on its own: a large stream (a 4 MiB chunk of a binary, 1.5 to 2
// MB compressed) is reported as it comes, not once at its end.
const progressPart = 128 << 10

// fetchRest fetches ranges, each the rest of a stream whose start is
// already here in the prefix of the same index, and hands got each stream
// from its start as soon as its bytes are in (see Blob.FetchEach). A range
// with nothing left to fetch costs no request. progress, when not nil, is
// told the bytes as they arrive, in parts of at most progressPart.
func (c *Content) fetchRest(ctx context.Context, ranges []remote.Range, prefixes [][]byte, progress func(n int64), got func(i int, raw []byte)) error {
	var ask []remote.Range
	var asked, part []int // ask's index in ranges, and its part of that range
	nparts := make([]int, len(ranges))
	for i, r := range ranges {
		if r.Len == 0 {
			got(i, prefixes[i])
			continue
		}
		// Adjacent parts of one range: the same request (FetchEach
		// coalesces them) unless the range straddles the end of one,
		// handed over one by one as they come.
		step := r.Len
		if progress != nil {
			step = progressPart
		}
		for off := int64(0); off < r.Len; off += step {
			ask = append(ask, remote.Range{Off: r.Off + off, Len: min(step, r.Len-off)})
			asked, part = append(asked, i), append(part, nparts[i])
			nparts[i]++
		}
	}
	if len(ask) == 0 {
		return nil
	}
	parts := make(map[int][][]byte) // of ranges in several parts, those in so far
	return c.blob.FetchEach(ctx, ask, func(j int, data []byte) {
		i := asked[j]
		if progress != nil {
			progress(int64(len(data)))
		}
		if nparts[i] > 1 {
			// Parts in two requests may come in either order.
			ps := parts[i]
			if ps == nil {
				ps = make([][]byte, nparts[i])
				parts[i] = ps
			}
			ps[part[j]] = data
			if slices.ContainsFunc(ps, func(p []byte) bool { return p == nil }) {
				return
			}
			data = slices.Concat(ps...)
			delete(parts, i)
		}
		if len(prefixes[i]) > 0 {
			data = append(prefixes[i], data...)
		}
		got(i, data) // data is ours (FetchEach): no copy without a prefix
	})
}

func (c *Content) decode(ctx context.Context, chunks []index.BlobChunk, raw []byte) (map[digest.Digest][]byte, error) {
	if chunks[0].Encoding == index.EncodingDeflate {
		return c.decodeSpan(ctx, chunks, raw)
	}
	out := make(map[digest.Digest][]byte, len(chunks))
	for _, ch := range chunks {
		data, err := index.DecodeChunk(ch.Chunk, raw, nil)
		if err != nil {
			if errors.Is(err, index.ErrDigestMismatch) {
				metricVerifyFailures.Inc()
			}
			slog.ErrorContext(ctx, "fs: chunk failed verification; not served, not cached",
				"layer", c.digest, "inode", ch.Ino, "fileOffset", ch.FileOffset, "blobOffset", ch.BlobOffset, "error", err)
			return nil, fmt.Errorf("layer %s inode %d chunk at %d: %w", c.digest, ch.Ino, ch.FileOffset, err)
		}
		if err := c.cache.Put(ch.Digest, data); err != nil {
			slog.WarnContext(ctx, "fs: chunk not cached", "layer", c.digest, "error", err)
		}
		out[ch.Digest] = data
	}
	return out, nil
}
