package index

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
)

// fuzzDecodeBudget bounds how many chunks one fuzz input decodes, so a
// TOC of many chunks cannot make one input slow.
const fuzzDecodeBudget = 32

// fuzzSeedTOCs are TOC JSONs: every hostile case, every case of names
// replaced or whited out in their own layer, plus valid ones.
func fuzzSeedTOCs(f testing.TB) [][]byte {
	var seeds [][]byte
	for _, tc := range hostileCases(f) {
		seeds = append(seeds, tc.toc)
	}
	for _, tc := range replaceCases(f) {
		seeds = append(seeds, tc.toc)
	}
	d := digest.FromString("x").String()
	seeds = append(seeds,
		[]byte(`{"version":1,"entries":[{"name":"./","type":"dir","mode":493},{"name":"a/b","type":"reg","size":3,"offset":10,"chunkDigest":"`+d+`"},`+
			`{"name":"l","type":"hardlink","linkName":"a/b"},{"name":"a/.wh.c","type":"reg"},{"name":"a/.wh..wh..opq","type":"reg"}]}`),
		[]byte(`{"version":1,"entries":[{"name":"f","type":"reg","size":20,"offset":5,"chunkSize":10,"chunkDigest":"`+d+`"},`+
			`{"name":"f","type":"chunk","offset":5,"innerOffset":10,"chunkOffset":10,"chunkDigest":"`+d+`"}]}`),
	)
	return seeds
}

// checkParsed is what every fuzz target asserts about an index the
// reader accepted: it validates, and decoding its chunks never panics
// and never returns bytes that fail their digest.
func checkParsed(t *testing.T, idx *Index, blob []byte) {
	if err := idx.Validate(int64(len(blob))); err != nil {
		t.Fatalf("accepted index does not validate: %v", err)
	}
	budget := fuzzDecodeBudget
	for _, chunks := range idx.Chunks {
		for _, c := range chunks {
			if budget--; budget < 0 {
				return
			}
			if c.Length > 1<<20 {
				continue // cannot decode from a fuzz-sized blob; only costs an allocation
			}
			out, err := DecodeChunk(c, blob[c.BlobOffset:c.BlobOffset+c.BlobLength], nil)
			if err == nil && (int64(len(out)) != c.Length || digest.FromBytes(out) != c.Digest) {
				t.Fatalf("chunk %+v decoded to %d unverified bytes", c, len(out))
			}
		}
	}
}

func FuzzReadEStargz(f *testing.F) {
	small, _ := buildEStargz(f, writeTar(f, fixtureEntries()[:12]))
	f.Add(small)
	for _, js := range fuzzSeedTOCs(f) {
		f.Add(tocBlob(f, make([]byte, 16), js))
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		idx, err := ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob)), "")
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotEStargz) {
				t.Fatalf("error is neither ErrInvalid nor ErrNotEStargz: %v", err)
			}
			return
		}
		checkParsed(t, idx, blob)
	})
}

// FuzzTOCJSON mutates the TOC JSON itself, which FuzzReadEStargz rarely
// reaches through the gzip stream around it.
func FuzzTOCJSON(f *testing.F) {
	for _, js := range fuzzSeedTOCs(f) {
		f.Add(js)
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		blob := tocBlob(t, make([]byte, 64), js)
		idx, err := ReadEStargz(context.Background(), bytes.NewReader(blob), int64(len(blob)), digest.FromBytes(js))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		checkParsed(t, idx, blob)
	})
}

func FuzzDecodeChunk(f *testing.F) {
	content := randomBytes(30, 300)
	for _, enc := range encodings {
		for _, prefix := range [][]byte{nil, []byte("prefix")} {
			c, stored := encoded(f, enc, prefix, content)
			f.Add(stored, uint8(enc), c.Inner, c.Length, []byte(c.Digest))
		}
	}
	f.Add([]byte{}, uint8(EncodingGzip), int64(0), int64(1), []byte(digest.FromString("").String()))
	f.Fuzz(func(t *testing.T, stored []byte, enc uint8, inner, length int64, dgst []byte) {
		// Keep each input cheap: lengths beyond what stored can inflate
		// to are refused by the decoder anyway.
		length %= 1 << 20
		c := Chunk{Length: length, Inner: inner % (1 << 20), Encoding: Encoding(enc), Digest: digest.Digest(dgst), BlobLength: int64(len(stored))}
		out, err := DecodeChunk(c, stored, nil)
		if err != nil {
			if out != nil {
				t.Fatal("bytes returned with an error")
			}
			return
		}
		if int64(len(out)) != c.Length || digest.FromBytes(out) != c.Digest {
			t.Fatalf("returned %d bytes that do not match %s", len(out), c.Digest)
		}
	})
}

func BenchmarkReadEStargz(b *testing.B) {
	const dataLen = 1 << 20
	blob := jtocBlob(b, make([]byte, dataLen), manyEntriesTOC(20000, dataLen))
	ctx := context.Background()
	b.SetBytes(int64(len(blob) - dataLen))
	b.ReportAllocs()
	for b.Loop() {
		idx, err := ReadEStargz(ctx, bytes.NewReader(blob), int64(len(blob)), "")
		if err != nil {
			b.Fatal(err)
		}
		if len(idx.Entries) < 20000 {
			b.Fatalf("%d entries", len(idx.Entries))
		}
	}
}
