package store

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Small chunks are packed: appended, in the order they are stored, to a
// shared pack file, with a line in the pack's index file for each, rather
// than written as files of their own. A chunk file costs a path lookup, an
// inode and an open for every read, and a layer of 50,000 small files
// became 50,000 files scattered over the cache directory: reading it back
// after the page cache was dropped cost a random disk read per chunk, and
// the opens and reads were most of the daemon's CPU. Chunks are fetched
// in blob order, which is the order most readers (tar, a walk, a build
// that reads its sources) take them, so a pack is read back sequentially
// and the kernel's read-ahead on the pack serves the next chunks.
//
// A pack is one entry of the cache's LRU, evicted whole: a chunk read from
// it makes the whole pack recent. Packs are never appended to by a later
// process (a crash may have torn their ends): each process starts a new
// one. What an earlier process left is loaded from the index files,
// unverified: each chunk is hashed before this process serves it, as
// chunk files are, and a chunk that does not match is forgotten (its
// bytes stay in the pack until the pack is evicted). A pack and its index
// are written without fsync, like chunk files.
//
// Chunks of other digest algorithms than SHA-256 are never packed.
//
// Layout: packs/<id>.pack (the chunks' bytes, back to back) and
// packs/<id>.idx (packIndexEntry bytes per chunk: offset u64, length u32,
// SHA-256 of the bytes, big-endian; an all-zero entry is a reserved one
// whose writer died, and is skipped).

const (
	// packMaxChunk is the largest chunk packed; bigger ones are files of
	// their own, which FUSE passthrough can use as backing files.
	packMaxChunk = 256 << 10
	// maxPackSize is what a pack takes before the next one starts.
	maxPackSize = 64 << 20
	// packsPerLimit keeps packs to at most this fraction of the cache
	// limit, so that evicting one frees a small part of the cache.
	packsPerLimit = 64
	// packIndexEntry is the size of one chunk's entry in an index file.
	packIndexEntry = 8 + 4 + 32
)

// packSizeFor is the pack size of a cache of limit bytes.
func packSizeFor(limit int64) int64 {
	return min(maxPackSize, limit/packsPerLimit)
}

// packKey is the key of a SHA-256 digest in the packed map; ok is false
// for digests that are never packed.
func packKey(d digest.Digest) (k [32]byte, ok bool) {
	if d.Algorithm() != digest.SHA256 {
		return k, false
	}
	enc := d.Encoded()
	if len(enc) != 64 {
		return k, false
	}
	if _, err := hex.Decode(k[:], []byte(enc)); err != nil {
		return k, false
	}
	return k, true
}

// pack is one pack file and its index.
type pack struct {
	id  uint64
	key cacheKey // its entry in the LRU

	// mu is held for reading by whoever reads or writes f and idx, and
	// for writing by the eviction that closes them.
	mu       sync.RWMutex
	f, idx   *os.File // nil once evicted
	size     int64    // bytes of f written or reserved
	entries  int64    // index entries written or reserved
	chunks   [][32]byte
	writable bool // made by this process: chunks may be added
}

// packedChunk is where a packed chunk's bytes are.
type packedChunk struct {
	p        *pack
	off      int64
	length   int64
	verified bool
}

func packKeyOf(id uint64) cacheKey {
	return cacheKey{kindPack, digest.Digest("pack:" + strconv.FormatUint(id, 10))}
}

func (l *cacheLRU) packPath(id uint64, ext string) string {
	return filepath.Join(l.dirs[kindPack], strconv.FormatUint(id, 10)+ext)
}

// scanPacks loads the packs a previous process left, their chunks all
// unverified. A pack without an index, an index without a pack, and
// anything else in the directory are removed.
func (l *cacheLRU) scanPacks() error {
	dir := l.dirs[kindPack]
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("store: scanning packs: %w", err)
	}
	ids := map[uint64]bool{}
	for _, de := range ents {
		name := de.Name()
		id, err := strconv.ParseUint(strings.TrimSuffix(name, ".pack"), 10, 64)
		if !strings.HasSuffix(name, ".pack") || err != nil || !de.Type().IsRegular() {
			if !strings.HasSuffix(name, ".idx") {
				os.RemoveAll(filepath.Join(dir, name))
			}
			continue
		}
		ids[id] = true
	}
	for _, de := range ents {
		name := de.Name()
		id, err := strconv.ParseUint(strings.TrimSuffix(name, ".idx"), 10, 64)
		if strings.HasSuffix(name, ".idx") && (err != nil || !ids[id]) {
			os.Remove(filepath.Join(dir, name))
		}
	}
	for id := range ids {
		if err := l.loadPack(id); err != nil {
			slog.Warn("store: pack dropped", "pack", id, "error", err)
			os.Remove(l.packPath(id, ".pack"))
			os.Remove(l.packPath(id, ".idx"))
		}
		l.nextPack = max(l.nextPack, id+1)
	}
	return nil
}

// loadPack adds pack id, as an earlier process left it.
func (l *cacheLRU) loadPack(id uint64) error {
	f, err := os.Open(l.packPath(id, ".pack"))
	if err != nil {
		return err
	}
	idx, err := os.ReadFile(l.packPath(id, ".idx"))
	if err != nil {
		f.Close()
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	p := &pack{id: id, key: packKeyOf(id), f: f, size: st.Size(), entries: int64(len(idx) / packIndexEntry)}
	l.mu.Lock()
	defer l.mu.Unlock()
	for b := idx; len(b) >= packIndexEntry; b = b[packIndexEntry:] {
		off := int64(binary.BigEndian.Uint64(b[0:8]))
		n := int64(binary.BigEndian.Uint32(b[8:12]))
		var k [32]byte
		copy(k[:], b[12:44])
		if n == 0 || off < 0 || off+n > p.size {
			continue // reserved and never written, or torn
		}
		if _, ok := l.packed[k]; ok {
			continue
		}
		l.packed[k] = &packedChunk{p: p, off: off, length: n}
		p.chunks = append(p.chunks, k)
	}
	l.packs[id] = p
	l.insertLocked(cacheEntry{key: p.key, size: p.size + int64(len(idx)), pack: p})
	return nil
}

// newPackLocked starts a pack for this process's chunks; the caller
// holds mu.
func (l *cacheLRU) newPackLocked() (*pack, error) {
	id := l.nextPack
	l.nextPack++
	f, err := os.OpenFile(l.packPath(id, ".pack"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	idx, err := os.OpenFile(l.packPath(id, ".idx"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	p := &pack{id: id, key: packKeyOf(id), f: f, idx: idx, writable: true}
	l.packs[id] = p
	l.insertLocked(cacheEntry{key: p.key, pack: p, verified: true})
	return p, nil
}

// hasPacked reports whether chunk k is packed.
func (l *cacheLRU) hasPacked(k [32]byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.packed[k]
	return ok
}

// putPacked appends data, whose SHA-256 is k, to this process's pack.
func (l *cacheLRU) putPacked(k [32]byte, data []byte) error {
	n := int64(len(data))
	l.mu.Lock()
	if _, ok := l.packed[k]; ok {
		l.mu.Unlock()
		return nil
	}
	p := l.active
	if p == nil || p.size+n > l.packSize {
		var err error
		if p, err = l.newPackLocked(); err != nil {
			l.mu.Unlock()
			return fmt.Errorf("chunk cache: new pack: %w", err)
		}
		l.active = p
	}
	off, entry := p.size, p.entries*packIndexEntry
	p.size += n
	p.entries++
	l.growLocked(p.key, n+packIndexEntry)
	l.mu.Unlock()

	var rec [packIndexEntry]byte
	binary.BigEndian.PutUint64(rec[0:8], uint64(off))
	binary.BigEndian.PutUint32(rec[8:12], uint32(n))
	copy(rec[12:], k[:])
	p.mu.RLock()
	err := errEvicted
	if p.f != nil {
		// The bytes before their index entry: a crash between the two
		// leaves an entry-less chunk, never an entry without bytes.
		if _, err = p.f.WriteAt(data, off); err == nil {
			_, err = p.idx.WriteAt(rec[:], entry)
		}
	}
	p.mu.RUnlock()
	if errors.Is(err, errEvicted) {
		return nil // the cache outgrew its limit meanwhile
	}
	if err != nil {
		// Not stored (the disk is full, say): what was counted for it is
		// taken back, and its room in the pack too when nothing was put
		// after it, so that the cache's use stays what it holds.
		l.mu.Lock()
		if l.packs[p.id] == p {
			l.growLocked(p.key, -(n + packIndexEntry))
			if p.size == off+n && p.entries*packIndexEntry == entry+packIndexEntry {
				p.size, p.entries = off, p.entries-1
			}
		}
		l.mu.Unlock()
		return fmt.Errorf("chunk cache: pack %d: %w", p.id, err)
	}
	l.mu.Lock()
	if _, ok := l.packed[k]; !ok && l.packs[p.id] == p {
		l.packed[k] = &packedChunk{p: p, off: off, length: n, verified: true}
		p.chunks = append(p.chunks, k)
	}
	victims := l.evictLocked()
	l.mu.Unlock()
	l.remove(victims)
	return nil
}

var errEvicted = errors.New("evicted")

// packed returns where chunk k is and makes its pack recent.
func (l *cacheLRU) packedAt(k [32]byte) (packedChunk, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pc, ok := l.packed[k]
	if !ok {
		return packedChunk{}, false
	}
	if el, ok := l.byKey[pc.p.key]; ok {
		l.order.MoveToFront(el)
	}
	return *pc, true
}

// readPacked reads len(b) bytes at off of packed chunk k (digest d) into
// b, hashing the chunk first if this process has not. found is false when
// the chunk is not packed (or was found corrupt and forgotten).
func (l *cacheLRU) readPacked(k [32]byte, d digest.Digest, b []byte, off int64) (n int, found bool, err error) {
	pc, ok, err := l.verifiedPacked(k, d)
	if !ok || err != nil {
		return 0, false, err
	}
	if off < 0 || off+int64(len(b)) > pc.length {
		return 0, true, fmt.Errorf("chunk %s: read of %d bytes at %d past its %d bytes", d, len(b), off, pc.length)
	}
	pc.p.mu.RLock()
	defer pc.p.mu.RUnlock()
	if pc.p.f == nil {
		return 0, false, nil // evicted meanwhile
	}
	n, err = pc.p.f.ReadAt(b, pc.off+off)
	if n == len(b) {
		err = nil
	}
	return n, err == nil, err
}

// copyPacked writes packed chunk k (digest d) to w, hashing it first if
// this process has not. found is false when the chunk is not packed.
func (l *cacheLRU) copyPacked(w io.Writer, k [32]byte, d digest.Digest) (n int64, found bool, err error) {
	pc, ok, err := l.verifiedPacked(k, d)
	if !ok || err != nil {
		return 0, false, err
	}
	pc.p.mu.RLock()
	defer pc.p.mu.RUnlock()
	if pc.p.f == nil {
		return 0, false, nil
	}
	n, err = io.Copy(w, io.NewSectionReader(pc.p.f, pc.off, pc.length))
	return n, true, err
}

// verifiedPacked returns where packed chunk k (digest d) is, hashing it
// first if this process has not. ok is false when it is not packed, or
// was found corrupt and forgotten.
func (l *cacheLRU) verifiedPacked(k [32]byte, d digest.Digest) (pc packedChunk, ok bool, err error) {
	if pc, ok = l.packedAt(k); !ok || pc.verified {
		return pc, ok, nil
	}
	ok, err = l.verifyPacked(k, d, pc)
	return pc, ok, err
}

// verifyPacked hashes packed chunk k against d. ok is false when it does
// not match (it is then forgotten) or its pack is gone.
func (l *cacheLRU) verifyPacked(k [32]byte, d digest.Digest, pc packedChunk) (ok bool, err error) {
	pc.p.mu.RLock()
	if pc.p.f == nil {
		pc.p.mu.RUnlock()
		return false, nil
	}
	h := d.Algorithm().Digester()
	_, err = io.Copy(h.Hash(), io.NewSectionReader(pc.p.f, pc.off, pc.length))
	pc.p.mu.RUnlock()
	if err != nil {
		return false, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	cur, still := l.packed[k]
	if !still || cur.p != pc.p || cur.off != pc.off {
		return false, nil
	}
	if got := h.Digest(); got != d {
		slog.Warn("store: corrupt packed chunk forgotten", "digest", d, "pack", pc.p.id, "error",
			fmt.Errorf("%w: content is %s", ErrDigestMismatch, got))
		delete(l.packed, k)
		return false, nil
	}
	cur.verified = true
	return true, nil
}

// dropPackLocked forgets pack p and its chunks; the caller holds mu and
// closes and removes its files (closePack) after unlocking.
func (l *cacheLRU) dropPackLocked(p *pack) {
	for _, k := range p.chunks {
		if pc, ok := l.packed[k]; ok && pc.p == p {
			delete(l.packed, k)
		}
	}
	delete(l.packs, p.id)
	if l.active == p {
		l.active = nil
	}
}

// closePack closes and removes an evicted pack's files.
func (l *cacheLRU) closePack(p *pack) {
	p.mu.Lock()
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
	if p.idx != nil {
		p.idx.Close()
		p.idx = nil
	}
	p.mu.Unlock()
	for _, ext := range []string{".pack", ".idx"} {
		if err := os.Remove(l.packPath(p.id, ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			slog.Warn("store: evicted pack not removed", "pack", p.id, "error", err)
		}
	}
}

// notPackedError is what Open says of a packed chunk: it has no file of
// its own to hand out.
func notPackedError(d digest.Digest) error {
	return fmt.Errorf("chunk %s is packed, not a file of its own: %w", d, errdefs.ErrNotFound)
}
