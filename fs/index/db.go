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
	bolt "go.etcd.io/bbolt"
)

// On-disk form of indexes, in the store's metadata database:
//
//	layers/<key>/info           JSON Info
//	layers/<key>/e/<ino>        JSON Entry                    (ino: 8 bytes big endian)
//	layers/<key>/d/<ino><name>  child ino                     (directory entries, sorted by name)
//	layers/<key>/c/<ino><off>   JSON Chunk                    (off: file offset, 8 bytes big endian)
//	layers/<key>/b/<boff><ino><off>  JSON Chunk               (the same chunks in blob order, for read-ahead)
//
// Everything a mount needs is looked up here on demand, so a mounted layer
// costs memory for the inodes the kernel holds, not for the image.
var (
	bucketLayers   = []byte("layers")
	keyInfo        = []byte("info")
	bucketEntries  = []byte("e")
	bucketDirents  = []byte("d")
	bucketChunks   = []byte("c")
	bucketByBlob   = []byte("b")
	errNotInBucket = errors.New("not in index")
)

// Info describes a stored index.
type Info struct {
	Format   string    `json:"format"`
	BlobSize int64     `json:"blobSize"`
	Entries  int       `json:"entries"`
	Chunks   int       `json:"chunks"`
	Created  time.Time `json:"created"`
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
	eb, err := lb.CreateBucket(bucketEntries)
	if err != nil {
		return err
	}
	eb.FillPercent = 1 // keys are appended in order
	for i := range idx.Entries {
		v, err := json.Marshal(&idx.Entries[i])
		if err != nil {
			return err
		}
		if err := eb.Put(u64(idx.Entries[i].Ino), v); err != nil {
			return err
		}
	}
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
			if err := db.Put(append(u64(parent), k.Name...), u64(k.Ino)); err != nil {
				return err
			}
		}
	}
	cb, err := lb.CreateBucket(bucketChunks)
	if err != nil {
		return err
	}
	cb.FillPercent = 1
	var byBlob [][2][]byte
	nchunks := 0
	for _, ino := range sortedKeys(idx.Chunks) {
		chunks := slices.SortedFunc(slices.Values(idx.Chunks[ino]), func(a, b Chunk) int { return cmp.Compare(a.FileOffset, b.FileOffset) })
		for _, c := range chunks {
			v, err := json.Marshal(&c)
			if err != nil {
				return err
			}
			if err := cb.Put(binary.BigEndian.AppendUint64(u64(ino), uint64(c.FileOffset)), v); err != nil {
				return err
			}
			bk := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(u64(uint64(c.BlobOffset)), ino), uint64(c.FileOffset))
			byBlob = append(byBlob, [2][]byte{bk, v})
			nchunks++
		}
	}
	bb, err := lb.CreateBucket(bucketByBlob)
	if err != nil {
		return err
	}
	bb.FillPercent = 1
	slices.SortFunc(byBlob, func(a, b [2][]byte) int { return bytes.Compare(a[0], b[0]) })
	for _, kv := range byBlob {
		if err := bb.Put(kv[0], kv[1]); err != nil {
			return err
		}
	}
	info, err := json.Marshal(Info{Format: idx.Format, BlobSize: blobSize, Entries: len(idx.Entries), Chunks: nchunks, Created: time.Now().UTC()})
	if err != nil {
		return err
	}
	return lb.Put(keyInfo, info)
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
// memory; every call is a short read transaction.
type Layer struct {
	db   *bolt.DB
	key  []byte
	info Info
}

// Open returns the view of the index stored under key, or an error
// wrapping errdefs.ErrNotFound when there is none.
func Open(db *bolt.DB, key string) (*Layer, error) {
	l := &Layer{db: db, key: []byte(key)}
	err := l.view(func(lb *bolt.Bucket) error {
		return json.Unmarshal(lb.Get(keyInfo), &l.info)
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Info returns what was recorded when the index was saved.
func (l *Layer) Info() Info { return l.info }

func (l *Layer) view(fn func(lb *bolt.Bucket) error) error {
	return l.db.View(func(tx *bolt.Tx) error {
		layers := tx.Bucket(bucketLayers)
		if layers == nil {
			return fmt.Errorf("index %s: %w", l.key, errdefs.ErrNotFound)
		}
		lb := layers.Bucket(l.key)
		if lb == nil {
			return fmt.Errorf("index %s: %w", l.key, errdefs.ErrNotFound)
		}
		return fn(lb)
	})
}

// Entry returns the entry with inode number ino.
func (l *Layer) Entry(ino uint64) (Entry, error) {
	var e Entry
	err := l.view(func(lb *bolt.Bucket) error {
		v := lb.Bucket(bucketEntries).Get(u64(ino))
		if v == nil {
			return fmt.Errorf("inode %d: %w", ino, errNotInBucket)
		}
		return json.Unmarshal(v, &e)
	})
	return e, err
}

// Lookup returns the entry named name in directory parent. found is false
// when there is no such name.
func (l *Layer) Lookup(parent uint64, name string) (e Entry, found bool, err error) {
	err = l.view(func(lb *bolt.Bucket) error {
		v := lb.Bucket(bucketDirents).Get(append(u64(parent), name...))
		if v == nil {
			return nil
		}
		ev := lb.Bucket(bucketEntries).Get(v)
		if ev == nil {
			return fmt.Errorf("directory entry %q of inode %d: inode %d %w", name, parent, binary.BigEndian.Uint64(v), errNotInBucket)
		}
		found = true
		return json.Unmarshal(ev, &e)
	})
	return e, found, err
}

// ReadDir returns the names in directory ino, sorted.
func (l *Layer) ReadDir(ino uint64) ([]Dirent, error) {
	var out []Dirent
	err := l.view(func(lb *bolt.Bucket) error {
		prefix := u64(ino)
		c := lb.Bucket(bucketDirents).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			out = append(out, Dirent{Name: string(k[8:]), Ino: binary.BigEndian.Uint64(v)})
		}
		return nil
	})
	return out, err
}

// Chunks returns the chunks of file ino that overlap [off, off+n).
func (l *Layer) Chunks(ino uint64, off, n int64) ([]Chunk, error) {
	var out []Chunk
	err := l.view(func(lb *bolt.Bucket) error {
		prefix := u64(ino)
		c := lb.Bucket(bucketChunks).Cursor()
		k, v := c.Seek(binary.BigEndian.AppendUint64(u64(ino), uint64(off)))
		// The chunk holding off usually starts before it.
		if k == nil || !bytes.HasPrefix(k, prefix) || binary.BigEndian.Uint64(k[8:]) > uint64(off) {
			if pk, pv := c.Prev(); pk != nil && bytes.HasPrefix(pk, prefix) {
				k, v = pk, pv
			} else if k == nil {
				return nil
			}
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var ch Chunk
			if err := json.Unmarshal(v, &ch); err != nil {
				return err
			}
			if ch.FileOffset >= off+n {
				break
			}
			if ch.End() > off {
				out = append(out, ch)
			}
		}
		return nil
	})
	return out, err
}

// BlobChunk is a chunk with the inode of the file it belongs to.
type BlobChunk struct {
	Ino uint64
	Chunk
}

// ChunksInBlob returns the chunks whose compressed streams start in
// [from, to) of the blob, in blob order, at most max of them.
func (l *Layer) ChunksInBlob(from, to int64, max int) ([]BlobChunk, error) {
	var out []BlobChunk
	err := l.view(func(lb *bolt.Bucket) error {
		bb := lb.Bucket(bucketByBlob)
		if bb == nil {
			return nil // stored by an older version: no read-ahead
		}
		c := bb.Cursor()
		for k, v := c.Seek(u64(uint64(from))); k != nil && len(out) < max; k, v = c.Next() {
			if len(k) != 24 || int64(binary.BigEndian.Uint64(k)) >= to {
				break
			}
			bc := BlobChunk{Ino: binary.BigEndian.Uint64(k[8:])}
			if err := json.Unmarshal(v, &bc.Chunk); err != nil {
				return err
			}
			out = append(out, bc)
		}
		return nil
	})
	return out, err
}
