package inflate

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"testing"
)

// fuzzLimit bounds the output a fuzz input may make (a small input can
// expand a thousandfold).
const fuzzLimit = 4 << 20

// readLimited reads at most fuzzLimit bytes from r, and says whether r
// ended (io.EOF) within them.
func readLimited(r io.Reader) ([]byte, error) {
	out, err := io.ReadAll(io.LimitReader(r, fuzzLimit+1))
	if err == nil && len(out) > fuzzLimit {
		err = errTooLong
	}
	return out, err
}

var errTooLong = errors.New("output over the fuzz limit")

// FuzzReader compares the decoder with compress/gzip on any input: where
// compress/gzip decodes it, the decoder gives the same bytes, and where
// the decoder does, so does compress/gzip (but for a header string longer
// than compress/gzip takes); then resuming from a few of its checkpoints
// gives the rest of the output. It never panics or hangs.
func FuzzReader(f *testing.F) {
	text := textBytes(3000, 30)
	for level := gzip.HuffmanOnly; level <= gzip.BestCompression; level++ {
		f.Add(gzipLevel(f, text, level))
	}
	f.Add(gzipLevel(f, randomBytes(2000, 30), gzip.DefaultCompression))
	f.Add(append(gzipLevel(f, text[:100], gzip.BestSpeed), gzipLevel(f, nil, gzip.BestSpeed)...))
	f.Add(new(bitWriter).bits(1, 1).bits(1, 2).fixedLit('a').fixedLit(257).code(0, 5).fixedLit(256).member())
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Name, zw.Comment, zw.Extra = "n", "c", []byte("e")
	_, _ = zw.Write(text[:500])
	_ = zw.Close()
	f.Add(buf.Bytes())
	f.Add([]byte{})
	f.Add([]byte{0x1f, 0x8b, 8, 0x1e, 0, 0, 0, 0, 0, 0, 0, 0, 'x', 0, 'y', 0, 0, 0})

	f.Fuzz(func(t *testing.T, data []byte) {
		var want []byte
		zr, wantErr := gzip.NewReader(bytes.NewReader(data))
		if wantErr == nil {
			want, wantErr = readLimited(zr)
		}
		var cps []Checkpoint
		var got []byte
		our, err := NewReader(bytes.NewReader(data), 0, func(cp Checkpoint) error {
			if len(cps) < 50 {
				cps = append(cps, cp)
			}
			return nil
		})
		type sample struct{ out, in int64 }
		var samples []sample
		if err == nil {
			our.OnProgress(100, func(out, in int64) {
				if len(samples) < 200 {
					samples = append(samples, sample{out, in})
				}
			})
			got, err = readLimited(our)
		}
		switch {
		case wantErr == nil && err != nil:
			t.Fatalf("compress/gzip decodes %d bytes; the decoder: %v", len(want), err)
		case wantErr == nil && !bytes.Equal(got, want):
			t.Fatalf("output differs from compress/gzip's at %d", firstDiff(got, want))
		case err == nil && wantErr != nil && !(errors.Is(wantErr, gzip.ErrHeader) && our.longestString >= 512):
			t.Fatalf("the decoder decodes %d bytes; compress/gzip: %v", len(got), wantErr)
		case errors.Is(wantErr, errTooLong) || err != nil:
			return
		}
		checkKeptBoundaries(t, data, got)
		for i, cp := range cps {
			if i%7 != 0 && i != len(cps)-1 {
				continue
			}
			zr, err := Resume(bytes.NewReader(data[cp.In:]), cp)
			if err != nil {
				t.Fatal(err)
			}
			tail, err := readLimited(zr)
			if err != nil || !bytes.Equal(tail, got[cp.Out:]) {
				t.Fatalf("resumed from %+v: %v, or not the rest of the output", brief(cp), err)
			}
			// The bytes progress reported for a point after the
			// checkpoint decode the output up to it (a few points, from
			// the first and the last checkpoint).
			if i != 0 && i != len(cps)-1 {
				continue
			}
			for j, s := range samples {
				if s.out <= cp.Out || s.in < cp.In || j%max(1, len(samples)/4) != 0 {
					continue
				}
				zr, err := Resume(bytes.NewReader(data[cp.In:s.in]), cp)
				if err != nil {
					t.Fatal(err)
				}
				part, err := readLimited(zr)
				if err != nil || int64(len(part)) < s.out-cp.Out || !bytes.Equal(part, got[cp.Out:cp.Out+int64(len(part))]) {
					t.Fatalf("resumed from %+v up to byte %d: %d bytes (%v), want the %d up to %d", brief(cp), s.in, len(part), err, s.out-cp.Out, s.out)
				}
			}
		}
	})
}

// FuzzCheckpointParse feeds UnmarshalBinary any bytes: it refuses them
// with ErrCheckpoint or gives a valid checkpoint whose encoding parses
// back to it. It never panics.
func FuzzCheckpointParse(f *testing.F) {
	for _, cp := range sampleCheckpoints() {
		enc, err := cp.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	f.Add([]byte{1, 0, 9, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		var cp Checkpoint
		if err := cp.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrCheckpoint) {
				t.Fatalf("error %v is not ErrCheckpoint", err)
			}
			return
		}
		if err := cp.Validate(); err != nil {
			t.Fatalf("parsed an invalid checkpoint: %v", err)
		}
		enc, err := cp.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var again Checkpoint
		if err := again.UnmarshalBinary(enc); err != nil || !sameCheckpoint(cp, again) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// checkKeptBoundaries decodes data again, keeping its boundaries and
// taking some of them after the fact (see CheckpointBefore): each is in
// the range asked for, and resuming from it gives the rest of out.
func checkKeptBoundaries(t *testing.T, data, out []byte) {
	got, taken := decodeKeeping(t, data, 1<<20, 97, 50, 20)
	if !bytes.Equal(got, out) {
		t.Fatalf("decoding with boundaries kept: output differs at %d", firstDiff(got, out))
	}
	for _, cp := range taken {
		zr, err := Resume(bytes.NewReader(data[cp.In:]), cp)
		if err != nil {
			t.Fatal(err)
		}
		tail, err := readLimited(zr)
		if err != nil || !bytes.Equal(tail, out[cp.Out:]) {
			t.Fatalf("resumed from kept %+v: %v, or not the rest of the output", brief(cp), err)
		}
	}
}
