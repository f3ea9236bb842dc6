package store

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store is the local state of one Strata installation.
type Store struct {
	root   string
	db     *bolt.DB
	Blobs  *Blobs
	Chunks *Chunks
	Files  *Files
}

// Options tune a Store. The zero value is usable.
type Options struct {
	// ChunkCacheBytes bounds the chunk cache and the whole-file cache
	// together; least recently used chunks and files are evicted past it.
	// 0 means 10 GiB.
	ChunkCacheBytes int64

	// unpacked stores every chunk as a file of its own (for tests of
	// chunk files).
	unpacked bool
}

// DefaultChunkCacheBytes is the chunk cache bound when Options leave it 0.
const DefaultChunkCacheBytes = 10 << 30

// initialMmapSize is the database's first memory map: 1 GiB of address
// space (not memory) where pointers are 64-bit.
const initialMmapSize = (strconv.IntSize / 64) << 30

// Open opens (creating when needed) the store at root. Only one process may
// hold a store open: the database is locked, and a second Open fails after
// a short wait instead of blocking forever.
func Open(root string, opt Options) (*Store, error) {
	for _, d := range []string{"blobs/sha256", "chunks/sha256", "files/sha256", "packs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	if err := clearDir(filepath.Join(root, "tmp")); err != nil {
		return nil, fmt.Errorf("store: clearing ingest dir: %w", err)
	}
	db, err := bolt.Open(filepath.Join(root, "meta.db"), 0o600, &bolt.Options{
		Timeout: 5 * time.Second,
		// bbolt maps the file and, when a write outgrows the map, maps it
		// again after copying every key and value the transaction holds
		// out of the old map; it doubles the map each time. Saving the
		// index of a 50,000-file layer did that a dozen times (most of the
		// save's CPU, seconds after a mount), and each remap waits for all
		// reads in flight. Address space is cheap on 64-bit hosts.
		InitialMmapSize: initialMmapSize,
	})
	if err != nil {
		return nil, fmt.Errorf("store: opening %s: %w (is another strata daemon running?)", filepath.Join(root, "meta.db"), err)
	}
	s := &Store{root: root, db: db}
	if err := s.AdviseReadAround(); err != nil {
		slog.Warn("store: index reads stay one page at a time", "error", err)
	}
	s.Blobs = &Blobs{dir: filepath.Join(root, "blobs"), tmp: filepath.Join(root, "tmp")}
	limit := opt.ChunkCacheBytes
	if limit <= 0 {
		limit = DefaultChunkCacheBytes
	}
	// A restarted daemon keeps its caches; nothing in them is trusted
	// until this process has hashed it.
	lru := newCacheLRU(limit, filepath.Join(root, "chunks"), filepath.Join(root, "files"), filepath.Join(root, "packs"))
	for _, k := range []cacheKind{kindChunk, kindFile} {
		if err := lru.scan(k); err != nil {
			db.Close()
			return nil, err
		}
	}
	if opt.unpacked {
		lru.packSize = 0
	}
	if err := lru.scanPacks(); err != nil {
		db.Close()
		return nil, err
	}
	// A limit lowered since the last process (cache_size) holds at once,
	// not from the next write on.
	lru.mu.Lock()
	victims := lru.evictLocked()
	lru.mu.Unlock()
	lru.remove(victims)
	tmp := filepath.Join(root, "tmp")
	s.Chunks = &Chunks{tmp: tmp, lru: lru}
	s.Files = &Files{tmp: tmp, chunks: s.Chunks, lru: lru}
	return s, nil
}

// Root returns the directory the store lives in.
func (s *Store) Root() string { return s.root }

// DB returns the metadata database. Each package keeps its records in its
// own top-level bucket.
func (s *Store) DB() *bolt.DB { return s.db }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func clearDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
