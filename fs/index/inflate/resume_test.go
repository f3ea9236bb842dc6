package inflate

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"
)

// checkResume fails unless resuming from every checkpoint, with all the
// compressed bytes from its In on, gives exactly the rest of out, and with
// only the bytes up to the next checkpoint's In (plus slack), gives at
// least the output up to the next checkpoint.
func checkResume(t *testing.T, data, out []byte, cps []Checkpoint) {
	t.Helper()
	for i, cp := range cps {
		zr, err := Resume(bytes.NewReader(data[cp.In:]), cp)
		if err != nil {
			t.Fatalf("checkpoint %d %+v: Resume: %v", i, brief(cp), err)
		}
		got, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("checkpoint %d %+v: %v after %d bytes", i, brief(cp), err, len(got))
		}
		if d := firstDiff(got, out[cp.Out:]); d >= 0 {
			t.Fatalf("checkpoint %d %+v: output differs at %d (lengths %d, %d)", i, brief(cp), d, len(got), len(out[cp.Out:]))
		}

		next := Checkpoint{In: int64(len(data)), Out: int64(len(out))}
		if i+1 < len(cps) {
			next = cps[i+1]
		}
		for _, slack := range []int64{0, 1, 8} {
			end := min(next.In+slack, int64(len(data)))
			if next.Bits > 0 && slack == 0 {
				continue // the byte at next.In holds bits of this span
			}
			zr, err := Resume(bytes.NewReader(data[cp.In:end]), cp)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(zr)
			if err != nil {
				t.Fatalf("span %d +%d: %v after %d bytes", i, slack, err, len(got))
			}
			span := next.Out - cp.Out
			if int64(len(got)) < span || !bytes.Equal(got, out[cp.Out:cp.Out+int64(len(got))]) {
				t.Fatalf("span %d +%d (%+v to %+v): %d bytes, want %d of the output", i, slack, brief(cp), brief(next), len(got), span)
			}
		}
	}
}

// brief is a checkpoint without its window, to print.
func brief(cp Checkpoint) Checkpoint {
	cp.Window = cp.Window[:0:0]
	return cp
}

// TestResumeEveryCheckpoint resumes from every block boundary of streams
// of each kind of block.
func TestResumeEveryCheckpoint(t *testing.T) {
	text := textBytes(600<<10, 3)
	for _, level := range []int{gzip.NoCompression, gzip.HuffmanOnly, gzip.BestSpeed, gzip.DefaultCompression, gzip.BestCompression} {
		data := gzipLevel(t, text, level)
		out, cps := checkSame(t, data, 0)
		if len(cps) < 3 {
			t.Fatalf("level %d: only %d checkpoints", level, len(cps))
		}
		checkResume(t, data, out, cps)
	}
}

// TestProgressIsEnoughToResume: the compressed bytes OnProgress reports
// for an output position decode, resumed from any checkpoint before it, at
// least that much output, and no more input is needed: what an index
// records to fetch a file's part of a span and no further.
func TestProgressIsEnoughToResume(t *testing.T) {
	text := textBytes(900<<10, 5)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"default", gzipLevel(t, text, gzip.DefaultCompression)},
		{"stored", gzipLevel(t, text, gzip.NoCompression)},
		{"fastest", gzipLevel(t, text, gzip.BestSpeed)},
		{"random", gzipLevel(t, randomBytes(700<<10, 9), gzip.DefaultCompression)},
		{"two members", append(gzipLevel(t, text[:300<<10], gzip.DefaultCompression), gzipLevel(t, text[300<<10:], gzip.BestSpeed)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cps []Checkpoint
			zr, err := NewReader(bytes.NewReader(tc.data), 64<<10, func(cp Checkpoint) error { cps = append(cps, cp); return nil })
			if err != nil {
				t.Fatal(err)
			}
			type sample struct{ out, in int64 }
			var samples []sample
			const every = 5000
			stored := tc.name == "stored" || tc.name == "random" // stored blocks: output comes a block at a time
			zr.OnProgress(every, func(out, in int64) {
				last := sample{}
				if len(samples) > 0 {
					last = samples[len(samples)-1]
				}
				// Output passed the next point, but not by more than one
				// back-reference (or a stored block, at most 64 KiB).
				if out < last.out+every || in < last.in || in > int64(len(tc.data)) || out > last.out+every+258 && !stored {
					t.Fatalf("progress %d, %d after %+v", out, in, last)
				}
				samples = append(samples, sample{out, in})
			})
			out, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			if !stored && len(samples) < len(out)/every/2 || len(samples) < 3 || len(cps) < 3 {
				t.Fatalf("%d samples, %d checkpoints for %d bytes: too few", len(samples), len(cps), len(out))
			}
			for _, cp := range cps {
				for _, s := range samples {
					if s.out <= cp.Out || s.out > cp.Out+400<<10 {
						continue
					}
					zr, err := Resume(bytes.NewReader(tc.data[cp.In:s.in]), cp)
					if err != nil {
						t.Fatal(err)
					}
					got, err := io.ReadAll(zr)
					if err != nil {
						t.Fatalf("from %+v to byte %d: %v", brief(cp), s.in, err)
					}
					if want := s.out - cp.Out; int64(len(got)) < want || !bytes.Equal(got, out[cp.Out:cp.Out+int64(len(got))]) {
						t.Fatalf("from %+v to byte %d: %d bytes of output, want the %d up to %d", brief(cp), s.in, len(got), want, s.out)
					}
				}
			}
		})
	}
}

// TestCheckpointBefore takes kept boundaries after the decoder has passed
// them, as an indexer that learns late where it wants one does: each is
// a checkpoint at or before the place asked for, after the one asked
// for before, and resuming from it gives the rest of the output.
func TestCheckpointBefore(t *testing.T) {
	text := textBytes(3<<20, 5)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"text", gzipLevel(t, text, gzip.DefaultCompression)},
		{"best speed", gzipLevel(t, text, gzip.BestSpeed)},
		{"stored", gzipLevel(t, text, gzip.NoCompression)},
		{"members", gzipMembers(t, text[:1<<20+5], text[1<<20+5:2<<20], text[2<<20:])},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Boundaries somewhere in the last 50 KB read.
			out, taken := decodeKeeping(t, tc.data, 256<<10, 50_000, 30_000, 1<<20)
			if !bytes.Equal(out, text) {
				t.Fatal("output differs from the input")
			}
			if len(taken) < 20 {
				t.Fatalf("only %d boundaries taken", len(taken))
			}
			checkResume(t, tc.data, out, taken)
		})
	}
}
