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

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// ErrUnverified is returned by the Open methods of the caches for content
// that is cached but not yet verified by this process. Verify it (it
// reads the whole file, so callers do it off the hot path) and open again.
var ErrUnverified = errors.New("cached content not verified yet")

// cacheKind says which cache an entry belongs to.
type cacheKind uint8

const (
	kindChunk cacheKind = iota
	kindFile
	kindPack // a file of small chunks (see packs.go)
	numKinds
)

func (k cacheKind) String() string {
	switch k {
	case kindFile:
		return "whole file"
	case kindPack:
		return "pack"
	}
	return "chunk"
}

// cacheKey names one cached file. Chunks and whole files have their own
// key spaces: a chunk's bytes could, in principle, hash to a file's key.
type cacheKey struct {
	kind cacheKind
	d    digest.Digest
}

type cacheEntry struct {
	key      cacheKey
	size     int64
	verified bool  // hashed by this process, or written by it
	pack     *pack // of a kindPack entry
}

// cacheLRU accounts the chunk and whole-file caches against one size
// limit, least recently used first out, whatever its kind: a whole file is
// a second copy of chunks, so it must count against the same disk budget.
// Each cache keeps its files under its own directory, as
// <dir>/<algorithm>/<hex>.
type cacheLRU struct {
	limit int64
	dirs  [numKinds]string

	mu     sync.Mutex
	size   int64
	order  *list.List // of *cacheEntry, front = most recent
	byKey  map[cacheKey]*list.Element
	counts [numKinds]int

	// Packs (see packs.go): the packed chunks by SHA-256, the packs by
	// ID, the one this process appends to, and the size each takes.
	packed   map[[32]byte]*packedChunk
	packs    map[uint64]*pack
	active   *pack
	nextPack uint64
	packSize int64
}

func newCacheLRU(limit int64, chunkDir, fileDir, packDir string) *cacheLRU {
	l := &cacheLRU{limit: limit, order: list.New(), byKey: map[cacheKey]*list.Element{},
		packed: map[[32]byte]*packedChunk{}, packs: map[uint64]*pack{}, packSize: packSizeFor(limit)}
	l.dirs[kindChunk], l.dirs[kindFile], l.dirs[kindPack] = chunkDir, fileDir, packDir
	return l
}

func (l *cacheLRU) path(k cacheKey) string {
	return filepath.Join(l.dirs[k.kind], k.d.Algorithm().String(), k.d.Encoded())
}

// scan adds the files a previous process left in kind's directory, all
// unverified. Files that cannot be entries are removed.
func (l *cacheLRU) scan(kind cacheKind) error {
	err := filepath.WalkDir(l.dirs[kind], func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		d := digest.NewDigestFromEncoded(digest.Algorithm(filepath.Base(filepath.Dir(p))), de.Name())
		info, err := de.Info()
		if err != nil || d.Validate() != nil {
			os.Remove(p)
			return nil
		}
		l.mu.Lock()
		l.insertLocked(cacheEntry{key: cacheKey{kind, d}, size: info.Size()})
		l.mu.Unlock()
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: scanning %s cache: %w", kind, err)
	}
	return nil
}

func (l *cacheLRU) insertLocked(e cacheEntry) {
	if el, ok := l.byKey[e.key]; ok {
		// Rewritten by this process (by rename over it): same content,
		// now known good.
		el.Value.(*cacheEntry).verified = el.Value.(*cacheEntry).verified || e.verified
		return
	}
	l.byKey[e.key] = l.order.PushFront(&e)
	l.size += e.size
	l.counts[e.key.kind]++
}

func (l *cacheLRU) has(k cacheKey) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.byKey[k]
	return ok
}

// add records a file just renamed into place (written, so verified) and
// evicts what no longer fits.
func (l *cacheLRU) add(k cacheKey, size int64) {
	l.mu.Lock()
	l.insertLocked(cacheEntry{key: k, size: size, verified: true})
	victims := l.evictLocked()
	l.mu.Unlock()
	l.remove(victims)
}

// growLocked adds n bytes to entry k (a pack being appended to).
func (l *cacheLRU) growLocked(k cacheKey, n int64) {
	if el, ok := l.byKey[k]; ok {
		el.Value.(*cacheEntry).size += n
		l.size += n
	}
}

// evictLocked forgets the least recently used entries until the cache
// fits its limit, and returns them for remove; the caller holds mu.
func (l *cacheLRU) evictLocked() []cacheEntry {
	var victims []cacheEntry
	// Never the newest: a cache smaller than one entry still serves it.
	for l.size > l.limit && l.order.Len() > 1 {
		e := *l.order.Back().Value.(*cacheEntry)
		l.removeLocked(e.key)
		victims = append(victims, e)
	}
	return victims
}

// remove removes the files of evicted entries. An open file survives its
// removal, so a reader (or a passthrough backing file) of a victim goes
// on reading it; a pack is closed first, under its lock, so that no read
// of it is in flight.
func (l *cacheLRU) remove(victims []cacheEntry) {
	for _, v := range victims {
		if v.pack != nil {
			l.closePack(v.pack)
			continue
		}
		os.Remove(l.path(v.key))
	}
}

func (l *cacheLRU) removeLocked(k cacheKey) {
	el, ok := l.byKey[k]
	if !ok {
		return
	}
	e := el.Value.(*cacheEntry)
	if e.pack != nil {
		l.dropPackLocked(e.pack)
	}
	l.size -= e.size
	l.counts[k.kind]--
	l.order.Remove(el)
	delete(l.byKey, k)
}

func (l *cacheLRU) forget(k cacheKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.removeLocked(k)
}

// drop forgets k and removes its file.
func (l *cacheLRU) drop(k cacheKey) {
	l.forget(k)
	os.Remove(l.path(k))
}

// open opens the cached file k read-only and marks it recently used. A
// file this process has not verified yet is checked with check first
// (an error wrapping ErrDigestMismatch means corrupt: the file is removed
// and reported not found), or, when check is nil, not opened:
// ErrUnverified. A file that is not cached is an error wrapping
// errdefs.ErrNotFound.
func (l *cacheLRU) open(k cacheKey, check func(*os.File) error) (*os.File, error) {
	l.mu.Lock()
	el, ok := l.byKey[k]
	if !ok {
		l.mu.Unlock()
		return nil, fmt.Errorf("%s %s: %w", k.kind, k.d, errdefs.ErrNotFound)
	}
	l.order.MoveToFront(el)
	verified := el.Value.(*cacheEntry).verified
	l.mu.Unlock()

	if !verified && check == nil {
		return nil, fmt.Errorf("%s %s: %w", k.kind, k.d, ErrUnverified)
	}
	f, err := os.Open(l.path(k))
	if errors.Is(err, fs.ErrNotExist) {
		l.forget(k) // evicted meanwhile
		return nil, fmt.Errorf("%s %s: %w", k.kind, k.d, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if verified {
		return f, nil
	}
	if err := check(f); err != nil {
		f.Close()
		if errors.Is(err, ErrDigestMismatch) {
			slog.Warn("store: corrupt cache file removed", "kind", k.kind.String(), "digest", k.d, "error", err)
			l.drop(k)
			return nil, fmt.Errorf("%s %s: %w", k.kind, k.d, errors.Join(err, errdefs.ErrNotFound))
		}
		return nil, err
	}
	l.mu.Lock()
	if el, ok := l.byKey[k]; ok {
		el.Value.(*cacheEntry).verified = true
	}
	l.mu.Unlock()
	return f, nil
}

// CacheStats describes the chunk and whole-file caches, which share one
// size limit.
type CacheStats struct {
	Chunks int // packed ones included
	Files  int
	Packs  int
	Bytes  int64 // chunks and whole files
	Limit  int64
}

func (l *cacheLRU) stats() CacheStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return CacheStats{Chunks: l.counts[kindChunk] + len(l.packed), Files: l.counts[kindFile], Packs: l.counts[kindPack], Bytes: l.size, Limit: l.limit}
}
