package fs

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/stratafs/strata/remote"
)

// layerBlob is where a mounted layer's compressed bytes come from: the
// registry (a *remote.BlobReader), or the store for a layer this machine
// made itself (a commit), which then needs no network at all.
type layerBlob interface {
	Blob
	ReaderAt(ctx context.Context) io.ReaderAt
	Stats() remote.Stats
	Close() error
}

var (
	_ layerBlob = (*remote.BlobReader)(nil)
	_ layerBlob = (*localBlob)(nil)
)

// localBlob reads a layer blob from a file of the store. Its bytes are
// trusted no more than the registry's: every chunk is verified against the
// index as it is decoded, the same as fetched ones.
type localBlob struct {
	f    *os.File
	size int64
}

// openLocalBlob opens the store's copy of layer d, which must be size
// bytes long.
func openLocalBlob(f *os.File, size, want int64, d digest.Digest) (*localBlob, error) {
	if size != want {
		f.Close()
		return nil, fmt.Errorf("local copy of layer %s has %d bytes, the manifest says %d", d, size, want)
	}
	return &localBlob{f: f, size: size}, nil
}

func (b *localBlob) Size() int64                              { return b.size }
func (b *localBlob) ReaderAt(ctx context.Context) io.ReaderAt { return b.f }
func (b *localBlob) Stats() remote.Stats                      { return remote.Stats{} }
func (b *localBlob) Close() error                             { return b.f.Close() }

// FetchEach implements Blob.
func (b *localBlob) FetchEach(ctx context.Context, ranges []remote.Range, got func(i int, data []byte)) error {
	for i, r := range ranges {
		if err := ctx.Err(); err != nil {
			return err
		}
		if r.Off < 0 || r.Len < 0 || r.Off+r.Len > b.size {
			return fmt.Errorf("range %d+%d outside the local blob's %d bytes", r.Off, r.Len, b.size)
		}
		buf := make([]byte, r.Len)
		if _, err := b.f.ReadAt(buf, r.Off); err != nil {
			return err
		}
		got(i, buf)
	}
	return nil
}
