package fs

import (
	"context"
	"log/slog"
	"sync"

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
//     reader in the background once it is half consumed.
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
	case forward && ino != ra.seqIno:
		ra.window = min(max(2*ra.window, minBlobWindow), maxBlobWindow)
	case !near:
		ra.window = 0
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
// [from, to), and where the last of them ends (from when there is none).
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
		if ch.BlobOffset+ch.BlobLength <= to && !ra.cache.Has(ch.Digest) {
			out = append(out, ch)
			end = max(end, ch.BlobOffset+ch.BlobLength)
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
	end := int64(0)
	for _, ch := range more {
		if ch.BlobLength <= smallStream && ch.BlobOffset != want[0].BlobOffset {
			out = append(out, ch)
			end = max(end, ch.BlobOffset+ch.BlobLength)
		}
	}
	// A reader that goes on past the block is walking the layer.
	ra.mu.Lock()
	ra.seqNext = max(ra.seqNext, end)
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
	if window > 0 && ch.BlobOffset >= next-window/2 {
		// The walk goes on: ramp up as the kernel's async read-ahead does.
		ra.window = min(2*window, maxBlobWindow)
		window = ra.window
	}
	ra.mu.Unlock()
	if window == 0 || ch.BlobOffset < next-window/2 {
		return nil
	}
	out, end := ra.uncachedInBlob(next, next+window)
	ra.mu.Lock()
	if end > ra.seqNext {
		ra.seqNext = end
	}
	ra.mu.Unlock()
	return out
}
