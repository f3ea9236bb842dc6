package inflate

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"math/bits"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

// bitWriter writes DEFLATE bits, to make streams no encoder would.
type bitWriter struct {
	buf []byte
	acc uint64
	n   uint
}

// bits writes the n low bits of v, least significant first.
func (w *bitWriter) bits(v uint64, n uint) *bitWriter {
	w.acc |= v << w.n
	w.n += n
	for w.n >= 8 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc >>= 8
		w.n -= 8
	}
	return w
}

// code writes an n-bit Huffman code, most significant bit first.
func (w *bitWriter) code(c uint64, n uint) *bitWriter {
	return w.bits(bits.Reverse64(c)>>(64-n), n)
}

// member returns the bits written, padded to a byte, as a gzip member with
// a trailer for no output.
func (w *bitWriter) member() []byte {
	if w.n > 0 {
		w.bits(0, 8-w.n)
	}
	out := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255}
	out = append(out, w.buf...)
	return append(out, 0, 0, 0, 0, 0, 0, 0, 0)
}

// fixedLitCode writes a literal/length symbol's fixed Huffman code.
func (w *bitWriter) fixedLit(sym int) *bitWriter {
	switch {
	case sym < 144:
		return w.code(uint64(0x30+sym), 8)
	case sym < 256:
		return w.code(uint64(0x190+sym-144), 9)
	case sym < 280:
		return w.code(uint64(sym-256), 7)
	default:
		return w.code(uint64(0xc0+sym-280), 8)
	}
}

// dynamicHeader writes a dynamic block header whose code length code
// gives symbol 1 one bit (code 0) and symbols 0 and 18 two (10, 11).
func dynamicHeader(nlit, ndist int) *bitWriter {
	w := new(bitWriter)
	w.bits(1, 1).bits(2, 2)
	w.bits(uint64(nlit-257), 5).bits(uint64(ndist-1), 5).bits(19-4, 4)
	for _, sym := range codeLengthOrder {
		n := uint64(0)
		switch sym {
		case 1:
			n = 1
		case 0, 18:
			n = 2
		}
		w.bits(n, 3)
	}
	return w
}

// TestCorrupt decodes streams that break RFC 1951 in each way the decoder
// checks: each is ErrCorrupt, and compress/gzip refuses it too.
func TestCorrupt(t *testing.T) {
	zeros := func(w *bitWriter, n int) *bitWriter { // n (11 to 138) zero lengths
		return w.code(3, 2).bits(uint64(n-11), 7)
	}
	cases := map[string][]byte{
		"reserved block type": new(bitWriter).bits(1, 1).bits(3, 2).member(),
		"stored length":       new(bitWriter).bits(1, 1).bits(0, 2).bits(0, 5).bits(5, 16).bits(5, 16).member(),
		"literal 286":         new(bitWriter).bits(1, 1).bits(1, 2).fixedLit(286).member(),
		"distance 30":         new(bitWriter).bits(1, 1).bits(1, 2).fixedLit('a').fixedLit(257).code(30, 5).member(),
		"distance too far":    new(bitWriter).bits(1, 1).bits(1, 2).fixedLit('a').fixedLit(257).code(1, 5).member(),
		"distance before any": new(bitWriter).bits(1, 1).bits(1, 2).fixedLit(257).code(0, 5).member(),
		"too many lengths":    new(bitWriter).bits(1, 1).bits(2, 2).bits(30, 5).bits(0, 5).bits(0, 4).member(),
		"too many distances":  new(bitWriter).bits(1, 1).bits(2, 2).bits(0, 5).bits(30, 5).bits(0, 4).member(),
		"over-subscribed code length code": func() []byte {
			w := new(bitWriter).bits(1, 1).bits(2, 2).bits(0, 5).bits(0, 5).bits(15, 4)
			for range 19 {
				w.bits(1, 3)
			}
			return w.member()
		}(),
		"incomplete code length code": func() []byte {
			w := new(bitWriter).bits(1, 1).bits(2, 2).bits(0, 5).bits(0, 5).bits(0, 4)
			return w.bits(2, 3).bits(2, 3).bits(0, 3).bits(0, 3).member()
		}(),
		"repeat before any length": func() []byte {
			// Code length code: symbols 0 and 16, one bit each.
			w := new(bitWriter).bits(1, 1).bits(2, 2).bits(0, 5).bits(0, 5).bits(0, 4)
			w.bits(1, 3).bits(0, 3).bits(0, 3).bits(1, 3)
			return w.code(1, 1).bits(0, 2).member()
		}(),
		"over-subscribed literal code": func() []byte {
			w := dynamicHeader(257, 1)
			for range 258 {
				w.code(0, 1)
			}
			return w.member()
		}(),
		"no end of block": func() []byte {
			w := dynamicHeader(257, 1)
			w.code(0, 1).code(0, 1)
			zeros(zeros(w, 138), 117)
			return w.code(0, 1).member()
		}(),
		"lengths past the header": func() []byte {
			w := dynamicHeader(257, 1)
			return zeros(zeros(zeros(w, 138), 117), 11).member()
		}(),
		"invalid code of an incomplete code": func() []byte {
			// Lengths: 256 (end of block) one bit, every other zero: the
			// code 1 is invalid.
			w := dynamicHeader(257, 1)
			zeros(zeros(w, 138), 118)
			w.code(0, 1).code(2, 2) // 256: 1; the distance: 0
			return w.code(1, 1).member()
		}(),
		"distance with no distance code": func() []byte {
			// Lengths: 256 and 257 one bit each, no distance code.
			w := dynamicHeader(258, 1)
			zeros(zeros(w, 138), 118)
			w.code(0, 1).code(0, 1).code(2, 2)
			return w.code(1, 1).bits(0, 8).member()
		}(),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := gunzip(data); err == nil {
				t.Errorf("compress/gzip takes it")
			}
			_, _, err := decodeAll(data, 0)
			t.Log(err)
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("got %v, want ErrCorrupt", err)
			}
		})
	}
}

// TestCorruptTrailer is a member whose CRC-32 or ISIZE is wrong.
func TestCorruptTrailer(t *testing.T) {
	good := gzipLevel(t, textBytes(100000, 12), gzip.DefaultCompression)
	for _, at := range []int{8, 4} { // from the end: CRC-32, ISIZE
		data := bytes.Clone(good)
		data[len(data)-at]++
		if _, _, err := decodeAll(data, 0); !errors.Is(err, ErrChecksum) {
			t.Errorf("trailer byte -%d changed: %v, want ErrChecksum", at, err)
		}
	}
	// Resume checks the trailer with the CRC the checkpoint carries.
	_, cps, _ := decodeAll(good, 0)
	cp := cps[len(cps)-1]
	cp.CRC++
	zr, err := Resume(bytes.NewReader(good[cp.In:]), cp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(zr); !errors.Is(err, ErrChecksum) {
		t.Errorf("resumed with a wrong CRC: %v, want ErrChecksum", err)
	}
	// What follows the last member must be another member.
	data := append(bytes.Clone(good), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	if _, _, err := decodeAll(data, 0); !errors.Is(err, ErrHeader) {
		t.Errorf("zeros after the member: %v, want ErrHeader", err)
	}
}

// TestTruncated decodes prefixes of streams (every one near the ends, where
// the headers and trailers are): each is io.ErrUnexpectedEOF after a prefix
// of the output.
func TestTruncated(t *testing.T) {
	text := textBytes(20000, 13)
	r := rand.New(rand.NewPCG(13, 13))
	for _, level := range []int{gzip.NoCompression, gzip.BestSpeed, gzip.DefaultCompression} {
		data := gzipMembers(t, text[:3000], text[3000:])
		if level != gzip.NoCompression {
			data = gzipLevel(t, text, level)
		}
		for n := 1; n < len(data); n++ {
			if n > 300 && n < len(data)-300 {
				n += r.IntN(50)
			}
			got, _, err := decodeAll(data[:n], 0)
			if _, gzErr := gunzip(data[:n]); err == nil && gzErr == nil {
				continue // the end of a member
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("level %d, %d of %d bytes: %v, want io.ErrUnexpectedEOF", level, n, len(data), err)
			}
			if !bytes.HasPrefix(text, got) {
				t.Fatalf("level %d, %d of %d bytes: output is not a prefix", level, n, len(data))
			}
		}
	}
}

// TestFlipped changes bytes of valid streams one at a time: the decoder
// gives what compress/gzip gives when it takes the stream, and an error
// when it does not.
func TestFlipped(t *testing.T) {
	input := append(textBytes(20000, 14), randomBytes(3000, 14)...)
	r := rand.New(rand.NewPCG(14, 14))
	for _, level := range []int{gzip.NoCompression, gzip.HuffmanOnly, gzip.BestSpeed, gzip.DefaultCompression} {
		good := gzipLevel(t, input, level)
		for range 300 {
			data := bytes.Clone(good)
			at := r.IntN(len(data))
			data[at] ^= byte(1 + r.IntN(255))
			want, wantErr := gunzip(data)
			got, _, err := decodeAll(data, 0)
			switch {
			case wantErr == nil && (err != nil || !bytes.Equal(got, want)):
				t.Fatalf("level %d, byte %d: %v; compress/gzip decodes it", level, at, err)
			case wantErr != nil && err == nil:
				t.Fatalf("level %d, byte %d: no error; compress/gzip: %v", level, at, wantErr)
			}
		}
	}
}

// TestSourceErrors are the source's errors and stalls, returned by Read.
func TestSourceErrors(t *testing.T) {
	data := gzipLevel(t, textBytes(200000, 15), gzip.DefaultCompression)
	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader(data[:len(data)/2]), iotest.ErrReader(boom))
	zr, err := NewReader(r, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(zr); !errors.Is(err, boom) {
		t.Errorf("source error: %v, want boom", err)
	}

	stall := io.MultiReader(bytes.NewReader(data[:len(data)/2]), stalled{})
	zr, err = NewReader(stall, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(zr); !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("stalled source: %v, want io.ErrNoProgress", err)
	}

	// One byte at a time, and data with io.EOF.
	for _, r := range []io.Reader{iotest.OneByteReader(bytes.NewReader(data)), iotest.DataErrReader(bytes.NewReader(data))} {
		zr, err := NewReader(r, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(zr); err != nil || len(got) != 200000 {
			t.Errorf("%d bytes, %v", len(got), err)
		}
	}
}

// stalled is a source that never gives anything.
type stalled struct{}

func (stalled) Read([]byte) (int, error) { return 0, nil }
