package store

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Chunks is the cache of decompressed chunk content, keyed by the digest of
// the chunk's bytes (so identical chunks of different layers are stored
// once), bounded in size with least-recently-used eviction. The bound is
// shared with the whole-file cache (Files).
//
// A chunk file is hashed the first time this process reads it back and is
// trusted until it is evicted; a file that does not match is removed and
// reported as a miss, so a torn or tampered cache costs a refetch, never
// wrong content. For that reason chunk writes are atomic (rename) but not
// fsynced: after a crash a chunk is whole, absent, or caught by that check.
type Chunks struct {
	tmp string
	lru *cacheLRU
}

func chunkKey(d digest.Digest) cacheKey { return cacheKey{kindChunk, d} }

// checkChunk is the verification of a chunk file read back: its bytes
// hash to its name.
func checkChunk(d digest.Digest) func(*os.File) error {
	return func(f *os.File) error {
		got, err := hashFile(f, d)
		if err != nil {
			return err
		}
		if got != d {
			return fmt.Errorf("%w: content is %s", ErrDigestMismatch, got)
		}
		return nil
	}
}

// ReadAt reads len(p) bytes at off of the chunk d into p. ok is false when
// the chunk is not cached (or was found corrupt and dropped).
func (c *Chunks) ReadAt(d digest.Digest, p []byte, off int64) (n int, ok bool, err error) {
	if k, ok := packKey(d); ok {
		if n, found, err := c.lru.readPacked(k, d, p, off); found || err != nil {
			return n, found && err == nil, err
		}
	}
	f, err := c.openVerified(d)
	if errdefs.IsNotFound(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	n, err = f.ReadAt(p, off)
	if n == len(p) {
		err = nil
	}
	return n, err == nil, err
}

// Open opens chunk d read-only, for a caller that reads the file itself
// (a FUSE passthrough backing file, say). It does not hash: a chunk this
// process has not verified yet is ErrUnverified (see Verify); one that is
// not cached, or only packed (it has no file of its own), is an error
// wrapping errdefs.ErrNotFound.
func (c *Chunks) Open(d digest.Digest) (*os.File, error) {
	if d.Validate() != nil {
		return nil, fmt.Errorf("chunk %q: invalid digest", d)
	}
	if k, ok := packKey(d); ok && c.lru.hasPacked(k) {
		return nil, notPackedError(d)
	}
	return c.lru.open(chunkKey(d), nil)
}

// copyTo writes chunk d to w, hashing it first if this process has not.
// A chunk that is not cached is an error wrapping errdefs.ErrNotFound.
func (c *Chunks) copyTo(w *os.File, d digest.Digest) (int64, error) {
	if k, ok := packKey(d); ok {
		if n, found, err := c.lru.copyPacked(w, k, d); found || err != nil {
			return n, err
		}
	}
	src, err := c.openVerified(d)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	// Between two files io.Copy is copy_file_range: no round trip
	// through user space, and shared extents where the filesystem can.
	return io.Copy(w, src)
}

// Verify hashes chunk d unless this process already has. A corrupt chunk
// is removed and reported with an error wrapping ErrDigestMismatch (and
// errdefs.ErrNotFound); a missing one with errdefs.ErrNotFound.
func (c *Chunks) Verify(d digest.Digest) error {
	if k, ok := packKey(d); ok && c.lru.hasPacked(k) {
		if _, ok, err := c.lru.verifiedPacked(k, d); err != nil || ok {
			return err
		}
		return fmt.Errorf("chunk %s: %w", d, errors.Join(ErrDigestMismatch, errdefs.ErrNotFound))
	}
	f, err := c.openVerified(d)
	if err != nil {
		return err
	}
	return f.Close()
}

// Has reports whether chunk d is cached.
func (c *Chunks) Has(d digest.Digest) bool {
	if k, ok := packKey(d); ok && c.lru.hasPacked(k) {
		return true
	}
	return c.lru.has(chunkKey(d))
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
	if k, ok := packKey(d); ok && len(data) <= packMaxChunk && int64(len(data))*4 <= c.lru.packSize {
		return c.lru.putPacked(k, data)
	}
	if err := writeAtomic(c.tmp, c.lru.path(chunkKey(d)), data, false, 0o600); err != nil {
		return fmt.Errorf("chunk cache: %w", err)
	}
	c.lru.add(chunkKey(d), int64(len(data)))
	return nil
}

// Stats returns the size of the chunk and whole-file caches.
func (c *Chunks) Stats() CacheStats {
	return c.lru.stats()
}

// openVerified opens chunk d, hashing it first if this process has not.
func (c *Chunks) openVerified(d digest.Digest) (*os.File, error) {
	if d.Validate() != nil {
		return nil, fmt.Errorf("chunk %q: invalid digest", d)
	}
	return c.lru.open(chunkKey(d), checkChunk(d))
}
