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
// fetched along with a missed chunk, so sequential readers wait for one
// round trip per few MiB rather than one per chunk.
const DefaultReadAhead = 4 << 20

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
// read-ahead chunks that follow them in the file, and returns the decoded
// bytes of at least the missing ones.
func (c *Content) load(ctx context.Context, e index.Entry, missing []index.Chunk) (map[digest.Digest][]byte, error) {
	want := missing
	last := missing[len(missing)-1]
	if c.readAhead > 0 && last.End() < e.Size {
		more, err := c.idx.Chunks(e.Ino, last.End(), c.readAhead)
		if err == nil {
			for _, ch := range more {
				if !c.cache.Has(ch.Digest) {
					want = append(want, ch)
				}
			}
		}
	}
	// Group by compressed stream; claim the streams nobody is fetching.
	streams := map[int64][]index.Chunk{}
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
		c.fetchStreams(ctx, e, mineOff, mine, streams)
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
func (c *Content) fetchStreams(ctx context.Context, e index.Entry, offs []int64, sfs []*streamFetch, streams map[int64][]index.Chunk) {
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
			sf.chunks, sf.err = c.decode(ctx, e, streams[bo], raw[i])
		}
		c.mu.Lock()
		delete(c.pending, bo)
		c.mu.Unlock()
		close(sf.done)
	}
}

func (c *Content) decode(ctx context.Context, e index.Entry, chunks []index.Chunk, raw []byte) (map[digest.Digest][]byte, error) {
	out := make(map[digest.Digest][]byte, len(chunks))
	for _, ch := range chunks {
		data, err := index.DecodeChunk(ch, raw, nil)
		if err != nil {
			if errors.Is(err, index.ErrDigestMismatch) {
				metricVerifyFailures.Inc()
			}
			slog.ErrorContext(ctx, "fs: chunk failed verification; not served, not cached",
				"layer", c.digest, "inode", e.Ino, "fileOffset", ch.FileOffset, "blobOffset", ch.BlobOffset, "error", err)
			return nil, fmt.Errorf("layer %s inode %d chunk at %d: %w", c.digest, e.Ino, ch.FileOffset, err)
		}
		if err := c.cache.Put(ch.Digest, data); err != nil {
			slog.WarnContext(ctx, "fs: chunk not cached", "layer", c.digest, "error", err)
		}
		out[ch.Digest] = data
	}
	return out, nil
}
