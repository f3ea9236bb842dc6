package store

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
)

// Chunks is the cache of decompressed chunk content, keyed by the digest of
// the chunk's bytes (so identical chunks of different layers are stored
// once), bounded in size with least-recently-used eviction.
//
// A chunk file is hashed the first time this process reads it back and is
// trusted until it is evicted; a file that does not match is removed and
// reported as a miss, so a torn or tampered cache costs a refetch, never
// wrong content. For that reason chunk writes are atomic (rename) but not
// fsynced: after a crash a chunk is whole, absent, or caught by that check.
type Chunks struct {
	dir, tmp string
	limit    int64

	mu       sync.Mutex
	size     int64
	lru      *list.List // of *chunkRecord, front = most recent
	byDigest map[digest.Digest]*list.Element
}

type chunkRecord struct {
	d        digest.Digest
	size     int64
	verified bool
}

// ChunkStats describes the cache.
type ChunkStats struct {
	Chunks int
	Bytes  int64
	Limit  int64
}

func openChunks(dir, tmp string, limit int64) (*Chunks, error) {
	c := &Chunks{dir: dir, tmp: tmp, limit: limit, lru: list.New(), byDigest: map[digest.Digest]*list.Element{}}
	// Rebuild the LRU from the files, oldest modification first, so a
	// restarted daemon keeps its cache and still evicts in a sane order.
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		d := digest.NewDigestFromEncoded(digest.Algorithm(filepath.Base(filepath.Dir(p))), de.Name())
		info, err := de.Info()
		if err != nil || d.Validate() != nil {
			os.Remove(p)
			return nil
		}
		c.byDigest[d] = c.lru.PushFront(&chunkRecord{d: d, size: info.Size()})
		c.size += info.Size()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: scanning chunk cache: %w", err)
	}
	return c, nil
}

func (c *Chunks) path(d digest.Digest) string {
	return filepath.Join(c.dir, d.Algorithm().String(), d.Encoded())
}

// ReadAt reads len(p) bytes at off of the chunk d into p. ok is false when
// the chunk is not cached (or was found corrupt and dropped).
func (c *Chunks) ReadAt(d digest.Digest, p []byte, off int64) (n int, ok bool, err error) {
	if d.Validate() != nil {
		return 0, false, fmt.Errorf("chunk %q: invalid digest", d)
	}
	c.mu.Lock()
	el, ok := c.byDigest[d]
	if !ok {
		c.mu.Unlock()
		return 0, false, nil
	}
	c.lru.MoveToFront(el)
	rec := el.Value.(*chunkRecord)
	verified := rec.verified
	c.mu.Unlock()

	f, err := os.Open(c.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		c.forget(d)
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	if !verified {
		got, err := hashFile(f, d)
		if err != nil {
			return 0, false, err
		}
		if got != d {
			slog.Warn("chunk cache: corrupt chunk removed", "digest", d, "content", got)
			c.drop(d)
			return 0, false, nil
		}
		c.mu.Lock()
		rec.verified = true
		c.mu.Unlock()
	}
	n, err = f.ReadAt(p, off)
	if n == len(p) {
		err = nil
	}
	return n, err == nil, err
}

// Has reports whether chunk d is cached.
func (c *Chunks) Has(d digest.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.byDigest[d]
	return ok
}

// Put stores data as chunk d. data must already be verified against d by
// the caller (it was, to be served); Put stores it without hashing again.
func (c *Chunks) Put(d digest.Digest, data []byte) error {
	if d.Validate() != nil {
		return fmt.Errorf("chunk %q: invalid digest", d)
	}
	if c.Has(d) {
		return nil
	}
	if err := writeAtomic(c.tmp, c.path(d), data, false); err != nil {
		return fmt.Errorf("chunk cache: %w", err)
	}
	c.mu.Lock()
	if _, ok := c.byDigest[d]; !ok {
		c.byDigest[d] = c.lru.PushFront(&chunkRecord{d: d, size: int64(len(data)), verified: true})
		c.size += int64(len(data))
	}
	victims := c.evictLocked()
	c.mu.Unlock()
	for _, v := range victims {
		os.Remove(c.path(v))
	}
	return nil
}

func (c *Chunks) evictLocked() []digest.Digest {
	var victims []digest.Digest
	for c.size > c.limit && c.lru.Len() > 1 {
		el := c.lru.Back()
		rec := el.Value.(*chunkRecord)
		c.lru.Remove(el)
		delete(c.byDigest, rec.d)
		c.size -= rec.size
		victims = append(victims, rec.d)
	}
	return victims
}

func (c *Chunks) forget(d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byDigest[d]; ok {
		c.size -= el.Value.(*chunkRecord).size
		c.lru.Remove(el)
		delete(c.byDigest, d)
	}
}

func (c *Chunks) drop(d digest.Digest) {
	c.forget(d)
	os.Remove(c.path(d))
}

// Stats returns the cache's current size.
func (c *Chunks) Stats() ChunkStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return ChunkStats{Chunks: c.lru.Len(), Bytes: c.size, Limit: c.limit}
}
