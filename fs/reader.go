package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/store"
)

// Blob is where a layer's compressed bytes come from: a *remote.BlobReader
// in production.
type Blob interface {
	Size() int64
	// Fetch returns exactly the bytes of each range, in order.
	Fetch(ctx context.Context, ranges []remote.Range) ([][]byte, error)
}

// DefaultReadAhead is how many bytes of a file's following chunks are
// fetched along with a missed chunk, so sequential readers of one file
// wait for one round trip per few MiB rather than one per chunk.
const DefaultReadAhead = 4 << 20

// Blob-order read-ahead: when misses keep landing where the previous fetch
// ended, in another file (a reader walking the layer in its stored order,
// as tar or a recursive copy does), each fetch takes a window of the
// following blob bytes too, doubling from minBlobWindow up to
// maxBlobWindow. Random access never grows the window, so a lone small read
// stays small, and one big file read in order gets only its own read-ahead,
// never the unrelated files stored after it.
const (
	minBlobWindow = 1 << 20
	maxBlobWindow = 32 << 20
	// seqSlack tolerates small gaps (chunks already cached, metadata-only
	// entries) between one fetch's end and the next miss.
	seqSlack = 256 << 10
	// maxWindowChunks bounds the chunks one window takes.
	maxWindowChunks = 4096
)

// Content reads regular files of one layer: from the chunk cache when it
// has the chunk, otherwise fetched, decoded and verified, then cached.
type Content struct {
	digest    digest.Digest
	idx       *index.Layer
	blob      Blob
	cache     *store.Chunks
	readAhead int64

	mu      sync.Mutex
	pending map[int64]*streamFetch // by stream BlobOffset
	seqNext int64                  // blob offset where the last fetch ended
	seqIno  uint64                 // the file the last fetch was for
	window  int64                  // current blob-order read-ahead
}

// streamFetch is one in-flight fetch of a compressed stream; concurrent
// readers of chunks in it wait for it instead of fetching it again.
type streamFetch struct {
	done   chan struct{}
	chunks map[digest.Digest][]byte // decoded and verified
	err    error
}

// NewContent returns the content reader of the layer dgst.
func NewContent(dgst digest.Digest, idx *index.Layer, blob Blob, cache *store.Chunks) *Content {
	return &Content{digest: dgst, idx: idx, blob: blob, cache: cache, readAhead: DefaultReadAhead, pending: map[int64]*streamFetch{}}
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
	chunks, err := c.idx.Chunks(e.Ino, off, n)
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
		part, inChunk := window(ch, dst, off, n)
		if _, ok, err := c.cache.ReadAt(ch.Digest, part, inChunk); err != nil {
			return 0, err
		} else if ok {
			metricChunkReads.WithLabelValues("cache").Inc()
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
	want = append(want, c.fileReadAhead(e, missing[len(missing)-1])...)
	want = append(want, c.blobReadAhead(e.Ino, want)...)

	// Group by compressed stream; claim the streams nobody is fetching.
	streams := map[int64][]index.BlobChunk{}
	var order []int64
	for _, ch := range want {
		if _, ok := streams[ch.BlobOffset]; !ok {
			order = append(order, ch.BlobOffset)
		}
		streams[ch.BlobOffset] = append(streams[ch.BlobOffset], ch)
	}
	var mine []*streamFetch
	var mineOff []int64
	waits := map[int64]*streamFetch{}
	c.mu.Lock()
	for _, bo := range order {
		if sf, ok := c.pending[bo]; ok {
			waits[bo] = sf
			continue
		}
		sf := &streamFetch{done: make(chan struct{})}
		c.pending[bo] = sf
		waits[bo] = sf
		mine = append(mine, sf)
		mineOff = append(mineOff, bo)
	}
	c.mu.Unlock()
	if len(mine) > 0 {
		c.fetchStreams(ctx, mineOff, mine, streams)
	}
	out := map[digest.Digest][]byte{}
	for _, ch := range missing {
		sf := waits[ch.BlobOffset]
		select {
		case <-sf.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if sf.err != nil {
			return nil, sf.err
		}
		data, ok := sf.chunks[ch.Digest]
		if !ok {
			// Another reader fetched this stream for other chunks of it;
			// ours is in the cache now or must be fetched again.
			return c.loadAgain(ctx, e, ch, out)
		}
		out[ch.Digest] = data
	}
	return out, nil
}

// fileReadAhead returns the uncached chunks that follow last in file e.
func (c *Content) fileReadAhead(e index.Entry, last index.Chunk) []index.BlobChunk {
	if c.readAhead <= 0 || last.End() >= e.Size {
		return nil
	}
	more, err := c.idx.Chunks(e.Ino, last.End(), c.readAhead)
	if err != nil {
		return nil // read-ahead is an optimisation; the read itself goes on
	}
	var out []index.BlobChunk
	for _, ch := range more {
		if !c.cache.Has(ch.Digest) {
			out = append(out, index.BlobChunk{Ino: e.Ino, Chunk: ch})
		}
	}
	return out
}

// blobReadAhead grows or resets the blob-order window from where this
// fetch starts, and returns the uncached chunks in the window after it.
func (c *Content) blobReadAhead(ino uint64, want []index.BlobChunk) []index.BlobChunk {
	first, end := want[0].BlobOffset, int64(0)
	for _, ch := range want {
		first = min(first, ch.BlobOffset)
		end = max(end, ch.BlobOffset+ch.BlobLength)
	}
	c.mu.Lock()
	inOrder := c.seqNext > 0 && first >= c.seqNext-seqSlack && first <= c.seqNext+seqSlack
	switch {
	case inOrder && ino != c.seqIno:
		c.window = min(max(2*c.window, minBlobWindow), maxBlobWindow)
	case !inOrder:
		c.window = 0
	}
	window := c.window
	if ino == c.seqIno {
		window = 0 // within one file, the file's own read-ahead is enough
	}
	c.seqIno = ino
	c.mu.Unlock()
	var out []index.BlobChunk
	if window > 0 {
		more, err := c.idx.ChunksInBlob(end, end+window, maxWindowChunks)
		if err == nil {
			for _, ch := range more {
				if ch.BlobOffset+ch.BlobLength <= end+window && !c.cache.Has(ch.Digest) {
					out = append(out, ch)
					end = max(end, ch.BlobOffset+ch.BlobLength)
				}
			}
		}
	}
	c.mu.Lock()
	c.seqNext = end
	c.mu.Unlock()
	return out
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

// fetchStreams fetches the claimed streams in one coalesced call, decodes
// and verifies their chunks, caches them, and releases waiting readers.
func (c *Content) fetchStreams(ctx context.Context, offs []int64, sfs []*streamFetch, streams map[int64][]index.BlobChunk) {
	ranges := make([]remote.Range, len(offs))
	for i, bo := range offs {
		ranges[i] = remote.Range{Off: bo, Len: streams[bo][0].BlobLength}
	}
	raw, err := c.blob.Fetch(ctx, ranges)
	for i, bo := range offs {
		sf := sfs[i]
		if err != nil {
			sf.err = fmt.Errorf("layer %s: fetching %d bytes at %d: %w", c.digest, ranges[i].Len, bo, err)
		} else {
			metricFetchedBytes.Add(float64(len(raw[i])))
			sf.chunks, sf.err = c.decode(ctx, streams[bo], raw[i])
		}
		c.mu.Lock()
		delete(c.pending, bo)
		c.mu.Unlock()
		close(sf.done)
	}
}

func (c *Content) decode(ctx context.Context, chunks []index.BlobChunk, raw []byte) (map[digest.Digest][]byte, error) {
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
