package fs

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/fs/index"
	"github.com/stratafs/strata/remote"
	"github.com/stratafs/strata/store"
)

// unreachableBlob fails every fetch: a cache-hit benchmark must never
// reach the network, and would stop with an error if it did.
type unreachableBlob struct{}

func (unreachableBlob) Size() int64 { return 1 << 40 }
func (unreachableBlob) FetchEach(context.Context, []remote.Range, func(int, []byte)) error {
	return errors.New("cache-hit benchmark fetched from the blob")
}

// BenchmarkContentReadCacheHit is the warm path of a FUSE READ: 128 KiB
// (the kernel's usual read size) from a 64 MiB file whose 4 MiB chunks are
// all in the chunk cache.
// cachedFile is a one-file layer index whose file of n random chunks of
// chunk bytes each has all its chunks in st's chunk cache.
type cachedFile struct {
	st    *store.Store
	idx   *index.Index
	file  index.Entry
	data  []byte
	parts []store.Part // the chunks in file order
}

func newCachedFile(b *testing.B, chunk, n int, seed uint64) *cachedFile {
	st, err := store.Open(b.TempDir(), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	mt := time.Unix(1700000000, 0).UTC()
	cf := &cachedFile{st: st, data: make([]byte, chunk*n)}
	cf.file = index.Entry{Ino: 2, Type: index.TypeReg, Mode: 0o644, Size: int64(chunk * n), ModTime: mt, Nlink: 1}
	cf.idx = &index.Index{Format: "bench",
		Entries:  []index.Entry{{Ino: 1, Type: index.TypeDir, Mode: 0o755, ModTime: mt, Nlink: 2}, cf.file},
		Children: map[uint64][]index.Dirent{1: {{Name: "f", Ino: 2, Type: index.TypeReg}}},
		Chunks:   map[uint64][]index.Chunk{}}
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range cf.data {
		cf.data[i] = byte(rng.Uint32())
	}
	for i := range n {
		data := cf.data[i*chunk : (i+1)*chunk]
		d := digest.FromBytes(data)
		if err := st.Chunks.Put(d, data); err != nil {
			b.Fatal(err)
		}
		cf.idx.Chunks[2] = append(cf.idx.Chunks[2], index.Chunk{FileOffset: int64(i * chunk), Length: int64(chunk),
			BlobOffset: int64(i * chunk), BlobLength: int64(chunk), Encoding: index.EncodingGzip, Digest: d})
		cf.parts = append(cf.parts, store.Part{Digest: d, Length: int64(chunk)})
	}
	return cf
}

// BenchmarkContentReadCacheHit is the warm path of a FUSE READ: 128 KiB
// (the kernel's usual read size) from a 64 MiB file whose 4 MiB chunks are
// all in the chunk cache.
func BenchmarkContentReadCacheHit(b *testing.B) {
	const chunk, chunks = 4 << 20, 16
	cf := newCachedFile(b, chunk, chunks, 1)
	st, idx, file, want := cf.st, cf.idx, cf.file, cf.data
	if err := index.Save(st.DB(), "sha256:bench", idx, chunk*chunks); err != nil {
		b.Fatal(err)
	}
	l, err := index.Open(st.DB(), "sha256:bench")
	if err != nil {
		b.Fatal(err)
	}
	c := NewContent("sha256:bench", l, unreachableBlob{}, st.Chunks)
	ctx := context.Background()
	dst := make([]byte, 128<<10)
	b.SetBytes(int64(len(dst)))
	b.ReportAllocs()
	off := int64(0)
	for b.Loop() {
		n, err := c.ReadAt(ctx, file, dst, off)
		if err != nil || n != len(dst) {
			b.Fatalf("ReadAt %d: %d %v", off, n, err)
		}
		if off == 0 && !bytes.Equal(dst, want[:len(dst)]) {
			b.Fatal("cache returned other bytes")
		}
		off = (off + int64(len(dst))) % file.Size
	}
}
