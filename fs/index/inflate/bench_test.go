package inflate

import (
	"bytes"
	"compress/gzip"
	"io"
	"sync"
	"testing"
)

// loadBenchLayer returns a realistic layer, made once: a tar of GOROOT/src
// up to 64 MiB, gzipped by compress/gzip at its default level, and the
// size of the tar.
func loadBenchLayer(b *testing.B) ([]byte, int) {
	b.Helper()
	layerOnce.Do(func() {
		tarball := tarDir(b, goSrc(b, ""), 64<<20)
		layerSize = len(tarball)
		layerGz = gzipLevel(b, tarball, gzip.DefaultCompression)
	})
	if layerGz == nil {
		b.Skip("no layer")
	}
	return layerGz, layerSize
}

var (
	layerOnce sync.Once
	layerGz   []byte
	layerSize int
)

// BenchmarkDecode compares the decoder, checkpointing every 4 MiB as an
// index build would, with compress/gzip on the same layer.
func BenchmarkDecode(b *testing.B) {
	data, size := loadBenchLayer(b)
	b.Run("inflate", func(b *testing.B) {
		b.SetBytes(int64(size))
		for b.Loop() {
			zr, err := NewReader(bytes.NewReader(data), 4<<20, func(Checkpoint) error { return nil })
			if err != nil {
				b.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, zr); err != nil || n != int64(size) {
				b.Fatal(n, err)
			}
		}
	})
	b.Run("compress-gzip", func(b *testing.B) {
		b.SetBytes(int64(size))
		for b.Loop() {
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				b.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, zr); err != nil || n != int64(size) {
				b.Fatal(n, err)
			}
		}
	})
}
