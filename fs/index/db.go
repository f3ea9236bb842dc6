package index

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// On-disk form of indexes, in the store's metadata database:
//
//	layers/<key>/info           JSON Info, with Version = indexVersion
//	layers/<key>/e/<ino>        Entry of a non-directory      (ino: 8 bytes big endian)
//	layers/<key>/D/<ino>        Entry of a directory
//	layers/<key>/d/<ino><name>  child ino, child Type         (directory entries, sorted by name; 8 bytes BE + 1 byte)
//	layers/<key>/c/<ino><off>   Chunk                         (off: file offset, 8 bytes big endian)
//	layers/<key>/b/<boff><ino><off>  Chunk                    (the same chunks in blob order, for read-ahead)
//	layers/<key>/k/<in>         Checkpoint of a gzip layer    (in: its byte offset, 8 bytes big endian; inflate's encoding)
//
// Entry and Chunk values are in the binary form of codec.go. Info stays
// JSON: it is read once per Open.
//
// Directories' entries have a bucket of their own so that a walk of the
// tree (find, du) reads only D and d: a directory is a few percent of the
// entries, and with every entry in one bucket, looking up each subdirectory
// of a walk read a page of e per directory, most of e over a cold page cache.
//
// Everything a mount needs is looked up here on demand, one read
// transaction per call, so a mounted layer costs memory for the inodes the
// kernel holds, not for the image.
var (
	bucketLayers   = []byte("layers")
	keyInfo        = []byte("info")
	bucketEntries  = []byte("e")
	bucketDirs     = []byte("D")
	bucketDirents  = []byte("d")
	bucketChunks   = []byte("c")
	bucketByBlob   = []byte("b")
	bucketCPs      = []byte("k")
	errNotInBucket = errors.New("not in index")
)

// indexVersion is the layout described above. Open converts an index of
// an older layout it knows (see convert) and answers any other version as
// not found, so that callers rebuild it from the layer and Save replaces
// it. Version 1 stored JSON entries and chunks and
// recorded no version (it reads as 0); version 2 kept directories' entries
// in e.
const indexVersion = 3

// direntSize is the size of a directory entry's value: ino and type.
const direntSize = 8 + 1

// Info describes a stored index.
type Info struct {
	Version  int       `json:"version"` // indexVersion of the stored layout
	Format   Format    `json:"format"`
	BlobSize int64     `json:"blobSize"`
	Entries  int       `json:"entries"`
	Chunks   int       `json:"chunks"`
	Created  time.Time `json:"created"`
	// HasXattrs is whether any entry has an xattr (opaque directories
	// do). Without any, a mount can refuse xattr requests wholesale so
	// the kernel stops asking.
	HasXattrs bool `json:"hasXattrs"`
	// PrefetchEnd is Index.PrefetchEnd.
	PrefetchEnd int64 `json:"prefetchEnd,omitempty"`
	// Unpacked and Packed are Index.Unpacked and Index.Packed.
	Unpacked digest.Digest `json:"unpacked,omitempty"`
	Packed   Format        `json:"packed,omitempty"`
	// TOCDigest is Index.TOCDigest.
	TOCDigest digest.Digest `json:"tocDigest,omitempty"`
	// Source is Index.Source.
	Source digest.Digest `json:"source,omitempty"`
	// Checkpoints is len(Index.Checkpoints): a gzip layer's.
	Checkpoints int `json:"checkpoints,omitempty"`
	// Files is the number of regular files, and LargeBytes the bytes of
	// those of LargeFileSize or more: what a mount weighs to choose how
	// the kernel opens files. Both are 0 in an index stored before they
	// were counted.
	Files      int   `json:"files,omitempty"`
	LargeBytes int64 `json:"largeBytes,omitempty"`
	// Plain is whether the layer has no whiteouts (0/0 character
	// devices) and no overlayfs xattrs (opaque directories): its tree
	// alone is then the tree of an image made of it alone, with no
	// overlayfs needed to hide anything. False in an index stored
	// before it was counted.
	Plain bool `json:"plain,omitempty"`
	// Implicit lists the directories the layer holds only as parents of
	// its entries, with no entry of their own ("." for a root without a
	// "./" entry), not opaque, in path order: a sequential unpack leaves
	// such a directory as a lower layer made it, where overlayfs would
	// show this layer's defaults (see ImplicitDirs). At most MaxImplicit;
	// ImplicitMore says there were more. Empty in an index stored before
	// they were listed.
	Implicit     []string `json:"implicit,omitempty"`
	ImplicitMore bool     `json:"implicitMore,omitempty"`
}

// LargeFileSize is the size from which Info counts a file as large: one
// FUSE read carries 1 MiB, so a smaller file is read in one request.
const LargeFileSize = 1 << 20

// count adds e to what info counts of entries; Plain starts true and is
// cleared by the first overlayfs marker.
func (info *Info) count(e *Entry) {
	info.HasXattrs = info.HasXattrs || len(e.Xattrs) > 0
	if e.Type == TypeChar && e.DevMajor == 0 && e.DevMinor == 0 {
		info.Plain = false // overlayfs takes any 0/0 device for a whiteout
	}
	for k := range e.Xattrs {
		if strings.HasPrefix(k, overlayXattrPrefix) {
			info.Plain = false
		}
	}
	if e.Type == TypeReg {
		info.Files++
		if e.Size >= LargeFileSize {
			info.LargeBytes += e.Size
		}
	}
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// Save persists idx under key (a layer's digest) in one transaction,
// replacing any index stored there before.
func Save(db *bolt.DB, key string, idx *Index, blobSize int64) error {
	return db.Update(func(tx *bolt.Tx) error {
		layers, err := tx.CreateBucketIfNotExists(bucketLayers)
		if err != nil {
			return err
		}
		if layers.Bucket([]byte(key)) != nil {
			if err := layers.DeleteBucket([]byte(key)); err != nil {
				return err
			}
		}
		lb, err := layers.CreateBucket([]byte(key))
		if err != nil {
			return err
		}
		return saveInto(lb, idx, blobSize)
	})
}

func saveInto(lb *bolt.Bucket, idx *Index, blobSize int64) error {
	info := Info{Version: indexVersion, Format: idx.Format, BlobSize: blobSize, Entries: len(idx.Entries), Created: time.Now().UTC(), PrefetchEnd: idx.PrefetchEnd,
		Unpacked: idx.Unpacked, Packed: idx.Packed, TOCDigest: idx.TOCDigest, Source: idx.Source, Plain: true}
	eb, err := lb.CreateBucket(bucketEntries)
	if err != nil {
		return err
	}
	dirs, err := lb.CreateBucket(bucketDirs)
	if err != nil {
		return err
	}
	eb.FillPercent, dirs.FillPercent = 1, 1 // keys are appended in order
	for i := range idx.Entries {
		e := &idx.Entries[i]
		info.count(e)
		b := eb
		if e.Type == TypeDir {
			b = dirs
		}
		if err := b.Put(u64(e.Ino), appendEntry(nil, e)); err != nil {
			return err
		}
	}
	info.Implicit, info.ImplicitMore = ImplicitDirs(idx)
	if err := saveDirents(lb, idx); err != nil {
		return err
	}
	if info.Chunks, err = saveChunks(lb, idx); err != nil {
		return err
	}
	if info.Checkpoints, err = saveCheckpoints(lb, idx); err != nil {
		return err
	}
	v, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return lb.Put(keyInfo, v)
}

func saveDirents(lb *bolt.Bucket, idx *Index) error {
	db, err := lb.CreateBucket(bucketDirents)
	if err != nil {
		return err
	}
	// Keys go in ascending order: bbolt inserts into a node's sorted key
	// array, so random order costs a memmove per key, quadratic in total.
	db.FillPercent = 1
	for _, parent := range sortedKeys(idx.Children) {
		kids := slices.SortedFunc(slices.Values(idx.Children[parent]), func(a, b Dirent) int { return strings.Compare(a.Name, b.Name) })
		for _, k := range kids {
			if err := db.Put(append(u64(parent), k.Name...), append(u64(k.Ino), byte(k.Type))); err != nil {
				return err
			}
		}
	}
	return nil
}

// saveChunks stores the chunks by file and by blob offset, and returns
// how many there are.
func saveChunks(lb *bolt.Bucket, idx *Index) (int, error) {
	cb, err := lb.CreateBucket(bucketChunks)
	if err != nil {
		return 0, err
	}
	cb.FillPercent = 1
	var byBlob [][2][]byte
	for _, ino := range sortedKeys(idx.Chunks) {
		chunks := slices.SortedFunc(slices.Values(idx.Chunks[ino]), func(a, b Chunk) int { return cmp.Compare(a.FileOffset, b.FileOffset) })
		for _, c := range chunks {
			v := appendChunk(nil, &c)
			if err := cb.Put(binary.BigEndian.AppendUint64(u64(ino), uint64(c.FileOffset)), v); err != nil {
				return 0, err
			}
			bk := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(u64(uint64(c.BlobOffset)), ino), uint64(c.FileOffset))
			byBlob = append(byBlob, [2][]byte{bk, v})
		}
	}
	bb, err := lb.CreateBucket(bucketByBlob)
	if err != nil {
		return 0, err
	}
	bb.FillPercent = 1
	slices.SortFunc(byBlob, func(a, b [2][]byte) int { return bytes.Compare(a[0], b[0]) })
	for _, kv := range byBlob {
		if err := bb.Put(kv[0], kv[1]); err != nil {
			return 0, err
		}
	}
	return len(byBlob), nil
}

// saveCheckpoints stores a gzip layer's checkpoints by byte offset.
func saveCheckpoints(lb *bolt.Bucket, idx *Index) (int, error) {
	if len(idx.Checkpoints) == 0 {
		return 0, nil
	}
	kb, err := lb.CreateBucket(bucketCPs)
	if err != nil {
		return 0, err
	}
	kb.FillPercent = 1
	for _, cp := range idx.Checkpoints {
		v, err := cp.AppendBinary(nil) // bolt keeps the value until the commit
		if err != nil {
			return 0, err
		}
		if err := kb.Put(u64(uint64(cp.In)), v); err != nil {
			return 0, err
		}
	}
	return len(idx.Checkpoints), nil
}

func sortedKeys[V any](m map[uint64]V) []uint64 {
	return slices.Sorted(maps.Keys(m))
}

// Delete removes the index stored under key, if any.
func Delete(db *bolt.DB, key string) error {
	return db.Update(func(tx *bolt.Tx) error {
		layers := tx.Bucket(bucketLayers)
		if layers == nil || layers.Bucket([]byte(key)) == nil {
			return nil
		}
		return layers.DeleteBucket([]byte(key))
	})
}

// Layer is a read-only view of a stored index. It holds no entries in
// memory; every call is one short read transaction.
type Layer struct {
	db   *bolt.DB
	key  []byte
	info Info
}

// Open returns the view of the index stored under key, or an error
// wrapping errdefs.ErrNotFound when there is none or when it was stored
// in another layout (indexVersion), which the caller rebuilds as if it
// were missing.
func Open(db *bolt.DB, key string) (*Layer, error) {
	l := &Layer{db: db, key: []byte(key)}
	tx, lb, err := l.begin()
	if err != nil {
		return nil, err
	}
	defer rollback(tx)
	v := lb.Get(keyInfo)
	if v == nil {
		return nil, fmt.Errorf("index %s has no info: %w", key, errdefs.ErrNotFound)
	}
	if err := json.Unmarshal(v, &l.info); err != nil {
		return nil, fmt.Errorf("index %s: info: %w", key, err)
	}
	if l.info.Version != indexVersion {
		rollback(tx)
		converted, cerr := convert(db, l.key, l.info.Version)
		if !converted {
			return nil, fmt.Errorf("index %s: stored in layout version %d, this build reads %d: %w",
				key, l.info.Version, indexVersion, errors.Join(errdefs.ErrNotFound, cerr))
		}
		return Open(db, key)
	}
	return l, nil
}

// convert brings the index stored under key from an older layout this
// build knows to indexVersion, in place, every inode number and chunk
// kept: a daemon taking over the mounts of an older one must answer the
// inode numbers the kernel already holds, which a rebuild from the layer
// could not promise across a layout change. It reports false, with the
// index untouched, for a layout it does not know or values that do not
// decode as that layout says; the caller then rebuilds the index.
//
// Known: version 2, whose directories' entries were in e, not D (the
// binary codec is the same). Version 1 (JSON values) predates takeovers
// and is rebuilt.
func convert(db *bolt.DB, key []byte, from int) (bool, error) {
	if from != 2 {
		return false, nil
	}
	errUnknown := errors.New("not a version 2 index")
	err := db.Update(func(tx *bolt.Tx) error {
		layers := tx.Bucket(bucketLayers)
		if layers == nil {
			return errUnknown
		}
		lb := layers.Bucket(key)
		if lb == nil {
			return errUnknown
		}
		var info Info
		if err := json.Unmarshal(lb.Get(keyInfo), &info); err != nil {
			return err
		}
		if info.Version == indexVersion {
			return nil // converted meanwhile by another caller
		}
		entries := lb.Bucket(bucketEntries)
		if info.Version != 2 || entries == nil || lb.Bucket(bucketDirs) != nil {
			return errUnknown
		}
		dirs, err := lb.CreateBucket(bucketDirs)
		if err != nil {
			return err
		}
		var moved [][]byte
		err = entries.ForEach(func(k, v []byte) error {
			e, err := decodeEntry(v)
			if err != nil {
				return fmt.Errorf("%w: %w", errUnknown, err)
			}
			if e.Type == TypeDir {
				moved = append(moved, k)
				return dirs.Put(k, v)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range moved {
			if err := entries.Delete(k); err != nil {
				return err
			}
		}
		info.Version = indexVersion
		v, err := json.Marshal(info)
		if err != nil {
			return err
		}
		return lb.Put(keyInfo, v)
	})
	if err != nil {
		return false, err
	}
	return true, nil
}

// Info returns what was recorded when the index was saved.
func (l *Layer) Info() Info { return l.info }

// begin starts the one read transaction of a call and finds the layer's
// bucket. The caller rolls tx back.
func (l *Layer) begin() (*bolt.Tx, *bolt.Bucket, error) {
	tx, err := l.db.Begin(false)
	if err != nil {
		return nil, nil, err
	}
	lb := tx.Bucket(bucketLayers)
	if lb != nil {
		lb = lb.Bucket(l.key)
	}
	if lb == nil {
		rollback(tx)
		return nil, nil, fmt.Errorf("index %s: %w", l.key, errdefs.ErrNotFound)
	}
	return tx, lb, nil
}

// rollback ends a read transaction, which cannot fail in a way that
// matters to a reader that is done with it.
func rollback(tx *bolt.Tx) { _ = tx.Rollback() }

// bucket returns the sub-bucket name of a layer's bucket. Save writes them
// all, so a missing one is a damaged index.
func (l *Layer) bucket(lb *bolt.Bucket, name []byte) (*bolt.Bucket, error) {
	if b := lb.Bucket(name); b != nil {
		return b, nil
	}
	return nil, fmt.Errorf("index %s has no bucket %q: %w", l.key, name, ErrInvalid)
}

// Entry returns the entry with inode number ino.
func (l *Layer) Entry(ino uint64) (Entry, error) {
	tx, lb, err := l.begin()
	if err != nil {
		return Entry{}, err
	}
	defer rollback(tx)
	var key [8]byte
	binary.BigEndian.PutUint64(key[:], ino)
	for _, name := range [][]byte{bucketEntries, bucketDirs} {
		b, err := l.bucket(lb, name)
		if err != nil {
			return Entry{}, err
		}
		if v := b.Get(key[:]); v != nil {
			return decodeEntry(v)
		}
	}
	return Entry{}, fmt.Errorf("inode %d: %w", ino, errNotInBucket)
}

// Lookup returns the entry named name in directory parent. found is false
// when there is no such name.
func (l *Layer) Lookup(parent uint64, name string) (e Entry, found bool, err error) {
	if len(name) > MaxNameLen {
		return Entry{}, false, nil // Validate refuses longer names
	}
	tx, lb, err := l.begin()
	if err != nil {
		return Entry{}, false, err
	}
	defer rollback(tx)
	db, err := l.bucket(lb, bucketDirents)
	if err != nil {
		return Entry{}, false, err
	}
	var buf [8 + MaxNameLen]byte
	binary.BigEndian.PutUint64(buf[:8], parent)
	v := db.Get(append(buf[:8], name...))
	if v == nil {
		return Entry{}, false, nil
	}
	if len(v) != direntSize {
		return Entry{}, false, fmt.Errorf("directory entry %q of inode %d: %d bytes: %w", name, parent, len(v), ErrInvalid)
	}
	bucket := bucketEntries
	if Type(v[8]) == TypeDir {
		bucket = bucketDirs
	}
	eb, err := l.bucket(lb, bucket)
	if err != nil {
		return Entry{}, false, err
	}
	ev := eb.Get(v[:8])
	if ev == nil {
		return Entry{}, false, fmt.Errorf("directory entry %q of inode %d: inode %d %w", name, parent, binary.BigEndian.Uint64(v), errNotInBucket)
	}
	e, err = decodeEntry(ev)
	return e, err == nil, err
}

// ReadDir returns the names in directory ino, sorted, with their types.
func (l *Layer) ReadDir(ino uint64) ([]Dirent, error) {
	tx, lb, err := l.begin()
	if err != nil {
		return nil, err
	}
	defer rollback(tx)
	db, err := l.bucket(lb, bucketDirents)
	if err != nil {
		return nil, err
	}
	var prefix [8]byte
	binary.BigEndian.PutUint64(prefix[:], ino)
	c := db.Cursor()
	// A first pass sizes the listing, so that the second makes all names
	// in one allocation: walking the mmapped keys twice is cheaper than
	// allocating each name.
	n, size := 0, 0
	for k, v := c.Seek(prefix[:]); k != nil && bytes.HasPrefix(k, prefix[:]); k, v = c.Next() {
		if len(v) != direntSize {
			return nil, fmt.Errorf("directory entry %q of inode %d: %d bytes: %w", k[8:], ino, len(v), ErrInvalid)
		}
		n, size = n+1, size+len(k)-8
	}
	if n == 0 {
		return nil, nil
	}
	out := make([]Dirent, 0, n)
	var names strings.Builder
	names.Grow(size) // never grows again, so earlier names stay valid
	for k, v := c.Seek(prefix[:]); k != nil && len(out) < n; k, v = c.Next() {
		start := names.Len()
		names.Write(k[8:])
		out = append(out, Dirent{Name: names.String()[start:], Ino: binary.BigEndian.Uint64(v), Type: Type(v[8])})
	}
	return out, nil
}

// Chunks returns the chunks of file ino that overlap [off, off+n).
func (l *Layer) Chunks(ino uint64, off, n int64) ([]Chunk, error) {
	tx, lb, err := l.begin()
	if err != nil {
		return nil, err
	}
	defer rollback(tx)
	cb, err := l.bucket(lb, bucketChunks)
	if err != nil {
		return nil, err
	}
	var key [16]byte
	binary.BigEndian.PutUint64(key[:8], ino)
	binary.BigEndian.PutUint64(key[8:], uint64(off))
	prefix := key[:8]
	c := cb.Cursor()
	k, v := c.Seek(key[:])
	// The chunk holding off usually starts before it.
	if k == nil || !bytes.HasPrefix(k, prefix) || binary.BigEndian.Uint64(k[8:]) > uint64(off) {
		if pk, pv := c.Prev(); pk != nil && bytes.HasPrefix(pk, prefix) {
			k, v = pk, pv
		} else if k == nil {
			return nil, nil
		}
	}
	var out []Chunk
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		ch, err := decodeChunk(v)
		if err != nil {
			return nil, err
		}
		if ch.FileOffset >= off+n {
			break
		}
		if ch.End() > off {
			out = append(out, ch)
		}
	}
	return out, nil
}

// Checkpoint returns the checkpoint of a gzip layer at byte in of the
// blob: the one a chunk of EncodingDeflate names by its BlobOffset.
func (l *Layer) Checkpoint(in int64) (Checkpoint, error) {
	tx, lb, err := l.begin()
	if err != nil {
		return Checkpoint{}, err
	}
	defer rollback(tx)
	kb, err := l.bucket(lb, bucketCPs)
	if err != nil {
		return Checkpoint{}, err
	}
	v := kb.Get(u64(uint64(in)))
	if v == nil {
		return Checkpoint{}, Invalidf("no checkpoint at byte %d: %v", in, errNotInBucket)
	}
	var cp Checkpoint
	if err := cp.UnmarshalBinary(v); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint at byte %d: %w", ErrInvalid, in, err)
	}
	if cp.In != in {
		return Checkpoint{}, Invalidf("checkpoint stored at byte %d says %d", in, cp.In)
	}
	return cp, nil
}

// BlobChunk is a chunk with the inode of the file it belongs to.
type BlobChunk struct {
	Ino uint64
	Chunk
}

// ChunksInBlob returns the chunks whose compressed streams start in
// [from, to) of the blob, in blob order, at most max of them.
func (l *Layer) ChunksInBlob(from, to int64, max int) ([]BlobChunk, error) {
	tx, lb, err := l.begin()
	if err != nil {
		return nil, err
	}
	defer rollback(tx)
	bb, err := l.bucket(lb, bucketByBlob)
	if err != nil {
		return nil, err
	}
	var start [8]byte
	binary.BigEndian.PutUint64(start[:], uint64(from))
	var out []BlobChunk
	c := bb.Cursor()
	for k, v := c.Seek(start[:]); k != nil && len(out) < max; k, v = c.Next() {
		if len(k) != 24 || int64(binary.BigEndian.Uint64(k)) >= to {
			break
		}
		ch, err := decodeChunk(v)
		if err != nil {
			return nil, err
		}
		out = append(out, BlobChunk{Ino: binary.BigEndian.Uint64(k[8:]), Chunk: ch})
	}
	return out, nil
}
