package inflate

import (
	"bytes"
	"compress/gzip"
	"io"
	"sync"
	"testing"
)

var (
	layerOnce sync.Once
	layerGz   []byte
	layerSize int
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

// drain reads r to its end through a 32 KiB buffer, as both decoders are
// read in the benchmarks (io.Copy would use the decoder's WriteTo, which
// compress/gzip has not).
func drain(b *testing.B, r io.Reader, want int64) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if n != want {
		b.Fatalf("decoded %d bytes, want %d", n, want)
	}
}

// BenchmarkDecode compares the decoder, checkpointing every 4 MiB as an
// index build does, with compress/gzip on one layer. It also reports
// encoding a checkpoint (and the size of the index the checkpoints make,
// as a share of the compressed layer), and decoding a 4 MiB span from a
// checkpoint, as a lazy read does.
func BenchmarkDecode(b *testing.B) {
	data, size := loadBenchLayer(b)
	var cps []Checkpoint
	b.Run("inflate", func(b *testing.B) {
		b.SetBytes(int64(size))
		for b.Loop() {
			cps = cps[:0]
			zr, err := NewReader(bytes.NewReader(data), 4<<20, func(cp Checkpoint) error {
				cps = append(cps, cp)
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			drain(b, zr, int64(size))
		}
	})
	b.Run("encode-checkpoint", func(b *testing.B) {
		if len(cps) == 0 {
			b.Skip("no checkpoints: run with the inflate benchmark")
		}
		var index int
		for b.Loop() {
			index = 0
			for _, cp := range cps {
				enc, err := cp.MarshalBinary()
				if err != nil {
					b.Fatal(err)
				}
				index += len(enc)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(cps)), "ns/checkpoint")
		b.ReportMetric(float64(index)/float64(len(cps)), "B/checkpoint")
		b.ReportMetric(100*float64(index)/float64(len(data)), "index-%")
	})
	b.Run("compress-gzip", func(b *testing.B) {
		b.SetBytes(int64(size))
		for b.Loop() {
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				b.Fatal(err)
			}
			drain(b, zr, int64(size))
		}
	})
	b.Run("resume-span", func(b *testing.B) {
		if len(cps) < 3 {
			b.Skip("no checkpoints")
		}
		cp, next := cps[len(cps)/2], cps[len(cps)/2+1]
		b.SetBytes(next.Out - cp.Out)
		for b.Loop() {
			zr, err := Resume(bytes.NewReader(data[cp.In:next.In+1]), cp)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.CopyN(io.Discard, zr, next.Out-cp.Out); err != nil {
				b.Fatal(err)
			}
		}
	})
}
