package index

import (
	"bytes"
	"compress/gzip"
	"errors"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

func gzipBytesLevel(t testing.TB, level int, parts ...[]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if _, err := zw.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipBytes(t testing.TB, parts ...[]byte) []byte {
	return gzipBytesLevel(t, gzip.DefaultCompression, parts...)
}

func zstdBytes(t testing.TB, parts ...[]byte) []byte {
	t.Helper()
	zw, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zw.Close()
	return zw.EncodeAll(bytes.Join(parts, nil), nil)
}

// encoded is a chunk of content stored after prefix in one stream.
func encoded(t testing.TB, enc Encoding, prefix, content []byte) (Chunk, []byte) {
	var stored []byte
	switch enc {
	case EncodingRaw:
		stored = append(bytes.Clone(prefix), content...)
	case EncodingGzip:
		stored = gzipBytes(t, prefix, content)
	case EncodingZstd:
		stored = zstdBytes(t, prefix, content)
	}
	return Chunk{FileOffset: 4096, Length: int64(len(content)), BlobOffset: 1 << 20, BlobLength: int64(len(stored)),
		Inner: int64(len(prefix)), Encoding: enc, Digest: digest.FromBytes(content)}, stored
}

var encodings = []Encoding{EncodingRaw, EncodingGzip, EncodingZstd}

func encName(e Encoding) string { return map[Encoding]string{1: "raw", 2: "gzip", 3: "zstd"}[e] }

func TestDecodeChunk(t *testing.T) {
	content := randomBytes(20, 10000)
	for _, enc := range encodings {
		for _, prefix := range [][]byte{nil, randomBytes(21, 3333)} {
			t.Run(encName(enc), func(t *testing.T) {
				c, stored := encoded(t, enc, prefix, content)
				// Bytes after the chunk are never looked at (a shared stream).
				trailing := append(bytes.Clone(stored), "trailing"...)
				got, err := DecodeChunk(c, trailing, nil)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, content) {
					t.Fatal("content differs")
				}
				dst := make([]byte, 0, 20000)
				got, err = DecodeChunk(c, stored, dst)
				if err != nil || &got[0] != &dst[:1][0] {
					t.Errorf("dst with room was not used (err %v)", err)
				}
			})
		}
	}
}

func TestDecodeChunkSharedStream(t *testing.T) {
	a, b := randomBytes(22, 700), randomBytes(23, 900)
	stored := gzipBytes(t, []byte("tar header padding"), a, b)
	ca := Chunk{Length: 700, Inner: 18, BlobLength: int64(len(stored)), Encoding: EncodingGzip, Digest: digest.FromBytes(a)}
	cb := Chunk{Length: 900, Inner: 718, BlobLength: int64(len(stored)), Encoding: EncodingGzip, Digest: digest.FromBytes(b)}
	for _, tc := range []struct {
		c    Chunk
		want []byte
	}{{ca, a}, {cb, b}} {
		got, err := DecodeChunk(tc.c, stored, nil)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("inner %d: %v", tc.c.Inner, err)
		}
	}
}

func TestDecodeChunkDigestMismatch(t *testing.T) {
	content := randomBytes(24, 5000)
	for _, enc := range encodings {
		t.Run(encName(enc), func(t *testing.T) {
			c, stored := encoded(t, enc, nil, content)
			c.Digest = digest.FromString("something else")
			_, err := DecodeChunk(c, stored, nil)
			if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), c.Digest.String()) {
				t.Errorf("wrong digest: %v", err)
			}
		})
	}
	// A flipped byte in stored (uncompressed) data decodes fine and must
	// be caught by the digest.
	c, raw := encoded(t, EncodingRaw, nil, content)
	raw[100] ^= 1
	if _, err := DecodeChunk(c, raw, nil); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("raw flipped byte: %v", err)
	}
	stored := gzipBytesLevel(t, gzip.NoCompression, content)
	stored[len(stored)/2] ^= 1
	c.Encoding = EncodingGzip
	if _, err := DecodeChunk(c, stored, nil); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("gzip flipped byte: %v", err)
	}
	c, stored = encoded(t, EncodingZstd, nil, content)
	stored[len(stored)/2] ^= 1
	if _, err := DecodeChunk(c, stored, nil); err == nil {
		t.Error("zstd flipped byte: no error")
	}
}

func TestDecodeChunkTruncated(t *testing.T) {
	content := randomBytes(25, 5000)
	for _, enc := range encodings {
		t.Run(encName(enc), func(t *testing.T) {
			c, stored := encoded(t, enc, randomBytes(26, 100), content)
			for _, n := range []int{0, 5, len(stored) / 2, len(stored) - 20} {
				if out, err := DecodeChunk(c, stored[:n], nil); err == nil || out != nil {
					t.Errorf("%d of %d bytes: out %d bytes, err %v", n, len(stored), len(out), err)
				}
			}
			long := c
			long.Inner += int64(len(content)) // past the end of the stream
			if _, err := DecodeChunk(long, stored, nil); err == nil {
				t.Error("inner past the end: no error")
			}
		})
	}
}

func TestDecodeChunkInvalid(t *testing.T) {
	c, stored := encoded(t, EncodingGzip, nil, []byte("data"))
	bad := []func(*Chunk){
		func(c *Chunk) { c.Length = 0 },
		func(c *Chunk) { c.Length = MaxChunkLength + 1 },
		func(c *Chunk) { c.Inner = -1 },
		func(c *Chunk) { c.Digest = "" },
		func(c *Chunk) { c.Digest = "sha256:abc" },
		func(c *Chunk) { c.Encoding = 0 },
		func(c *Chunk) { c.Encoding = 9 },
	}
	for i, mutate := range bad {
		cc := c
		mutate(&cc)
		if _, err := DecodeChunk(cc, stored, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("case %d (%+v): %v", i, cc, err)
		}
	}
}

func BenchmarkDecodeChunk(b *testing.B) {
	content := bytes.Repeat(append(randomBytes(27, 3000), bytes.Repeat([]byte("strata"), 500)...), 100) // ~600 KiB
	for _, enc := range encodings {
		b.Run(encName(enc), func(b *testing.B) {
			c, stored := encoded(b, enc, nil, content)
			dst := make([]byte, len(content))
			b.SetBytes(int64(len(content)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeChunk(c, stored, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
