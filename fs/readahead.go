package fs

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/store"
)

// Read-ahead policy. Every fetch is a round trip, and on a real network
// the round trip, not the bytes, is what readers wait for; but every byte
// fetched speculatively is link time taken from reads that matter. So
// Strata fetches more only where the access pattern says it will be used:
//
//   - file read-ahead: a file read from its start, or on from a part
//     already cached, gets up to readAhead bytes of its following chunks;
//     a random read into a large file gets only its chunk.
//   - blob-order read-ahead: misses that land where the previous fetch
//     ended, in another file (a reader walking the layer in its stored
//     order, as tar or cp -r do), grow a window of following blob bytes,
//     doubling from minBlobWindow to maxBlobWindow, fetched ahead of the
//     reader in the background once it is half consumed. A window grows
//     only while the reader reads most of what the last one brought: a
//     reader that goes through a directory's files in order but skips
//     the rest (a compiler reading a package's sources, not its testdata
//     or its subpackages) passes the window's end as a walk does, and
//     left to grow the window would fetch mostly what it never reads.
//   - neighbourhood: a miss on a small stream takes the other small
//     streams of its aligned neighbourhood block. eStargz stores files in
//     path order, so a package's modules, a directory's small files, sit
//     together, and a program that opens one usually opens its neighbours.
const (
	minBlobWindow = 1 << 20
	maxBlobWindow = 32 << 20
	// farWindow is the window of a walk three misses long (see walkedFar).
	farWindow = 4 << 20
	// seqSlack tolerates small gaps (chunks already cached, metadata-only
	// entries) between one fetch's end and the next miss.
	seqSlack = 256 << 10
	// seqBehind is how far behind the last fetch a miss may land and
	// still count as part of a walk (at least the current window).
	seqBehind = 2 << 20
	// maxWindowChunks bounds the chunks one window takes.
	maxWindowChunks = 4096
	// neighbourhoodBlock is the aligned blob block a small miss brings in.
	neighbourhoodBlock = 512 << 10
	// smallStream is the largest stream that counts as small.
	smallStream = 64 << 10
)

// readAhead is the read-ahead policy of one layer: what a fetch takes
// beyond the chunks a read asks for, from the index and what the cache
// holds, and the state of the blob-order walk it follows. The fetching is
// Content's; the policy only says what.
type readAhead struct {
	idx   View
	cache *store.Chunks
	bytes int64 // file read-ahead: how far past a sequential read

	mu      sync.Mutex
	seqNext int64  // blob offset where the last fetch ended
	seqIno  uint64 // the file the last fetch was for
	window  int64  // current blob-order read-ahead
	last    spec   // what the last blob-order window fetched, and what of it was read
	// lastFrom and lastTo are last's blob range, for a read to tell
	// without the lock whether it reads into it.
	lastFrom, lastTo atomic.Int64
	// closed says the window closed for a low read share; streak counts
	// the misses since that landed where the last fetch ended.
	closed bool
	streak int
}

// spec is the streams one blob-order window fetched ahead of the reader,
// in blob order, and how many of their bytes the reader has read since.
type spec struct {
	streams []specStream
	bytes   int64 // compressed bytes of streams
	read    int64 // of those, the bytes of streams read
}

type specStream struct {
	off, len int64
	read     bool
}

// A window's read share decides the next one: at least half of it read,
// the next window doubles; under a quarter, the window closes (small
// misses take their neighbourhood instead) until reopenStreak misses in a
// row land where the last fetch ended (a reader reading everything in
// order again) or one lands elsewhere (a new walk may start there); in
// between, the next window is the same size.
const (
	growShare    = 2 // read*growShare >= bytes: grow
	closeShare   = 4 // read*closeShare < bytes: close
	reopenStreak = 3
	// maxSpecStreams bounds the streams a window's judgement keeps.
	maxSpecStreams = 4 * maxWindowChunks
)

// nextWindow is the window after one the reader has passed the end (or,
// with before > 0, the half) of: doubled, kept or closed by the share of
// it read. before bounds the window's part judged to its streams before
// that blob offset; 0 judges it all.
func (ra *readAhead) nextWindow(before int64) int64 {
	bytes, read := ra.last.bytes, ra.last.read
	if before > 0 {
		bytes, read = ra.share(0, before)
	}
	switch {
	case bytes == 0 || read*growShare >= bytes:
		return min(max(2*ra.window, minBlobWindow), maxBlobWindow)
	case read*closeShare < bytes:
		ra.closed, ra.streak = true, 0
		return 0
	default:
		return max(ra.window, minBlobWindow)
	}
}

// share returns the compressed bytes of the last window's streams that
// start in [from, to), and of those read. The caller holds mu.
func (ra *readAhead) share(from, to int64) (bytes, read int64) {
	i, _ := slices.BinarySearchFunc(ra.last.streams, from, cmpSpec)
	for _, st := range ra.last.streams[i:] {
		if st.off >= to {
			break
		}
		bytes += st.len
		if st.read {
			read += st.len
		}
	}
	return bytes, read
}

// setLast records the window just taken: chunks, in blob order. The
// caller holds mu.
func (ra *readAhead) setLast(chunks []index.BlobChunk) {
	ra.last = spec{}
	ra.lastFrom.Store(0)
	ra.lastTo.Store(0)
	ra.addLast(chunks)
}

// addLast adds chunks, in blob order, to the last window. The caller
// holds mu.
func (ra *readAhead) addLast(chunks []index.BlobChunk) {
	if len(chunks) == 0 {
		return
	}
	sts := ra.last.streams
	for i, ch := range chunks {
		if i > 0 && chunks[i-1].BlobOffset == ch.BlobOffset {
			continue // a stream's further chunks
		}
		if j, found := slices.BinarySearchFunc(sts, ch.BlobOffset, cmpSpec); !found {
			sts = slices.Insert(sts, j, specStream{off: ch.BlobOffset, len: ch.BlobLength})
			ra.last.bytes += ch.BlobLength
		}
	}
	if len(sts) > maxSpecStreams {
		// A long walk of misses inside its window: judge by the recent half.
		for _, st := range sts[:len(sts)-maxSpecStreams/2] {
			ra.last.bytes -= st.len
			if st.read {
				ra.last.read -= st.len
			}
		}
		sts = slices.Clone(sts[len(sts)-maxSpecStreams/2:])
	}
	ra.last.streams = sts
	ra.lastFrom.Store(sts[0].off)
	ra.lastTo.Store(sts[len(sts)-1].off + 1)
}

func cmpSpec(st specStream, off int64) int { return cmp.Compare(st.off, off) }

// noteRead counts chunk ch as read, when the last window brought it.
func (ra *readAhead) noteRead(ch index.Chunk) {
	if ch.BlobOffset < ra.lastFrom.Load() || ch.BlobOffset >= ra.lastTo.Load() {
		return
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	sts := ra.last.streams
	i, found := slices.BinarySearchFunc(sts, ch.BlobOffset, cmpSpec)
	if found && !sts[i].read {
		sts[i].read = true
		ra.last.read += sts[i].len
	}
}

// fileReadAhead returns the uncached chunks that follow last in file e,
// when the read looks sequential: it starts the file, or the chunk before
// first is already cached.
func (ra *readAhead) fileReadAhead(e index.Entry, first, last index.Chunk) []index.BlobChunk {
	if ra.bytes <= 0 || last.End() >= e.Size {
		return nil
	}
	if first.FileOffset > 0 {
		prev, err := ra.idx.Chunks(e.Ino, first.FileOffset-1, 1)
		if err != nil || len(prev) == 0 || !ra.cache.Has(prev[0].Digest) {
			return nil
		}
	}
	more, err := ra.idx.Chunks(e.Ino, last.End(), ra.bytes)
	if err != nil {
		return nil // read-ahead is an optimisation; the read itself goes on
	}
	var out []index.BlobChunk
	for _, ch := range more {
		if !ra.cache.Has(ch.Digest) {
			out = append(out, index.BlobChunk{Ino: e.Ino, Chunk: ch})
		}
	}
	return out
}

// blobReadAhead grows or resets the blob-order window from where this
// fetch starts, and returns the uncached chunks in the window after it.
func (ra *readAhead) blobReadAhead(ino uint64, want []index.BlobChunk) []index.BlobChunk {
	first, end := blobPos(want[0].Chunk), int64(0)
	for _, ch := range want {
		first = min(first, blobPos(ch.Chunk))
		end = max(end, ch.BlobOffset+ch.BlobLength)
	}
	ra.mu.Lock()
	// A walk's order is the directory listing's, which may differ from the
	// blob's a little (f10 listed before f2, stored after it): a miss a
	// little behind the last fetch keeps the window, one ahead grows it.
	behind := max(ra.window, seqBehind)
	forward := ra.seqNext > 0 && first >= ra.seqNext-seqSlack && first <= ra.seqNext+seqSlack
	near := ra.seqNext > 0 && first >= ra.seqNext-behind && first <= ra.seqNext+seqSlack
	switch {
	case forward && ino != ra.seqIno && ra.closed:
		if ra.streak++; ra.streak >= reopenStreak {
			ra.closed = false
			ra.setLast(nil)
			ra.window = ra.nextWindow(0)
		}
	case forward && ino != ra.seqIno:
		ra.window = ra.nextWindow(0)
	case !near:
		// A new walk, if any, starts here.
		ra.window, ra.closed = 0, false
		ra.setLast(nil)
	case !forward:
		ra.streak = 0
		// A miss inside the walk (a file the window has on its way, or
		// one the walk's order put a little behind) goes on with the
		// window, unless the reader has read little of its last window's
		// worth of bytes.
		if ra.window > 0 {
			if b, r := ra.share(first-ra.window, first); b >= minBlobWindow/2 && r*closeShare < b {
				ra.window, ra.closed = 0, true
			}
		}
	}
	window := ra.window
	if ino == ra.seqIno {
		window = 0 // within one file, the file's own read-ahead is enough
	}
	ra.seqIno = ino
	ra.mu.Unlock()
	out, end := ra.uncachedInBlob(end, end+window)
	ra.mu.Lock()
	if end > ra.seqNext || !near {
		ra.seqNext = end
	}
	switch {
	case window > 0 && forward:
		ra.setLast(out)
	case window > 0:
		ra.addLast(out) // the walk goes on: part of the window judged
	}
	ra.mu.Unlock()
	return out
}

// blobPos is where chunk ch's data lies in the blob, as far as a walk in
// blob order is concerned: its stream's start, but for a chunk of a gzip
// span (all of whose chunks start at the span's checkpoint) where the
// bytes that decode it end.
func blobPos(ch index.Chunk) int64 {
	if ch.Encoding == index.EncodingDeflate {
		return ch.BlobOffset + ch.BlobLength
	}
	return ch.BlobOffset
}

// uncachedInBlob returns the uncached chunks whose streams lie wholly in
// [from, to), and where the last stream it looked at ends, cached or not
// (from when there is none).
func (ra *readAhead) uncachedInBlob(from, to int64) ([]index.BlobChunk, int64) {
	end := from
	if to <= from {
		return nil, end
	}
	more, err := ra.idx.ChunksInBlob(from, to, maxWindowChunks)
	if err != nil {
		return nil, end
	}
	var out []index.BlobChunk
	for _, ch := range more {
		if ch.BlobOffset+ch.BlobLength > to {
			continue
		}
		// The end counts cached streams too: a walk's next window starts
		// past them. (It did not, and a reader going through a cached
		// region, the background fetch ahead of it, looked through the
		// same full window again at every read: 4096 chunks decoded and
		// looked up in the cache per file, the reader slowed to a crawl.)
		end = max(end, ch.BlobOffset+ch.BlobLength)
		if !ra.cache.Has(ch.Digest) {
			out = append(out, ch)
		}
	}
	return out, end
}

// walking reports whether the reader walks the layer in its stored order
// (the blob-order window is open).
func (ra *readAhead) walking() bool {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	return ra.window > 0
}

// walkedFar reports whether the reader has walked the layer in its stored
// order for several windows (the window has grown to farWindow): a tar or
// a copy of the tree, not a few neighbouring directories read in turn.
func (ra *readAhead) walkedFar() bool {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	return ra.window >= farWindow
}

// neighbourhood returns, when the fetch is one small stream outside any
// sequential walk, the other small uncached streams of its aligned block.
func (ra *readAhead) neighbourhood(want []index.BlobChunk) []index.BlobChunk {
	if ra.walking() || len(want) != 1 || want[0].BlobLength > smallStream {
		return nil
	}
	start := want[0].BlobOffset / neighbourhoodBlock * neighbourhoodBlock
	var out []index.BlobChunk
	more, _ := ra.uncachedInBlob(start, start+neighbourhoodBlock)
	end, after := int64(0), 0
	for _, ch := range more {
		if ch.BlobLength <= smallStream && ch.BlobOffset != want[0].BlobOffset {
			out = append(out, ch)
			end = max(end, ch.BlobOffset+ch.BlobLength)
			if ch.BlobOffset < want[0].BlobOffset {
				after = len(out)
			}
		}
	}
	// A reader that goes on past the block, having read most of it from
	// the miss on, is walking the layer.
	ra.mu.Lock()
	ra.seqNext = max(ra.seqNext, end)
	ra.setLast(out[after:])
	ra.mu.Unlock()
	return out
}

// readAheadAsync runs when a reader reaches chunk ch of file e from the
// cache: it fetches in the background what that reader will want next, so
// a sequential reader finds it fetched before it asks and the link never
// idles between misses. One background read-ahead runs per layer at a time.
func (c *Content) readAheadAsync(e index.Entry, ch index.Chunk) {
	if !c.asyncBusy.CompareAndSwap(false, true) {
		return
	}
	next := c.ahead.nextInFile(e, ch)
	if len(next) == 0 {
		next = c.ahead.nextInBlob(ch)
	}
	if len(next) == 0 {
		c.asyncBusy.Store(false)
		return
	}
	_, cl := c.claim(next)
	if len(cl.offs) == 0 {
		c.asyncBusy.Store(false)
		return
	}
	c.goBackground(func(bg context.Context) {
		defer c.asyncBusy.Store(false)
		c.fetchInPieces(bg, cl)
		for _, sf := range cl.fetches {
			<-sf.done
			if sf.err != nil {
				slog.Debug("fs: background read-ahead failed", "layer", c.digest, "error", sf.err)
			}
		}
	})
}

// nextInFile is the uncached part of e's read-ahead distance after ch.
func (ra *readAhead) nextInFile(e index.Entry, ch index.Chunk) []index.BlobChunk {
	if ra.bytes <= 0 || ch.End() >= e.Size {
		return nil
	}
	more, err := ra.idx.Chunks(e.Ino, ch.End(), ra.bytes)
	if err != nil {
		return nil
	}
	var out []index.BlobChunk
	for _, m := range more {
		if !ra.cache.Has(m.Digest) {
			out = append(out, index.BlobChunk{Ino: e.Ino, Chunk: m})
		}
	}
	return out
}

// nextInBlob is the next blob-order window, once a walking reader has
// consumed half of the current one.
func (ra *readAhead) nextInBlob(ch index.Chunk) []index.BlobChunk {
	ra.mu.Lock()
	window, next := ra.window, ra.seqNext
	if window == 0 || ch.BlobOffset < next-window/2 {
		ra.mu.Unlock()
		return nil
	}
	// The walk goes on: ramp up as the kernel's async read-ahead does,
	// as far as what it read of the window so far says.
	ra.window = ra.nextWindow(ch.BlobOffset)
	window = ra.window
	ra.mu.Unlock()
	if window == 0 {
		return nil
	}
	out, end := ra.uncachedInBlob(next, next+window)
	ra.mu.Lock()
	if end > ra.seqNext {
		ra.seqNext = end
	}
	if end == next && ra.window == window {
		ra.window = 0 // the walk reached the blob's end: nothing is ahead
	}
	ra.setLast(out)
	ra.mu.Unlock()
	return out
}
